//! [`NodeId`]: how a node is named, by clients, by its peers and in every stored or sent
//! form: an IP socket address (`10.10.0.2:8085`, as the course's Docker network gives), or
//! a DNS name with a port (`kvs-0.kvs.default.svc.cluster.local:8080`, as a Kubernetes
//! StatefulSet gives).
//!
//! A name is the identity: a pod that restarts keeps its name and gets a new IP, so a name
//! is resolved when a connection is opened, and again for every new connection, never
//! once for good. Names are interned (each distinct one is kept once for the process's
//! life, [`MAX_NAMES`] at most), so a `NodeId` stays `Copy` and compares without a lock,
//! which the vector clocks keyed by it do on every write.
//!
//! Since an interned name is never freed, who may intern one is limited by where the
//! name comes from ([`Source`]): the configuration, shard maps and the data directory may
//! (up to [`MAX_NAMES`]); gossip and view changes may hold at most
//! [`MAX_UNVOUCHED_NAMES`] names that none of those has named yet (a name is vouched for,
//! and frees its place, once a map or the configuration names it); a causal-metadata token
//! may name only names already known. So no client or peer can fill the table with names
//! and have every new node's name refused: at worst they use up the unvouched places, and
//! then only gossip and view changes naming new names are refused until a map vouches.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{LazyLock, Mutex};

use serde::Deserialize;

/// A node's identity: an address or a name, with a port. Addresses order as socket
/// addresses (numerically, as the course's views list them), before every name; names
/// order by their text, so that every node derives the same shard map from one `VIEW`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeId {
    Addr(SocketAddr),
    Name(&'static str, u16),
}

/// The most distinct names one process interns: every name comes from configuration,
/// gossip or a token, and a store has far fewer nodes; the bound keeps forged tokens from
/// growing memory.
pub const MAX_NAMES: usize = 4096;
/// The most names that only gossip or a view change has named at once (see the module's
/// documentation): far more than the nodes that join a store between two maps.
pub const MAX_UNVOUCHED_NAMES: usize = 256;
/// The longest DNS name (RFC 1035).
const MAX_NAME_BYTES: usize = 253;

static NAMES: LazyLock<Mutex<Names>> = LazyLock::new(Default::default);

#[derive(Default)]
struct Names {
    all: HashSet<&'static str>,
    /// Those of `all` that only gossip or a view change has named.
    unvouched: HashSet<&'static str>,
}

/// Where a name being parsed comes from, which says whether it may be interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The configuration, a shard map, the data directory: interned, and vouched for.
    Vouched,
    /// Gossip or a view change: interned while fewer than [`MAX_UNVOUCHED_NAMES`] names
    /// are unvouched.
    Unvouched,
    /// A causal-metadata token: only a name already interned.
    Known,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    #[error("'{0}' is not an ip:port socket address or a host:port name")]
    Malformed(String),
    #[error("too many distinct node names (at most {MAX_NAMES})")]
    TooManyNames,
    #[error("too many node names that no shard map names (at most {MAX_UNVOUCHED_NAMES})")]
    TooManyUnvouchedNames,
    #[error("'{0}' names no node known here")]
    Unknown(String),
}

impl NodeId {
    pub fn port(&self) -> u16 {
        match self {
            NodeId::Addr(a) => a.port(),
            NodeId::Name(_, port) => *port,
        }
    }

    /// The IP address, for an identity that is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            NodeId::Addr(a) => Some(a.ip()),
            NodeId::Name(..) => None,
        }
    }

    /// The same host at another port (a node's relay channel, say).
    pub fn with_port(&self, port: u16) -> NodeId {
        match self {
            NodeId::Addr(a) => NodeId::Addr(SocketAddr::new(a.ip(), port)),
            NodeId::Name(name, _) => NodeId::Name(name, port),
        }
    }

    /// The host part as text: an IP address or a name.
    pub fn host(&self) -> String {
        match self {
            NodeId::Addr(a) => a.ip().to_string(),
            NodeId::Name(name, _) => (*name).to_owned(),
        }
    }

    /// Resolves the identity to a socket address now (a name through DNS, every call),
    /// IPv4 first: gossip listens on one address family, and `localhost` resolves to
    /// both.
    pub async fn resolve(&self) -> std::io::Result<SocketAddr> {
        match self {
            NodeId::Addr(a) => Ok(*a),
            NodeId::Name(name, port) => {
                let found: Vec<SocketAddr> =
                    tokio::net::lookup_host((*name, *port)).await?.collect();
                found
                    .iter()
                    .find(|a| a.is_ipv4())
                    .or(found.first())
                    .copied()
                    .ok_or_else(|| std::io::Error::other(format!("{name} has no address")))
            }
        }
    }

    /// Opens a TCP connection, resolving a name first.
    pub async fn connect(&self) -> std::io::Result<tokio::net::TcpStream> {
        match self {
            NodeId::Addr(a) => tokio::net::TcpStream::connect(a).await,
            NodeId::Name(name, port) => tokio::net::TcpStream::connect((*name, *port)).await,
        }
    }

    /// [`NodeId::connect`] from `source` when it is a specific address of the peer's family
    /// (a node's own IP, so that the peer can tell nodes apart by their source address even
    /// when they share a host); from wherever the system picks otherwise.
    pub async fn connect_from(
        &self,
        source: Option<IpAddr>,
    ) -> std::io::Result<tokio::net::TcpStream> {
        let target = self.resolve().await?;
        let socket = match target {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        if let Some(source) =
            source.filter(|s| !s.is_unspecified() && s.is_ipv4() == target.is_ipv4())
        {
            socket.bind(SocketAddr::new(source, 0))?;
        }
        socket.connect(target).await
    }
}

impl From<SocketAddr> for NodeId {
    fn from(addr: SocketAddr) -> Self {
        NodeId::Addr(addr)
    }
}

impl From<std::net::SocketAddrV4> for NodeId {
    fn from(addr: std::net::SocketAddrV4) -> Self {
        NodeId::Addr(addr.into())
    }
}

/// Whether `host` is a DNS name: labels of letters, digits and hyphens, joined by dots.
fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= MAX_NAME_BYTES
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn intern(name: &str, source: Source) -> Result<&'static str, NodeIdError> {
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(&known) = names.all.get(name) {
        if source == Source::Vouched {
            names.unvouched.remove(known);
        }
        return Ok(known);
    }
    match source {
        Source::Known => return Err(NodeIdError::Unknown(name.to_owned())),
        Source::Unvouched if names.unvouched.len() >= MAX_UNVOUCHED_NAMES => {
            return Err(NodeIdError::TooManyUnvouchedNames)
        }
        _ if names.all.len() >= MAX_NAMES => return Err(NodeIdError::TooManyNames),
        _ => {}
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.all.insert(leaked);
    if source == Source::Unvouched {
        names.unvouched.insert(leaked);
    }
    debug_assert!(names.unvouched.len() <= MAX_UNVOUCHED_NAMES && names.all.len() <= MAX_NAMES);
    Ok(leaked)
}

impl FromStr for NodeId {
    type Err = NodeIdError;

    /// Parses a name from a vouched source ([`Source::Vouched`]); see [`NodeId::parse_from`].
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse_from(text, Source::Vouched)
    }
}

impl NodeId {
    /// Parses `text`, interning a name only as `source` may (see [`Source`]).
    pub fn parse_from(text: &str, source: Source) -> Result<Self, NodeIdError> {
        let text = text.trim();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(NodeId::Addr(addr));
        }
        let malformed = || NodeIdError::Malformed(text.to_owned());
        let (host, port) = text.rsplit_once(':').ok_or_else(malformed)?;
        let port: u16 = port.parse().map_err(|_| malformed())?;
        // "localhost", "kvs-0.kvs": a trailing dot names the same host.
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        // Something that looks like an address but does not parse as one is a typo, not
        // a name (all-numeric labels are not names a resolver would look up either).
        let numeric = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if numeric || !is_dns_name(&host) {
            return Err(malformed());
        }
        Ok(NodeId::Name(intern(&host, source)?, port))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeId::Addr(a) => a.fmt(f),
            NodeId::Name(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Deserializes a [`NodeId`] from an unvouched source (`#[serde(deserialize_with)]`).
pub fn unvouched<'de, D: serde::Deserializer<'de>>(d: D) -> Result<NodeId, D::Error> {
    let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
    NodeId::parse_from(&text, Source::Unvouched).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> NodeId {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_and_names_parse_and_print_as_configured() {
        assert_eq!(
            id("10.10.0.2:8085"),
            NodeId::Addr("10.10.0.2:8085".parse().unwrap())
        );
        assert_eq!(id("[::1]:80").to_string(), "[::1]:80");
        let name = id("kvs-0.kvs.default.svc.cluster.local:8080");
        assert_eq!(name.to_string(), "kvs-0.kvs.default.svc.cluster.local:8080");
        assert_eq!(name.port(), 8080);
        assert_eq!(name.ip(), None);
        assert_eq!(id("KVS-0.kvs.:8080"), id("kvs-0.kvs:8080"));
        assert_eq!(
            name.with_port(7000).to_string(),
            "kvs-0.kvs.default.svc.cluster.local:7000"
        );
    }

    #[test]
    fn typos_are_not_names() {
        for bad in [
            "10.0.0.300:80",
            "10.0.0.1",
            "kvs-0:",
            "kvs-0:99999",
            ":80",
            "a b:80",
            "-a:80",
            "a..b:80",
        ] {
            assert!(bad.parse::<NodeId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_sort_numerically_and_before_names_which_sort_by_text() {
        let mut ids = [
            id("kvs-1.kvs:8080"),
            id("10.0.0.10:1"),
            id("kvs-0.kvs:8080"),
            id("10.0.0.9:1"),
        ];
        ids.sort();
        let texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "10.0.0.9:1",
                "10.0.0.10:1",
                "kvs-0.kvs:8080",
                "kvs-1.kvs:8080"
            ]
        );
    }

    #[test]
    fn identities_travel_as_strings() {
        let name = id("kvs-2.kvs:8080");
        let json = serde_json::to_string(&vec![name, id("10.0.0.1:80")]).unwrap();
        assert_eq!(json, r#"["kvs-2.kvs:8080","10.0.0.1:80"]"#);
        let back: Vec<NodeId> = serde_json::from_str(&json).unwrap();
        assert_eq!(back[0], name);
    }

    /// Tokens intern nothing, and gossip and view changes at most [`MAX_UNVOUCHED_NAMES`]
    /// names: past that, names from maps and the configuration still parse.
    #[test]
    fn untrusted_sources_cannot_fill_the_name_table() {
        let unknown = "never-named.by-anyone:1";
        for _ in 0..2 {
            let looked_up = NodeId::parse_from(unknown, Source::Known);
            assert!(
                matches!(looked_up, Err(NodeIdError::Unknown(_))),
                "{looked_up:?}"
            );
        }
        let mut filled = Vec::new();
        loop {
            let name = format!("gossip-{}.filling:1", filled.len());
            match NodeId::parse_from(&name, Source::Unvouched) {
                Ok(_) => filled.push(name),
                Err(NodeIdError::TooManyUnvouchedNames) => break,
                Err(e) => panic!("{e}"),
            }
            assert!(filled.len() <= MAX_UNVOUCHED_NAMES);
        }
        let gossip = NodeId::parse_from("one-more.filling:1", Source::Unvouched);
        assert_eq!(gossip, Err(NodeIdError::TooManyUnvouchedNames));
        id("vouched-after-the-fill.kvs:1");
        assert_eq!(
            NodeId::parse_from(&filled[0], Source::Known),
            Ok(id(&filled[0])),
            "an unvouched name is known"
        );
        // Vouching frees the places (here all, for the other tests of this process).
        for name in &filled {
            id(name);
        }
        NodeId::parse_from("one-more.filling:1", Source::Unvouched).unwrap();
    }

    #[tokio::test]
    async fn a_name_resolves_when_asked() {
        let local = id("localhost:8080").resolve().await.unwrap();
        assert!(local.ip().is_loopback());
        assert_eq!(local.port(), 8080);
    }
}

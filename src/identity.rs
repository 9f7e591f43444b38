//! [`NodeId`]: how a node is named, by clients, by its peers and in every stored or sent
//! form: an IP socket address (`10.10.0.2:8085`, as the course's Docker network gives), or
//! a DNS name with a port (`kvs-0.kvs.default.svc.cluster.local:8080`, as a Kubernetes
//! StatefulSet gives).
//!
//! A name is the identity: a pod that restarts keeps its name and gets a new IP, so a name
//! is resolved when a connection is opened, and again for every new connection, never
//! once for good. Names are interned: each distinct name held anywhere in the process is
//! kept once, shared ([`Name`]), and freed with its last holder, so that comparing the
//! identities in the vector clocks, which every write does, is mostly a pointer compare.
//!
//! Who may intern a name is limited by where it comes from ([`Source`]): the configuration,
//! shard maps and the data directory may (up to [`MAX_NAMES`] held at once); gossip and view
//! changes may hold at most [`MAX_UNVOUCHED_NAMES`] names that none of those has named (a
//! name is vouched for once a map or the configuration names it); a causal-metadata token
//! may name only names held now. A name that nothing holds any more (a node gossip
//! mentioned and then forgot, one a view change added and a later one removed) ages out: it
//! is freed, and its place with it. So no client or peer can fill the table with names and
//! have every new node's name refused: at worst they hold the unvouched places for as long
//! as the view or gossip holds their names, and only names from gossip and view changes
//! are refused meanwhile.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use serde::Deserialize;

/// A node's identity: an address or a name, with a port. Addresses order as socket
/// addresses (numerically, as the course's views list them), before every name; names
/// order by their text, so that every node derives the same shard map from one `VIEW`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeId {
    Addr(SocketAddr),
    Name(Name, u16),
}

/// A node's DNS name, lower case, without a trailing dot; one shared copy per distinct name
/// (see the module's documentation). Compares, hashes and orders as its text.
#[derive(Clone)]
pub struct Name(Arc<str>);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        // One copy per name is held at a time, so equal names are mostly the same copy.
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for Name {}

impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// The most distinct names held at once: every name comes from configuration, gossip or a
/// view change, and a store has far fewer nodes; the bound keeps a faulty source from
/// growing memory.
pub const MAX_NAMES: usize = 4096;
/// The most names held at once that only gossip or a view change has named (see the
/// module's documentation): far more than the nodes that join a store between two maps.
pub const MAX_UNVOUCHED_NAMES: usize = 256;
/// The longest DNS name (RFC 1035).
const MAX_NAME_BYTES: usize = 253;

static NAMES: LazyLock<Mutex<Names>> = LazyLock::new(Default::default);

/// The names interned, by text: each entry's copy lives as long as someone holds it.
#[derive(Default)]
struct Names {
    all: HashMap<Box<str>, Interned>,
}

struct Interned {
    copy: Weak<str>,
    /// Whether a vouched source named it (see [`Source`]).
    vouched: bool,
}

impl Names {
    /// Forgets the names no one holds any more.
    fn age_out(&mut self) {
        self.all.retain(|_, entry| entry.copy.strong_count() > 0);
    }

    /// Names held now that no vouched source has named.
    fn unvouched(&self) -> usize {
        self.all
            .values()
            .filter(|e| !e.vouched && e.copy.strong_count() > 0)
            .count()
    }
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
    #[error("too many distinct node names held (at most {MAX_NAMES})")]
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
            NodeId::Name(name, _) => NodeId::Name(name.clone(), port),
        }
    }

    /// The host part as text: an IP address or a name.
    pub fn host(&self) -> String {
        match self {
            NodeId::Addr(a) => a.ip().to_string(),
            NodeId::Name(name, _) => name.as_str().to_owned(),
        }
    }

    /// Resolves the identity to a socket address now (a name through DNS, every call),
    /// IPv4 first: gossip listens on one address family, and `localhost` resolves to
    /// both.
    pub async fn resolve(&self) -> std::io::Result<SocketAddr> {
        match self {
            NodeId::Addr(a) => Ok(*a),
            NodeId::Name(name, port) => {
                let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), *port))
                    .await?
                    .collect();
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
            NodeId::Name(name, port) => {
                tokio::net::TcpStream::connect((name.as_str(), *port)).await
            }
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

fn intern(name: &str, source: Source) -> Result<Name, NodeIdError> {
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(entry) = names.all.get_mut(name) {
        if let Some(held) = entry.copy.upgrade() {
            entry.vouched |= source == Source::Vouched;
            return Ok(Name(held));
        }
    }
    match source {
        Source::Known => return Err(NodeIdError::Unknown(name.to_owned())),
        Source::Unvouched if names.unvouched() >= MAX_UNVOUCHED_NAMES => {
            return Err(NodeIdError::TooManyUnvouchedNames)
        }
        _ => {}
    }
    if names.all.len() >= MAX_NAMES {
        names.age_out();
        if names.all.len() >= MAX_NAMES {
            return Err(NodeIdError::TooManyNames);
        }
    }
    let copy: Arc<str> = Arc::from(name);
    let entry = Interned {
        copy: Arc::downgrade(&copy),
        vouched: source == Source::Vouched,
    };
    names.all.insert(name.into(), entry);
    debug_assert!(names.all.len() <= MAX_NAMES);
    Ok(Name(copy))
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
            NodeId::Name(name, port) => write!(f, "{}:{port}", name.as_str()),
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
        let json = serde_json::to_string(&vec![name.clone(), id("10.0.0.1:80")]).unwrap();
        assert_eq!(json, r#"["kvs-2.kvs:8080","10.0.0.1:80"]"#);
        let back: Vec<NodeId> = serde_json::from_str(&json).unwrap();
        assert_eq!(back[0], name);
    }

    /// Tokens intern nothing, and gossip and view changes hold at most
    /// [`MAX_UNVOUCHED_NAMES`] names: past that, names from maps and the configuration still
    /// parse.
    #[test]
    fn untrusted_sources_cannot_fill_the_name_table() {
        let _alone = TABLE_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        let unknown = "never-named.by-anyone:1";
        for _ in 0..2 {
            let looked_up = NodeId::parse_from(unknown, Source::Known);
            assert!(
                matches!(looked_up, Err(NodeIdError::Unknown(_))),
                "{looked_up:?}"
            );
        }
        let filled = fill_unvouched("filling");
        let gossip = NodeId::parse_from("one-more.filling:1", Source::Unvouched);
        assert_eq!(gossip, Err(NodeIdError::TooManyUnvouchedNames));
        let vouched = id("vouched-after-the-fill.kvs:1");
        assert_eq!(
            NodeId::parse_from(&filled[0].to_string(), Source::Known).as_ref(),
            Ok(&filled[0]),
            "an unvouched name held is known"
        );
        // Vouching frees a place.
        let now_vouched = id(&filled[0].to_string());
        NodeId::parse_from("one-more.filling:1", Source::Unvouched).unwrap();
        drop((filled, vouched, now_vouched));
    }

    /// The attack the bound alone did not stop: names that gossip or a view change named
    /// once, then forgot, held their places for the process's life.
    #[test]
    fn names_no_one_holds_age_out_and_free_their_places() {
        let _alone = TABLE_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        for round in 0..4 {
            let filled = fill_unvouched(&format!("round{round}"));
            assert_eq!(
                NodeId::parse_from(&format!("late.round{round}:1"), Source::Unvouched),
                Err(NodeIdError::TooManyUnvouchedNames)
            );
            let first = filled[0].to_string();
            drop(filled);
            assert_eq!(
                NodeId::parse_from(&first, Source::Known),
                Err(NodeIdError::Unknown(
                    first.trim_end_matches(":1").to_owned()
                )),
                "a name no one holds is forgotten"
            );
        }
        // A vouched name held forever is not dropped, and one dropped is forgotten too.
        let kept = id("kept.vouched:1");
        drop(id("dropped.vouched:1"));
        assert!(NodeId::parse_from("kept.vouched:7", Source::Known).is_ok());
        assert!(NodeId::parse_from("dropped.vouched:7", Source::Known).is_err());
        drop(kept);
    }

    /// The tests that fill the unvouched places run one at a time.
    static TABLE_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Interns unvouched names `gossip-<n>.<tag>:1` until refused; returns them, held.
    fn fill_unvouched(tag: &str) -> Vec<NodeId> {
        let mut filled = Vec::new();
        loop {
            let name = format!("gossip-{}.{tag}:1", filled.len());
            match NodeId::parse_from(&name, Source::Unvouched) {
                Ok(node) => filled.push(node),
                Err(NodeIdError::TooManyUnvouchedNames) => break,
                Err(e) => panic!("{e}"),
            }
            assert!(filled.len() <= MAX_UNVOUCHED_NAMES);
        }
        filled
    }

    #[tokio::test]
    async fn a_name_resolves_when_asked() {
        let local = id("localhost:8080").resolve().await.unwrap();
        assert!(local.ip().is_loopback());
        assert_eq!(local.port(), 8080);
    }
}

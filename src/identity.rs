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

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{LazyLock, Mutex};

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
/// The longest DNS name (RFC 1035).
const MAX_NAME_BYTES: usize = 253;

static NAMES: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(Default::default);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    #[error("'{0}' is not an ip:port socket address or a host:port name")]
    Malformed(String),
    #[error("too many distinct node names (at most {MAX_NAMES})")]
    TooManyNames,
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

fn intern(name: &str) -> Result<&'static str, NodeIdError> {
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = names.get(name) {
        return Ok(known);
    }
    if names.len() >= MAX_NAMES {
        return Err(NodeIdError::TooManyNames);
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    Ok(leaked)
}

impl FromStr for NodeId {
    type Err = NodeIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
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
        Ok(NodeId::Name(intern(&host)?, port))
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

    #[tokio::test]
    async fn a_name_resolves_when_asked() {
        let local = id("localhost:8080").resolve().await.unwrap();
        assert!(local.ip().is_loopback());
        assert_eq!(local.port(), 8080);
    }
}

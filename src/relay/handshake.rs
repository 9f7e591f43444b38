//! The first bytes of every relay connection: the protocol's version, and mutual proof that
//! both ends hold the cluster secret.
//!
//! ```text
//! client -> server   hello  = "KVSR" version:u8 nonce_c:[16]
//! server -> client   reply  = "KVSR" version:u8 nonce_s:[16] proof_s:[32]
//! client -> server   proof_c:[32]
//! proof_s = BLAKE3-keyed(key, "server" nonce_c nonce_s)
//! proof_c = BLAKE3-keyed(key, "client" nonce_c nonce_s)
//! ```
//!
//! A challenge-response rather than TLS: nodes share one secret, not certificates, and this
//! is what keeps an outsider from acting as a node (sending writes, map changes, reshard
//! phases, or reading a whole shard) without a certificate authority to run. Fresh nonces on
//! both sides make a recorded handshake worthless. What it does not give is secrecy or
//! integrity against someone on the path between two nodes (docs/security.md). Without a
//! secret the key is public, so the handshake checks only the version.
//!
//! The exchanges are plain functions over byte slices, so that tests drive them without
//! sockets; [`client`] and [`server`] run them over a stream, bounded in time.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::same_secret_bytes;

/// The relay protocol's version: a peer speaking another is refused.
pub const VERSION: u8 = 1;
const MAGIC: &[u8; 4] = b"KVSR";
const NONCE: usize = 16;
const PROOF: usize = 32;
const HELLO: usize = 4 + 1 + NONCE;
const REPLY: usize = 4 + 1 + NONCE + PROOF;
/// How long a server waits for a connection's handshake: a connection that never says
/// anything would otherwise hold a handshake place (see `admission`). The exchange is two
/// small messages each way and a hash: milliseconds even on a slow, busy machine.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// The key connections are authenticated with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RelayKey([u8; 32]);

impl RelayKey {
    /// The key of a store with this cluster secret; its own derivation context, so that it
    /// never equals the key of the metadata tokens.
    pub fn from_secret(secret: &[u8]) -> Self {
        Self(blake3::derive_key(
            "kvs 2026-12-01 relay channel authentication",
            secret,
        ))
    }

    /// The key of a store without a secret: public, so only the version is checked.
    pub fn open() -> Self {
        Self::from_secret(b"")
    }

    fn proof(&self, side: &[u8], nonce_c: &[u8], nonce_s: &[u8]) -> [u8; PROOF] {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(side).update(nonce_c).update(nonce_s);
        *hasher.finalize().as_bytes()
    }
}

impl std::fmt::Debug for RelayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayKey(<hidden>)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("not a kvs relay peer")]
    NotRelay,
    #[error("the peer speaks relay protocol version {0}, this node {VERSION}")]
    Version(u8),
    #[error("the peer does not hold this store's cluster secret")]
    WrongSecret,
    #[error("handshake failed: {0}")]
    Io(String),
    #[error("handshake timed out")]
    TimedOut,
}

fn check_head(bytes: &[u8]) -> Result<(), HandshakeError> {
    if &bytes[..4] != MAGIC {
        return Err(HandshakeError::NotRelay);
    }
    match bytes[4] {
        VERSION => Ok(()),
        other => Err(HandshakeError::Version(other)),
    }
}

/// The client's first message.
pub fn hello(nonce_c: [u8; NONCE]) -> [u8; HELLO] {
    let mut out = [0; HELLO];
    out[..4].copy_from_slice(MAGIC);
    out[4] = VERSION;
    out[5..].copy_from_slice(&nonce_c);
    out
}

/// The server's answer to `hello`, and the proof it expects back.
pub fn reply(
    key: &RelayKey,
    hello: &[u8; HELLO],
    nonce_s: [u8; NONCE],
) -> Result<([u8; REPLY], [u8; PROOF]), HandshakeError> {
    check_head(hello)?;
    let nonce_c = &hello[5..];
    let mut out = [0; REPLY];
    out[..4].copy_from_slice(MAGIC);
    out[4] = VERSION;
    out[5..5 + NONCE].copy_from_slice(&nonce_s);
    out[5 + NONCE..].copy_from_slice(&key.proof(b"server", nonce_c, &nonce_s));
    Ok((out, key.proof(b"client", nonce_c, &nonce_s)))
}

/// The client's check of the server's reply, and its own proof.
pub fn answer(
    key: &RelayKey,
    nonce_c: &[u8; NONCE],
    reply: &[u8; REPLY],
) -> Result<[u8; PROOF], HandshakeError> {
    check_head(reply)?;
    let nonce_s = &reply[5..5 + NONCE];
    if !same_secret_bytes(&reply[5 + NONCE..], &key.proof(b"server", nonce_c, nonce_s)) {
        return Err(HandshakeError::WrongSecret);
    }
    Ok(key.proof(b"client", nonce_c, nonce_s))
}

fn io(e: std::io::Error) -> HandshakeError {
    HandshakeError::Io(e.to_string())
}

/// Runs the client's side over `stream`.
pub async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &RelayKey,
) -> Result<(), HandshakeError> {
    let nonce_c: [u8; NONCE] = rand::random();
    stream.write_all(&hello(nonce_c)).await.map_err(io)?;
    let mut reply = [0; REPLY];
    stream.read_exact(&mut reply).await.map_err(io)?;
    let proof = answer(key, &nonce_c, &reply)?;
    stream.write_all(&proof).await.map_err(io)
}

/// Runs the server's side over `stream`, within [`HANDSHAKE_TIMEOUT`].
pub async fn server<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &RelayKey,
) -> Result<(), HandshakeError> {
    let exchange = async {
        let mut hello = [0; HELLO];
        stream.read_exact(&mut hello).await.map_err(io)?;
        let (out, expected) = reply(key, &hello, rand::random())?;
        stream.write_all(&out).await.map_err(io)?;
        let mut proof = [0; PROOF];
        stream.read_exact(&mut proof).await.map_err(io)?;
        if same_secret_bytes(&proof, &expected) {
            Ok(())
        } else {
            Err(HandshakeError::WrongSecret)
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| HandshakeError::TimedOut)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(client_key: RelayKey, server_key: RelayKey) -> Result<(), HandshakeError> {
        let nonce_c = [1; NONCE];
        let (out, expected) = reply(&server_key, &hello(nonce_c), [2; NONCE])?;
        let proof = answer(&client_key, &nonce_c, &out)?;
        if same_secret_bytes(&proof, &expected) {
            Ok(())
        } else {
            Err(HandshakeError::WrongSecret)
        }
    }

    #[test]
    fn only_the_same_secret_completes_the_handshake() {
        let one = RelayKey::from_secret(b"a secret of this store");
        let other = RelayKey::from_secret(b"a secret of another one");
        assert_eq!(exchange(one, one), Ok(()));
        assert_eq!(exchange(RelayKey::open(), RelayKey::open()), Ok(()));
        // The client refuses a server without the secret, and vice versa.
        assert_eq!(exchange(one, other), Err(HandshakeError::WrongSecret));
        assert_eq!(
            exchange(RelayKey::open(), one),
            Err(HandshakeError::WrongSecret)
        );
    }

    #[test]
    fn a_proof_is_bound_to_both_nonces() {
        let key = RelayKey::from_secret(b"a secret of this store");
        let (out, expected) = reply(&key, &hello([1; NONCE]), [2; NONCE]).unwrap();
        // The same server reply replayed to a client with another nonce is refused.
        assert_eq!(
            answer(&key, &[3; NONCE], &out),
            Err(HandshakeError::WrongSecret)
        );
        let (_, other) = reply(&key, &hello([1; NONCE]), [4; NONCE]).unwrap();
        assert_ne!(expected, other);
    }

    #[test]
    fn another_protocol_or_version_is_refused() {
        let key = RelayKey::open();
        let mut wrong = hello([1; NONCE]);
        wrong[4] = VERSION + 1;
        assert_eq!(
            reply(&key, &wrong, [2; NONCE]).err(),
            Some(HandshakeError::Version(VERSION + 1))
        );
        let mut http = [0; HELLO];
        http.copy_from_slice(&b"GET / HTTP/1.1\r\nHost: x"[..HELLO]);
        assert_eq!(
            reply(&key, &http, [2; NONCE]).err(),
            Some(HandshakeError::NotRelay)
        );
    }

    #[tokio::test]
    async fn both_sides_run_over_a_stream() {
        let key = RelayKey::from_secret(b"a secret of this store");
        let (mut a, mut b) = tokio::io::duplex(256);
        let (c, s) = tokio::join!(client(&mut a, &key), server(&mut b, &key));
        assert_eq!((c, s), (Ok(()), Ok(())));
        let other = RelayKey::from_secret(b"another");
        let (mut a, mut b) = tokio::io::duplex(256);
        // The client closes its end when it gives up, as a dropped connection does.
        let refused = tokio::spawn(async move { client(&mut a, &other).await });
        let s = server(&mut b, &key).await;
        assert_eq!(refused.await.unwrap(), Err(HandshakeError::WrongSecret));
        assert!(matches!(s, Err(HandshakeError::Io(_))), "{s:?}");
    }
}

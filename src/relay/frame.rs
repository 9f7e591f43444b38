//! The relay channel's wire format: length-prefixed binary frames, decoded from a byte buffer
//! as plain functions so that tests drive them without sockets.
//!
//! ```text
//! frame  = len:u32 payload            (len counts the payload only, big-endian)
//! call   = id:u64 origin:u64 attempt:u8 op:u8 hops:u8 epoch:u64 budget_ms:u32
//!          path_len:u16 path body
//! ping   = a call of op 255, every other field zero
//! answer = id:u64 status:u16 body      (status PONG answers a ping)
//! ```
//!
//! `op` is a client operation (0 GET, 1 PUT, 2 DELETE), whose path is the client's, or 3
//! for a call between nodes ([`crate::internal`]), whose path names the message and whose
//! body is its JSON. Frames follow the connection's handshake ([`super::handshake`]), which
//! carries the protocol's version.
//!
//! `origin` names the forwarding process and `id` the request within it, the same on every
//! attempt: an owner that is sent a write again (the first connection died before its
//! answer came) answers it from what it remembers instead of applying it twice.
//!
//! The path is the client's raw path and query, still percent-encoded, and the body the
//! client's body, unchanged: the receiving node validates the request exactly as it would
//! validate one that reached it over HTTP.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::Op;

/// The largest payload accepted: a page of a full copy, or a whole shard from a node
/// that keeps it in memory (about 250 MB per million keys), as the internal HTTP endpoints
/// accepted before. Client bodies are limited to 1 MiB before they are framed.
pub const MAX_FRAME: usize = 256 << 20;

/// What a call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A client's request, forwarded.
    Kv(Op),
    /// A message between nodes, named by the call's path.
    Internal,
}

/// A forwarded client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The request's id within its origin, unique per forwarding process.
    pub id: u64,
    /// The forwarding process: a random number drawn at its start.
    pub origin: u64,
    /// 0 for the first attempt; a later attempt may have been applied already.
    pub attempt: u8,
    pub op: Kind,
    /// Hops including this one.
    pub hops: u32,
    /// The forwarding node's map epoch.
    pub epoch: u64,
    /// How long the forwarder waits for the answer; the owner answers before that.
    pub budget_ms: u32,
    pub path: String,
    pub body: Bytes,
}

/// What arrives at the owner's side of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Call(Call),
    /// A heartbeat: answered at once with [`PONG`], whatever the calls in flight wait for.
    Ping,
}

/// The status of a heartbeat's answer.
pub const PONG: u16 = 0;
/// The status of an answer to a repeated call the owner no longer remembers: it may have
/// been applied. HTTP statuses start at 100, so neither is ever a client's answer.
pub const FORGOTTEN: u16 = 1;

/// The owner's answer to a [`Call`], relayed to the client unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub id: u64,
    pub status: u16,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

const CALL_HEAD: usize = 8 + 8 + 1 + 1 + 1 + 8 + 4 + 2;
const PING_CODE: u8 = 255;
const ANSWER_HEAD: usize = 8 + 2;

const INTERNAL_CODE: u8 = 3;

fn op_code(op: Kind) -> u8 {
    match op {
        Kind::Kv(Op::Get) => 0,
        Kind::Kv(Op::Put) => 1,
        Kind::Kv(Op::Delete) => 2,
        Kind::Internal => INTERNAL_CODE,
    }
}

fn op_from_code(code: u8) -> Result<Kind, FrameError> {
    match code {
        0 => Ok(Kind::Kv(Op::Get)),
        1 => Ok(Kind::Kv(Op::Put)),
        2 => Ok(Kind::Kv(Op::Delete)),
        INTERNAL_CODE => Ok(Kind::Internal),
        _ => Err(FrameError::Malformed("unknown operation")),
    }
}

/// Appends `call` as one frame.
pub fn encode_call(call: &Call, out: &mut BytesMut) -> Result<(), FrameError> {
    let path_len =
        u16::try_from(call.path.len()).map_err(|_| FrameError::TooLarge(call.path.len()))?;
    let len = CALL_HEAD + call.path.len() + call.body.len();
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    out.reserve(4 + len);
    out.put_u32(len as u32);
    out.put_u64(call.id);
    out.put_u64(call.origin);
    out.put_u8(call.attempt);
    out.put_u8(op_code(call.op));
    out.put_u8(call.hops.min(u8::MAX as u32) as u8);
    out.put_u64(call.epoch);
    out.put_u32(call.budget_ms);
    out.put_u16(path_len);
    out.put_slice(call.path.as_bytes());
    out.put_slice(&call.body);
    Ok(())
}

/// Appends a heartbeat.
pub fn encode_ping(out: &mut BytesMut) {
    out.put_u32(CALL_HEAD as u32);
    out.put_bytes(0, 8 + 8 + 1);
    out.put_u8(PING_CODE);
    out.put_bytes(0, CALL_HEAD - (8 + 8 + 1 + 1));
}

/// Appends `answer` as one frame.
pub fn encode_answer(answer: &Answer, out: &mut BytesMut) -> Result<(), FrameError> {
    let len = ANSWER_HEAD + answer.body.len();
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    out.reserve(4 + len);
    out.put_u32(len as u32);
    out.put_u64(answer.id);
    out.put_u16(answer.status);
    out.put_slice(&answer.body);
    Ok(())
}

/// Takes the payload of one complete frame off the front of `buf`, if it holds one.
fn take_payload(buf: &mut BytesMut, min: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    if len < min {
        return Err(FrameError::Malformed("frame shorter than its header"));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Decodes the first call or ping in `buf`, leaving any bytes after it; `None` until it is
/// complete.
pub fn decode_call(buf: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
    let Some(mut payload) = take_payload(buf, CALL_HEAD)? else {
        return Ok(None);
    };
    let id = payload.get_u64();
    let origin = payload.get_u64();
    let attempt = payload.get_u8();
    let code = payload.get_u8();
    if code == PING_CODE {
        return Ok(Some(Incoming::Ping));
    }
    let op = op_from_code(code)?;
    let hops = payload.get_u8() as u32;
    let epoch = payload.get_u64();
    let budget_ms = payload.get_u32();
    let path_len = payload.get_u16() as usize;
    if payload.len() < path_len {
        return Err(FrameError::Malformed("path longer than the frame"));
    }
    let path = String::from_utf8(payload.split_to(path_len).to_vec())
        .map_err(|_| FrameError::Malformed("path is not UTF-8"))?;
    Ok(Some(Incoming::Call(Call {
        id,
        origin,
        attempt,
        op,
        hops,
        epoch,
        budget_ms,
        path,
        body: payload,
    })))
}

/// Decodes the first answer in `buf`, leaving any bytes after it; `None` until it is complete.
pub fn decode_answer(buf: &mut BytesMut) -> Result<Option<Answer>, FrameError> {
    let Some(mut payload) = take_payload(buf, ANSWER_HEAD)? else {
        return Ok(None);
    };
    let id = payload.get_u64();
    let status = payload.get_u16();
    Ok(Some(Answer {
        id,
        status,
        body: payload,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(id: u64, body: &str) -> Option<Incoming> {
        Some(Incoming::Call(call(id, body)))
    }

    fn call(id: u64, body: &str) -> Call {
        Call {
            id,
            origin: 0x0123_4567_89ab_cdef,
            attempt: 1,
            op: Kind::Kv(Op::Put),
            hops: 2,
            epoch: 7,
            budget_ms: 18_500,
            path: "/key-value-store/a%2Fb?x=1".into(),
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn calls_and_answers_round_trip() {
        let mut buf = BytesMut::new();
        encode_call(&call(1, r#"{"value":"v"}"#), &mut buf).unwrap();
        encode_call(&call(2, ""), &mut buf).unwrap();
        encode_ping(&mut buf);
        assert_eq!(
            decode_call(&mut buf).unwrap(),
            incoming(1, r#"{"value":"v"}"#)
        );
        assert_eq!(decode_call(&mut buf).unwrap(), incoming(2, ""));
        assert_eq!(decode_call(&mut buf).unwrap(), Some(Incoming::Ping));
        assert_eq!(decode_call(&mut buf).unwrap(), None);

        let answer = Answer {
            id: u64::MAX,
            status: 503,
            body: Bytes::from_static(b"{}"),
        };
        encode_answer(&answer, &mut buf).unwrap();
        assert_eq!(decode_answer(&mut buf).unwrap(), Some(answer));
        assert!(buf.is_empty());
    }

    #[test]
    fn a_frame_arriving_in_pieces_decodes_once_complete() {
        let mut whole = BytesMut::new();
        encode_call(&call(9, "body"), &mut whole).unwrap();
        let mut buf = BytesMut::new();
        for byte in &whole[..whole.len() - 1] {
            buf.put_u8(*byte);
            assert_eq!(decode_call(&mut buf).unwrap(), None);
        }
        buf.put_u8(whole[whole.len() - 1]);
        assert_eq!(decode_call(&mut buf).unwrap(), incoming(9, "body"));
    }

    #[test]
    fn oversized_and_malformed_frames_are_refused() {
        let mut buf = BytesMut::new();
        buf.put_u32((MAX_FRAME + 1) as u32);
        assert_eq!(
            decode_call(&mut buf),
            Err(FrameError::TooLarge(MAX_FRAME + 1))
        );

        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_slice(b"abc");
        assert!(matches!(
            decode_answer(&mut buf),
            Err(FrameError::Malformed(_))
        ));

        let mut buf = BytesMut::new();
        encode_call(&call(1, ""), &mut buf).unwrap();
        buf[4 + 8 + 8 + 1] = 9; // the operation code
        assert_eq!(
            decode_call(&mut buf),
            Err(FrameError::Malformed("unknown operation"))
        );

        // A path longer than its length field can say.
        let long = Call {
            path: "x".repeat(usize::from(u16::MAX) + 1),
            ..call(1, "")
        };
        assert!(matches!(
            encode_call(&long, &mut BytesMut::new()),
            Err(FrameError::TooLarge(_))
        ));
    }
}

//! A lean HTTP/1.1 client for the load generator: one keep-alive connection per session and
//! target, each request written with one call from a buffer the session reuses, each answer
//! parsed in place (`httparse`, the parser under hyper) and its body handed back as a slice.
//!
//! Why not reqwest: the generator must be faster than what it measures. With reqwest (a
//! pool per session, a request builder, headers maps and a body future per request) one
//! thread of `kvs-bench load` made 18,536 GET/s against `kvs-bench serve-fixed`, where `wrk`
//! with one thread and the same 32 connections made 54,884/s: every "x trivial server"
//! figure was the generator's ceiling (issue 24). There is no pipelining: a session waits
//! for each answer, as a client that carries causal metadata must.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Headers an answer may carry at most (actix sends four or five).
const MAX_HEADERS: usize = 32;
/// The largest answer head taken (a server's head is a few hundred bytes).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Bytes read at a time.
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Io(std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
}

impl H1Error {
    /// The kind of transport failure, as the generator's error table names it.
    pub fn kind(&self) -> &'static str {
        match self {
            H1Error::Connect(_) => "transport: connect",
            H1Error::Timeout => "transport: timeout",
            H1Error::Io(_) => "transport: other",
            H1Error::Malformed(_) => "transport: body",
        }
    }
}

/// How a request's body is labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    None,
    Json(&'a [u8]),
}

/// One keep-alive connection to one server, opened on first use and again after a failure.
pub struct Conn {
    addr: SocketAddr,
    /// The `Host` header's value.
    host: String,
    timeout: Duration,
    stream: Option<TcpStream>,
    out: Vec<u8>,
    input: Vec<u8>,
    /// Bytes of `input` the last answer took (dropped before the next request).
    consumed: usize,
    /// The last answer's body, when it came in chunks.
    dechunked: Vec<u8>,
}

/// Where the last answer's body is.
enum BodyAt {
    Input(usize, usize),
    Dechunked,
}

impl Conn {
    pub fn new(addr: SocketAddr, host: String, timeout: Duration) -> Self {
        Self {
            addr,
            host,
            timeout,
            stream: None,
            out: Vec::with_capacity(1024),
            input: Vec::with_capacity(READ_CHUNK),
            consumed: 0,
            dechunked: Vec::new(),
        }
    }

    /// Sends one request and reads its answer: the status and the body. A connection the
    /// server closed while idle is opened again and the request sent once more.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Body<'_>,
    ) -> Result<(u16, &[u8]), H1Error> {
        self.write_request(method, path, body);
        let timeout = self.timeout;
        let answered = tokio::time::timeout(timeout, self.exchange()).await;
        let at = match answered {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                self.stream = None;
                return Err(e);
            }
            Err(_) => {
                self.stream = None;
                return Err(H1Error::Timeout);
            }
        };
        let (status, at) = at;
        let body = match at {
            BodyAt::Input(from, to) => &self.input[from..to],
            BodyAt::Dechunked => &self.dechunked[..],
        };
        Ok((status, body))
    }

    fn write_request(&mut self, method: &str, path: &str, body: Body<'_>) {
        use std::io::Write;
        self.out.clear();
        let _ = write!(
            self.out,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n",
            self.host
        );
        if let Body::Json(bytes) = body {
            let _ = write!(
                self.out,
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                bytes.len()
            );
            self.out.extend_from_slice(bytes);
        } else {
            self.out.extend_from_slice(b"\r\n");
        }
    }

    async fn exchange(&mut self) -> Result<(u16, BodyAt), H1Error> {
        self.input.drain(..self.consumed);
        self.consumed = 0;
        let reused = self.stream.is_some();
        match self.send_and_read().await {
            // A kept connection the server closed meanwhile: once more on a new one.
            Err(H1Error::Io(e)) if reused && is_closed(&e) => {
                self.stream = None;
                self.input.clear();
                self.send_and_read().await
            }
            other => other,
        }
    }

    async fn send_and_read(&mut self) -> Result<(u16, BodyAt), H1Error> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr)
                .await
                .map_err(H1Error::Connect)?;
            stream.set_nodelay(true).map_err(H1Error::Connect)?;
            self.stream = Some(stream);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(H1Error::Malformed("no connection"));
        };
        stream.write_all(&self.out).await.map_err(H1Error::Io)?;
        let (status, head_len, framing, close) = loop {
            if let Some(head) = parse_head(&self.input)? {
                break head;
            }
            if self.input.len() > MAX_HEAD_BYTES {
                return Err(H1Error::Malformed("head too large"));
            }
            read_more(stream, &mut self.input).await?;
        };
        let at = match framing {
            Framing::Length(len) => {
                while self.input.len() < head_len + len {
                    read_more(stream, &mut self.input).await?;
                }
                self.consumed = head_len + len;
                BodyAt::Input(head_len, head_len + len)
            }
            Framing::Chunked => {
                self.dechunked.clear();
                let mut at = head_len;
                loop {
                    match dechunk(&self.input[at..], &mut self.dechunked)? {
                        Some(used) => {
                            at += used;
                            break;
                        }
                        None => read_more(stream, &mut self.input).await?,
                    }
                }
                self.consumed = at;
                BodyAt::Dechunked
            }
        };
        if close {
            self.stream = None;
        }
        Ok((status, at))
    }
}

fn is_closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | BrokenPipe | ConnectionAborted
    )
}

async fn read_more(stream: &mut TcpStream, input: &mut Vec<u8>) -> Result<(), H1Error> {
    input.reserve(READ_CHUNK);
    let n = stream.read_buf(input).await.map_err(H1Error::Io)?;
    if n == 0 {
        return Err(H1Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(())
}

enum Framing {
    Length(usize),
    Chunked,
}

/// The answer's status, head length, body framing and whether the server closes after it;
/// `None` until the head is whole.
fn parse_head(input: &[u8]) -> Result<Option<(u16, usize, Framing, bool)>, H1Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut answer = httparse::Response::new(&mut headers);
    let head_len = match answer.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(H1Error::Malformed("not an HTTP/1.1 answer")),
    };
    let status = answer.code.unwrap_or(0);
    let mut framing = Framing::Length(0);
    let mut close = answer.version == Some(0);
    for h in answer.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(H1Error::Malformed("bad content-length"))?;
            framing = Framing::Length(len);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            && h.value.eq_ignore_ascii_case(b"chunked")
        {
            framing = Framing::Chunked;
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    Ok(Some((status, head_len, framing, close)))
}

/// Appends a chunked body's data from `input` to `out`; how many bytes of `input` the whole
/// body took, or `None` until it is whole (`out` is then rebuilt on the next call).
fn dechunk(input: &[u8], out: &mut Vec<u8>) -> Result<Option<usize>, H1Error> {
    out.clear();
    let mut at = 0;
    loop {
        let Some(line_end) = find_crlf(&input[at..]) else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&input[at..at + line_end])
            .map_err(|_| H1Error::Malformed("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| H1Error::Malformed("bad chunk size"))?;
        let data = at + line_end + 2;
        if size == 0 {
            // The last chunk, then (no trailers) an empty line.
            return Ok((input.len() >= data + 2).then_some(data + 2));
        }
        if input.len() < data + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&input[data..data + size]);
        at = data + size + 2;
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_gives_its_status_and_framing() {
        let answer = b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\ncontent-type: application/json\r\n\r\nhello";
        let (status, head_len, framing, close) = parse_head(answer).unwrap().unwrap();
        assert_eq!((status, close), (201, false));
        assert!(matches!(framing, Framing::Length(5)));
        assert_eq!(&answer[head_len..], b"hello");
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le")
            .unwrap()
            .is_none());
        assert!(parse_head(b"junk\r\n\r\n").is_err());
    }

    #[test]
    fn chunks_are_joined_once_whole() {
        let body = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\nNEXT";
        let mut out = Vec::new();
        for cut in 0..body.len() - 4 {
            assert_eq!(dechunk(&body[..cut], &mut out).unwrap(), None, "{cut}");
        }
        assert_eq!(dechunk(body, &mut out).unwrap(), Some(body.len() - 4));
        assert_eq!(out, b"hello world");
    }

    /// Against a server that answers once per connection and closes: the generator's
    /// session opens a new connection for the next request.
    #[tokio::test]
    async fn a_closed_connection_is_opened_again() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
        });
        let mut conn = Conn::new(addr, addr.to_string(), Duration::from_secs(5));
        for _ in 0..3 {
            let (status, body) = conn.request("GET", "/x", Body::None).await.unwrap();
            assert_eq!((status, body), (200, &b"ok"[..]));
        }
    }
}

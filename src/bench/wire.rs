//! The load generator's HTTP/1.1 connection: one keep-alive TCP stream that the worker task
//! writes each request to and reads each answer from itself.
//!
//! `hookbridge send` uses hyper's client (`crate::client`), which runs each connection in a task
//! of its own and hands requests and answers to it through channels: two task wake-ups per
//! request. In the benchmark that cost is taken from the two cores the bridge and the broker
//! share with the generator, so the generator does the little HTTP/1.1 it needs here instead: the
//! request head and body leave in one `writev`, the answer is read into a reused buffer, parsed
//! with `httparse`, and its body (sized by `Content-Length`, or chunked) is read and dropped.

use std::io::{self, IoSlice, Write as _};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::Target;

/// The most header lines an answer may have.
const MAX_HEADERS: usize = 32;
/// The longest answer head read before giving up on the connection.
const MAX_HEAD: usize = 64 * 1024;

/// One keep-alive connection of the load generator.
pub struct WireConnection {
    stream: TcpStream,
    /// The request head up to (not including) the signature; the same for every request.
    prefix: Vec<u8>,
    /// The head being sent, rebuilt per request.
    head: Vec<u8>,
    /// Bytes read from the server and not yet consumed.
    buf: Vec<u8>,
    /// False once the server said `Connection: close` or the stream failed.
    open: bool,
}

/// How the body of an answer is delimited.
enum Framing {
    Length(usize),
    Chunked,
    /// Until the server closes the connection (no length, no chunking).
    Close,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl WireConnection {
    pub async fn open(target: &Target) -> io::Result<WireConnection> {
        let stream = TcpStream::connect(&target.authority).await?;
        stream.set_nodelay(true)?;
        let prefix = format!(
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json; charset=utf-8\r\n\
             user-agent: hookbridge/{}\r\nstripe-signature: ",
            target.path(),
            target.host(),
            env!("CARGO_PKG_VERSION")
        )
        .into_bytes();
        Ok(WireConnection {
            stream,
            head: Vec::with_capacity(prefix.len() + 256),
            prefix,
            buf: Vec::with_capacity(4096),
            open: true,
        })
    }

    /// Whether the connection can take another request.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// POSTs `body` with `Stripe-Signature: signature`; returns the answer's status once its
    /// whole body was read.
    pub async fn post_signed(&mut self, signature: &str, body: &[u8]) -> io::Result<u16> {
        let result = self.exchange(signature, body).await;
        if result.is_err() {
            self.open = false;
        }
        result
    }

    async fn exchange(&mut self, signature: &str, body: &[u8]) -> io::Result<u16> {
        self.head.clear();
        self.head.extend_from_slice(&self.prefix);
        self.head.extend_from_slice(signature.as_bytes());
        self.head.extend_from_slice(b"\r\ncontent-length: ");
        write!(self.head, "{}\r\n\r\n", body.len())?;
        self.write_all(body).await?;
        let (status, framing) = loop {
            let (status, framing, head_len) = self.read_head().await?;
            self.buf.drain(..head_len);
            // An interim answer (100 Continue, 103 Early Hints) is followed by the final one.
            if !(100..200).contains(&status) || status == 101 {
                break (status, framing);
            }
        };
        match framing {
            Framing::Length(n) => self.skip(n).await?,
            Framing::Chunked => self.skip_chunked().await?,
            Framing::Close => {
                self.open = false;
                while self.fill().await? > 0 {
                    self.buf.clear();
                }
            }
        }
        Ok(status)
    }

    /// Writes the head and `body` in as few `writev` calls as the socket takes.
    async fn write_all(&mut self, body: &[u8]) -> io::Result<()> {
        let total = self.head.len() + body.len();
        let mut sent = 0;
        while sent < total {
            let n = if sent < self.head.len() {
                let slices = [IoSlice::new(&self.head[sent..]), IoSlice::new(body)];
                self.stream.write_vectored(&slices).await?
            } else {
                self.stream.write(&body[sent - self.head.len()..]).await?
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            sent += n;
        }
        Ok(())
    }

    /// Reads more bytes into `buf` (its spare capacity, not zeroed first); 0 at the end of the
    /// stream.
    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(4096);
        self.stream.read_buf(&mut self.buf).await
    }

    /// Reads and parses the answer's head: status, body framing, and the head's length in `buf`.
    async fn read_head(&mut self) -> io::Result<(u16, Framing, usize)> {
        loop {
            if !self.buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut response = httparse::Response::new(&mut headers);
                match response.parse(&self.buf) {
                    Ok(httparse::Status::Complete(head_len)) => {
                        let status = response.code.ok_or_else(|| invalid("no status code"))?;
                        // 1xx, 204 and 304 answers have no body, whatever their headers say.
                        let bodiless = status < 200 || status == 204 || status == 304;
                        let mut framing = Framing::Close;
                        for h in response.headers.iter() {
                            if h.name.eq_ignore_ascii_case("content-length") {
                                let n = std::str::from_utf8(h.value)
                                    .ok()
                                    .and_then(|v| v.trim().parse().ok())
                                    .ok_or_else(|| invalid("bad content-length"))?;
                                framing = Framing::Length(n);
                            } else if h.name.eq_ignore_ascii_case("transfer-encoding")
                                && h.value.eq_ignore_ascii_case(b"chunked")
                            {
                                framing = Framing::Chunked;
                            } else if h.name.eq_ignore_ascii_case("connection")
                                && h.value.eq_ignore_ascii_case(b"close")
                            {
                                self.open = false;
                            }
                        }
                        if bodiless {
                            framing = Framing::Length(0);
                        }
                        return Ok((status, framing, head_len));
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Err(invalid("malformed answer head")),
                }
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("answer head too long"));
            }
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Consumes `n` body bytes.
    async fn skip(&mut self, mut n: usize) -> io::Result<()> {
        loop {
            let take = n.min(self.buf.len());
            self.buf.drain(..take);
            n -= take;
            if n == 0 {
                return Ok(());
            }
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Consumes a chunked body, its last chunk and its (ignored) trailers.
    async fn skip_chunked(&mut self) -> io::Result<()> {
        loop {
            let line = self.line().await?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.line().await?.is_empty() {}
                return Ok(());
            }
            self.skip(size).await?;
            if !self.line().await?.is_empty() {
                return Err(invalid("chunk not followed by CRLF"));
            }
        }
    }

    /// Reads one CRLF-terminated line and consumes it (CRLF included).
    async fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("line too long"));
            }
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that reads one request head and body (by its content-length) and then writes
    /// each of `answers`, one per request, in order; returns the requests it read.
    async fn serve(answers: Vec<&'static [u8]>) -> (Target, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let target = Target::parse(&format!("http://{addr}/webhooks/stripe")).unwrap_or_else(|e| panic!("{e}"));
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
            let mut requests = Vec::new();
            let mut buf = Vec::new();
            for answer in answers {
                let request = loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break buf.drain(..end + 4 + len).collect::<Vec<u8>>();
                        }
                    }
                    let mut chunk = [0u8; 8192];
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    assert!(n > 0, "the client closed before sending a whole request");
                    buf.extend_from_slice(&chunk[..n]);
                };
                requests.push(request);
                s.write_all(answer).await.unwrap_or_else(|e| panic!("{e}"));
            }
            requests
        });
        (target, task)
    }

    #[tokio::test]
    async fn answers_by_length_and_chunked_share_one_connection() {
        let (target, server) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n{\"received\":true}",
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nTrailer: z\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        ])
        .await;
        let mut conn = WireConnection::open(&target).await.unwrap_or_else(|e| panic!("{e}"));
        let body = vec![b'x'; 100_000];
        assert_eq!(conn.post_signed("t=1,v1=ab", &body).await.ok(), Some(200));
        assert_eq!(conn.post_signed("t=2,v1=cd", b"{}").await.ok(), Some(503));
        assert_eq!(conn.post_signed("t=3,v1=ef", b"{}").await.ok(), Some(400));
        // No length and no body: not read to the end of the stream.
        assert_eq!(conn.post_signed("t=4,v1=ab", b"{}").await.ok(), Some(204));
        // An interim answer is skipped: the status is the final one's.
        assert_eq!(conn.post_signed("t=5,v1=ab", b"{}").await.ok(), Some(201));
        assert!(conn.is_open());
        let requests = server.await.unwrap_or_default();
        assert_eq!(requests.len(), 5);
        let first = String::from_utf8_lossy(&requests[0]);
        assert!(first.starts_with("POST /webhooks/stripe HTTP/1.1\r\n"), "{first}");
        assert!(first.contains("\r\nstripe-signature: t=1,v1=ab\r\n"), "{first}");
        assert!(first.contains("\r\ncontent-length: 100000\r\n\r\n"), "{first}");
        assert!(requests[0].ends_with(&body), "the body arrives whole, after the head");
        assert!(String::from_utf8_lossy(&requests[1]).ends_with("\r\n\r\n{}"));
    }

    #[tokio::test]
    async fn connection_close_and_a_cut_answer_mark_the_connection_closed() {
        let (target, server) = serve(vec![
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        ])
        .await;
        let mut conn = WireConnection::open(&target).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(conn.post_signed("t=1,v1=ab", b"{}").await.ok(), Some(200));
        assert!(!conn.is_open(), "the server said it closes");
        let _ = server.await;

        let (target, server) = serve(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort"]).await;
        let mut conn = WireConnection::open(&target).await.unwrap_or_else(|e| panic!("{e}"));
        // The server closes the connection after the cut answer: 5 of 50 body bytes, then EOF.
        assert!(conn.post_signed("t=1,v1=ab", b"{}").await.is_err());
        assert!(!conn.is_open());
        let _ = server.await;
    }
}

//! A small HTTP/1.1 server on a free loopback port for the stand-ins (the
//! provider and Slack here, and pay-chaos's own): one thread per connection
//! (a slow answer never holds up another), keep-alive, requests read with
//! `httparse`, and the power to close a connection without answering (a
//! reply lost on the way), which a full server library does not give.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// One HTTP request as a stand-in sees it.
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response: status, content type, extra headers, body.
pub struct HttpResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl HttpResponse {
    /// A JSON body.
    pub fn new(status: u16, body: impl Into<String>) -> HttpResponse {
        HttpResponse {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// What a web server answers for a path it does not serve.
    pub fn not_found_page() -> HttpResponse {
        HttpResponse {
            content_type: "text/html",
            ..HttpResponse::new(
                404,
                "<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>",
            )
        }
    }
}

/// Serves HTTP/1.1 on a free loopback port. The handler answers each
/// request, or returns None to close the connection without a word.
pub fn serve<F>(handler: F) -> std::io::Result<SocketAddr>
where
    F: Fn(&HttpRequest) -> Option<HttpResponse> + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let handler = handler.clone();
            std::thread::spawn(move || {
                let _ = connection(stream, &*handler);
            });
        }
    });
    Ok(addr)
}

fn connection<F>(mut stream: TcpStream, handler: &F) -> std::io::Result<()>
where
    F: Fn(&HttpRequest) -> Option<HttpResponse>,
{
    // An idle keep-alive connection ends after a while: no thread lives for
    // ever. (Clients drop theirs sooner: ureq after 15 s.)
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = Vec::new();
    while let Some(request) = read_request(&mut stream, &mut buf)? {
        let Some(response) = handler(&request) else {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return Ok(());
        };
        stream.write_all(&response_bytes(&response))?;
        if request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            return Ok(());
        }
    }
    Ok(())
}

/// Reads the next request of a keep-alive connection, its head (up to
/// 64 KiB, 32 headers) and its body (`Content-Length`, up to 1 MiB). `buf`
/// carries what was read past one request into the next. None: the peer
/// closed the connection, or sent what is not an HTTP request.
pub fn read_request(
    stream: &mut impl Read,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<HttpRequest>> {
    let (head_len, mut request) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let request = HttpRequest {
                    method: req.method.unwrap_or("").to_string(),
                    path: req.path.unwrap_or("").to_string(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                    body: Vec::new(),
                };
                break (n, request);
            }
            Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => {
                if !read_more(stream, buf)? {
                    return Ok(None);
                }
            }
            _ => return Ok(None),
        }
    };
    let length: usize = request
        .header("content-length")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
        .min(1 << 20);
    buf.drain(..head_len);
    while buf.len() < length {
        if !read_more(stream, buf)? {
            return Ok(None);
        }
    }
    request.body = buf.drain(..length).collect();
    Ok(Some(request))
}

/// Appends what the stream has next to `buf`; false at its end.
fn read_more(stream: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

fn response_bytes(response: &HttpResponse) -> Vec<u8> {
    let reason = ureq::http::StatusCode::from_u16(response.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Status");
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nContent-Type: {}\r\n",
        response.status,
        response.body.len(),
        response.content_type
    );
    for (k, v) in &response.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&response.body);
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that hands out its bytes a few at a time.
    struct Drip<'a>(&'a [u8]);

    impl Read for Drip<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(3).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn requests_are_read_one_after_another_from_pieces() {
        let mut wire = Drip(
            b"POST /payments HTTP/1.1\r\nIdempotency-Key: t1\r\nContent-Length: 4\r\n\r\nbody\
              GET /payments/t1 HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        let mut buf = Vec::new();
        let post = read_request(&mut wire, &mut buf).unwrap().unwrap();
        assert_eq!(
            (post.method.as_str(), post.path.as_str()),
            ("POST", "/payments")
        );
        assert_eq!(post.header("idempotency-key"), Some("t1"));
        assert_eq!(post.body, b"body");
        let get = read_request(&mut wire, &mut buf).unwrap().unwrap();
        assert_eq!(
            (get.method.as_str(), get.path.as_str()),
            ("GET", "/payments/t1")
        );
        assert!(get.body.is_empty());
        assert!(read_request(&mut wire, &mut buf).unwrap().is_none());
    }

    #[test]
    fn a_handler_that_answers_none_closes_the_connection_unanswered() {
        let addr = serve(|rq| (rq.path == "/ok").then(|| HttpResponse::new(200, "{}"))).unwrap();
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /ok HTTP/1.1\r\n\r\nGET /lost HTTP/1.1\r\n\r\n")
            .unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\n{}"), "{got}");
    }
}

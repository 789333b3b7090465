//! A small HTTP/1.1 server on a free loopback port for the stand-ins: one
//! thread per connection (a slow answer never holds up another), keep-alive,
//! and the power to close a connection without answering (a reply lost on
//! the way), which a full server library does not give.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

pub struct Request {
    pub method: String,
    pub path: String,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub enum Reply {
    /// Status code and a JSON body.
    Json(u16, String),
    /// Status code and an HTML page (what a web server answers off its routes).
    Page(u16, String),
    /// Close the connection without a word.
    Close,
}

pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

pub fn serve(handler: Handler) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let handler = handler.clone();
            std::thread::spawn(move || {
                let _ = connection(stream, &handler);
            });
        }
    });
    Ok(addr)
}

fn connection(mut stream: TcpStream, handler: &Handler) -> std::io::Result<()> {
    // An idle keep-alive connection ends after a while: no thread lives forever.
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = Vec::new();
    loop {
        let (head_len, mut request) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let request = Request {
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
                    let mut chunk = [0u8; 4096];
                    let n = stream.read(&mut chunk)?;
                    if n == 0 {
                        return Ok(());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                _ => return Ok(()),
            }
        };
        let length: usize = request
            .header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
            .min(1 << 20);
        buf.drain(..head_len);
        while buf.len() < length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        request.body = buf.drain(..length).collect();
        let (code, content_type, body) = match handler(&request) {
            Reply::Json(code, body) => (code, "application/json", body),
            Reply::Page(code, body) => (code, "text/html", body),
            Reply::Close => {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return Ok(());
            }
        };
        let out = format!(
            "HTTP/1.1 {code} {}\r\nContent-Length: {}\r\nContent-Type: {content_type}\r\n\r\n{body}",
            reason(code),
            body.len()
        );
        stream.write_all(out.as_bytes())?;
        if request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            return Ok(());
        }
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        402 => "Payment Required",
        404 => "Not Found",
        409 => "Conflict",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

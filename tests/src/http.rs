//! A tiny blocking HTTP/1.1 client on `std::net` (keep-alive capable) whose
//! responses keep every header line, so tests can assert "present exactly once".

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::failure::fail;

/// How long a single read or write may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A parsed HTTP response.
#[derive(Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header lines in order, names lower-cased, duplicates kept.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &self.text())
            .finish()
    }
}

impl Response {
    /// All values of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).into_iter().next()
    }

    /// The value of header `name`, asserting it is present exactly once.
    pub fn header_once(&self, name: &str) -> &str {
        let values = self.header_all(name);
        assert_eq!(
            values.len(),
            1,
            "expected exactly one `{name}` header, got {values:?}; response: {self:?}"
        );
        values.first().copied().unwrap_or_default()
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON (panics with the body if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            fail(format!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            ))
        })
    }
}

/// One client connection (HTTP/1.1 keep-alive); reconnects transparently if the
/// server closed it between requests.
#[derive(Debug)]
pub struct Conn {
    port: u16,
    reader: Option<BufReader<TcpStream>>,
}

impl Conn {
    /// A connection to `127.0.0.1:port` (opened lazily).
    pub fn new(port: u16) -> Self {
        Self { port, reader: None }
    }

    fn stream(&mut self) -> std::io::Result<&mut BufReader<TcpStream>> {
        if self.reader.is_none() {
            let stream = TcpStream::connect(("127.0.0.1", self.port))?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
            stream.set_nodelay(true)?;
            self.reader = Some(BufReader::new(stream));
        }
        self.reader
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no connection"))
    }

    /// Sends one request and reads the response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let reused = self.reader.is_some();
        match self.try_request(method, path, headers, body) {
            Ok(response) => Ok(response),
            // A kept-alive connection the server already closed: retry once on a fresh one.
            Err(_) if reused => {
                self.reader = None;
                self.try_request(method, path, headers, body)
            }
            Err(e) => Err(e),
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: tenant-guard.test\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
            head.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let port = self.port;
        let result = (|| {
            let reader = self.stream()?;
            let stream = reader.get_mut();
            stream.write_all(head.as_bytes())?;
            stream.write_all(body)?;
            stream.flush()?;
            read_response(reader, method == "HEAD")
        })();
        match result {
            Ok((response, keep_alive)) => {
                if !keep_alive {
                    self.reader = None;
                }
                Ok(response)
            }
            Err(e) => {
                self.reader = None;
                Err(std::io::Error::new(
                    e.kind(),
                    format!("{method} 127.0.0.1:{port}{path}: {e}"),
                ))
            }
        }
    }

    /// `GET path` with `headers`; panics on I/O errors.
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.request("GET", path, headers, b"")
            .unwrap_or_else(|e| fail(format!("GET {path} failed: {e}")))
    }
}

/// One request on a fresh connection; panics on I/O errors.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    Conn::new(port)
        .request(method, path, headers, body)
        .unwrap_or_else(|e| fail(format!("{method} {path} failed: {e}")))
}

/// `GET path` on a fresh connection; panics on I/O errors.
pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    request(port, "GET", path, headers, b"")
}

/// `GET path` on a fresh connection, `None` on any I/O error (for polling).
pub fn try_get(port: u16, path: &str) -> Option<Response> {
    Conn::new(port).request("GET", path, &[], b"").ok()
}

fn invalid(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

fn read_line(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Reads a response; returns it and whether the connection may be reused.
fn read_response(reader: &mut impl BufRead, head_only: bool) -> std::io::Result<(Response, bool)> {
    let status_line = read_line(reader)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default().to_string();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let mut keep_alive = version == "HTTP/1.1" && find("connection").as_deref() != Some("close");
    let mut body = Vec::new();
    if head_only || status / 100 == 1 || status == 204 || status == 304 {
        // no body
    } else if find("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        loop {
            let size_line = read_line(reader)?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| invalid(format!("bad chunk size {size_line:?}")))?;
            if size == 0 {
                while !read_line(reader)?.is_empty() {}
                break;
            }
            let mut chunk = vec![0; size];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            read_line(reader)?;
        }
    } else if let Some(len) = find("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| invalid(format!("bad content-length {len:?}")))?;
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else {
        reader.read_to_end(&mut body)?;
        keep_alive = false;
    }
    Ok((
        Response {
            status,
            headers,
            body,
        },
        keep_alive,
    ))
}

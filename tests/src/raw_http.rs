//! Byte-exact HTTP clients for hostile-input tests: header names and values go
//! on the wire exactly as given (any byte, `0x00`–`0xff`), and responses keep
//! their raw header bytes. HTTP/1.1 over one keep-alive connection
//! ([`RawH1`]), and HTTP/2 with prior knowledge ([`RawH2`]: frames written
//! here, request headers as HPACK literals without Huffman coding so no byte is
//! transformed; responses decoded with the `hpack` crate). A request the server
//! refuses at the codec (HTTP/1 400 + close, HTTP/2 stream reset or GOAWAY) is
//! reported as [`Outcome::Refused`] and the client reconnects.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use crate::http::IO_TIMEOUT;

/// A response with raw header bytes (names lower-cased by the server or here).
#[derive(Debug, Clone, Default)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// All values of header `name`.
    pub fn header_all(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What became of one request.
#[derive(Debug, Clone)]
pub enum Outcome {
    Response(RawResponse),
    /// The server's codec refused the request (what, for the report).
    Refused(String),
}

/// One HTTP/1.1 keep-alive connection.
#[derive(Debug)]
pub struct RawH1 {
    port: u16,
    reader: Option<BufReader<TcpStream>>,
}

impl RawH1 {
    pub fn new(port: u16) -> Self {
        Self { port, reader: None }
    }

    /// Sends one request; a closed keep-alive connection is retried once on a fresh one.
    pub fn request(
        &mut self,
        method: &str,
        path: &[u8],
        headers: &[(&[u8], &[u8])],
        body: &[u8],
    ) -> std::io::Result<Outcome> {
        let reused = self.reader.is_some();
        match self.try_request(method, path, headers, body) {
            Err(_) if reused => {
                self.reader = None;
                self.try_request(method, path, headers, body)
            }
            other => other,
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &[u8],
        headers: &[(&[u8], &[u8])],
        body: &[u8],
    ) -> std::io::Result<Outcome> {
        if self.reader.is_none() {
            let stream = TcpStream::connect(("127.0.0.1", self.port))?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
            stream.set_nodelay(true)?;
            self.reader = Some(BufReader::new(stream));
        }
        let mut head = Vec::new();
        head.extend_from_slice(method.as_bytes());
        head.push(b' ');
        head.extend_from_slice(path);
        head.extend_from_slice(b" HTTP/1.1\r\nhost: tenant-guard.test\r\n");
        for (name, value) in headers {
            head.extend_from_slice(name);
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        head.extend_from_slice(body);
        let result = (|| {
            let reader = self
                .reader
                .as_mut()
                .ok_or_else(|| std::io::Error::other("no connection"))?;
            reader.get_mut().write_all(&head)?;
            read_h1_response(reader)
        })();
        match result {
            Ok((response, keep_alive)) => {
                if !keep_alive {
                    self.reader = None;
                }
                Ok(Outcome::Response(response))
            }
            Err(e) => {
                self.reader = None;
                Err(e)
            }
        }
    }
}

fn read_raw_line(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(line)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |at| at + 1);
    bytes.get(start..end).unwrap_or_default()
}

fn read_h1_response(reader: &mut impl BufRead) -> std::io::Result<(RawResponse, bool)> {
    let status_line = read_raw_line(reader)?;
    let text = String::from_utf8_lossy(&status_line).into_owned();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {text:?}")))?;
    let mut response = RawResponse {
        status,
        ..RawResponse::default()
    };
    loop {
        let line = read_raw_line(reader)?;
        if line.is_empty() {
            break;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| std::io::Error::other("header line without colon"))?;
        let (name, value) = line.split_at(colon);
        let name = name.to_ascii_lowercase();
        let value = trim(value.get(1..).unwrap_or_default()).to_vec();
        response.headers.push((name, value));
    }
    let find = |name: &str| {
        response
            .header_all(name)
            .first()
            .map(|v| String::from_utf8_lossy(v).to_ascii_lowercase())
    };
    let keep_alive = find("connection").as_deref() != Some("close");
    if find("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        loop {
            let size_line = read_raw_line(reader)?;
            let size_text = String::from_utf8_lossy(&size_line).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {size_text:?}")))?;
            if size == 0 {
                while !read_raw_line(reader)?.is_empty() {}
                break;
            }
            let mut chunk = vec![0; size];
            reader.read_exact(&mut chunk)?;
            response.body.extend_from_slice(&chunk);
            read_raw_line(reader)?;
        }
    } else if let Some(len) = find("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| std::io::Error::other("bad content-length"))?;
        response.body.resize(len, 0);
        reader.read_exact(&mut response.body)?;
    } else if status != 204 && status != 304 {
        reader.read_to_end(&mut response.body)?;
        return Ok((response, false));
    }
    Ok((response, keep_alive))
}

const FRAME_DATA: u8 = 0;
const FRAME_HEADERS: u8 = 1;
const FRAME_RST_STREAM: u8 = 3;
const FRAME_SETTINGS: u8 = 4;
const FRAME_PING: u8 = 6;
const FRAME_GOAWAY: u8 = 7;
const FRAME_CONTINUATION: u8 = 9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// One HTTP/2 (prior knowledge, cleartext) connection; requests run one at a time.
pub struct RawH2 {
    port: u16,
    conn: Option<H2Conn>,
}

impl std::fmt::Debug for RawH2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawH2").field("port", &self.port).finish()
    }
}

struct H2Conn {
    stream: TcpStream,
    next_stream: u32,
    decoder: hpack::Decoder<'static>,
}

/// The content of a DATA or HEADERS frame `payload`: without the pad length and
/// padding (`FLAG_PADDED`) and, for HEADERS (`priority_fields`), without the
/// stream dependency and weight (`FLAG_PRIORITY`). A frame too short for what
/// its flags announce is an error.
fn unpadded(payload: &[u8], flags: u8, priority_fields: bool) -> std::io::Result<&[u8]> {
    let short = || std::io::Error::other("frame shorter than its padding or priority fields");
    let (pad, rest) = if flags & FLAG_PADDED != 0 {
        let (&pad, rest) = payload.split_first().ok_or_else(short)?;
        (usize::from(pad), rest)
    } else {
        (0, payload)
    };
    let rest = if priority_fields && flags & FLAG_PRIORITY != 0 {
        rest.get(5..).ok_or_else(short)?
    } else {
        rest
    };
    let end = rest.len().checked_sub(pad).ok_or_else(short)?;
    rest.get(..end).ok_or_else(short)
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(0);
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK integer with an `prefix_bits`-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// "Literal Header Field without Indexing — New Name", no Huffman (RFC 7541 §6.2.2).
fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    hpack_int(out, 0x00, 7, name.len());
    out.extend_from_slice(name);
    hpack_int(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

impl RawH2 {
    pub fn new(port: u16) -> Self {
        Self { port, conn: None }
    }

    fn connect(&mut self) -> std::io::Result<&mut H2Conn> {
        if self.conn.is_none() {
            let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
            stream.set_nodelay(true)?;
            let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            hello.extend(frame(FRAME_SETTINGS, 0, 0, &[]));
            // A large connection window, so responses never wait on WINDOW_UPDATE.
            hello.extend(frame(8, 0, 0, &0x3fff_0000u32.to_be_bytes()));
            stream.write_all(&hello)?;
            self.conn = Some(H2Conn {
                stream,
                next_stream: 1,
                decoder: hpack::Decoder::new(),
            });
        }
        self.conn
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no connection"))
    }

    /// Sends one request (pseudo-headers first, then `headers` byte for byte).
    pub fn request(
        &mut self,
        method: &str,
        path: &[u8],
        headers: &[(&[u8], &[u8])],
        body: &[u8],
    ) -> std::io::Result<Outcome> {
        let result = self.try_request(method, path, headers, body);
        match &result {
            Ok(Outcome::Response(_)) => {}
            // A refused request may have cost the connection: start afresh.
            _ => self.conn = None,
        }
        result
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &[u8],
        headers: &[(&[u8], &[u8])],
        body: &[u8],
    ) -> std::io::Result<Outcome> {
        let conn = self.connect()?;
        let id = conn.next_stream;
        conn.next_stream += 2;
        let mut block = Vec::new();
        hpack_literal(&mut block, b":method", method.as_bytes());
        hpack_literal(&mut block, b":scheme", b"http");
        hpack_literal(&mut block, b":authority", b"tenant-guard.test");
        hpack_literal(&mut block, b":path", path);
        for (name, value) in headers {
            hpack_literal(&mut block, name, value);
        }
        let end = if body.is_empty() { FLAG_END_STREAM } else { 0 };
        let mut out = frame(FRAME_HEADERS, FLAG_END_HEADERS | end, id, &block);
        if !body.is_empty() {
            out.extend(frame(FRAME_DATA, FLAG_END_STREAM, id, body));
        }
        conn.stream.write_all(&out)?;

        let mut response = RawResponse::default();
        let mut block = Vec::new();
        loop {
            let mut head = [0u8; 9];
            conn.stream.read_exact(&mut head)?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            conn.stream.read_exact(&mut payload)?;
            match kind {
                FRAME_SETTINGS if flags & FLAG_ACK == 0 => {
                    conn.stream
                        .write_all(&frame(FRAME_SETTINGS, FLAG_ACK, 0, &[]))?;
                }
                FRAME_PING if flags & FLAG_ACK == 0 => {
                    conn.stream
                        .write_all(&frame(FRAME_PING, FLAG_ACK, 0, &payload))?;
                }
                FRAME_GOAWAY => {
                    return Ok(Outcome::Refused(format!("GOAWAY {:?}", payload.get(4..8))))
                }
                FRAME_RST_STREAM if stream == id => {
                    return Ok(Outcome::Refused(format!("RST_STREAM {payload:?}")))
                }
                FRAME_HEADERS | FRAME_CONTINUATION if stream == id => {
                    let fragment = if kind == FRAME_HEADERS {
                        unpadded(&payload, flags, true)?
                    } else {
                        payload.as_slice()
                    };
                    block.extend_from_slice(fragment);
                    if flags & FLAG_END_HEADERS != 0 {
                        let decoded = conn
                            .decoder
                            .decode(&block)
                            .map_err(|e| std::io::Error::other(format!("HPACK: {e:?}")))?;
                        block.clear();
                        for (name, value) in decoded {
                            if name == b":status" {
                                response.status =
                                    String::from_utf8_lossy(&value).parse().unwrap_or(0);
                            } else {
                                response.headers.push((name, value));
                            }
                        }
                    }
                    if flags & FLAG_END_STREAM != 0 && flags & FLAG_END_HEADERS != 0 {
                        return Ok(Outcome::Response(response));
                    }
                }
                FRAME_DATA if stream == id => {
                    let data = unpadded(&payload, flags, false)?;
                    response.body.extend_from_slice(data);
                    if len > 0 {
                        // Give the connection window back (stream windows suffice for small bodies).
                        let credit = u32::try_from(len).unwrap_or(0).to_be_bytes();
                        conn.stream.write_all(&frame(8, 0, 0, &credit))?;
                    }
                    if flags & FLAG_END_STREAM != 0 {
                        return Ok(Outcome::Response(response));
                    }
                }
                _ => {}
            }
        }
    }
}

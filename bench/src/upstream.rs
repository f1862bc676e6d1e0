//! The benchmarks' upstream: a minimal keep-alive HTTP/1.1 server with one fixed
//! answer, so every scenario proxies a real request at the lowest upstream cost.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use serde_json::json;

/// Starts a minimal keep-alive upstream on 127.0.0.1 that answers every request
/// with 200 and the JSON body `{"ok":true,"upstream":"<name>"}` in one write
/// (`TCP_NODELAY`, so no Nagle / delayed-ACK stalls). Request bodies are read and
/// dropped. Runs until the process exits; returns its port.
pub fn start_upstream(name: &str) -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind upstream: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("upstream addr: {e}"))?
        .port();
    let body = json!({"ok": true, "upstream": name}).to_string();
    let mut response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body.as_bytes());
    let response: Arc<[u8]> = response.into();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let response = Arc::clone(&response);
            std::thread::spawn(move || {
                let _ = serve(stream, &response);
            });
        }
    });
    Ok(port)
}

fn serve(stream: TcpStream, response: &[u8]) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.trim_end().is_empty() {
            continue;
        }
        let mut content_length = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.trim().eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut request_body = vec![0; content_length];
        reader.read_exact(&mut request_body)?;
        writer.write_all(response)?;
    }
}

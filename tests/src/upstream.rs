//! The upstream test server: answers every request with 200 and a JSON body
//! `{"headers": {..}, "header_list": [[name, value], ..], "path": .., "method": ..}`
//! (names lower-cased; repeated headers are joined with ", " in `headers` and kept
//! separately in `header_list`), counts hits, and can be told to answer a given
//! status for a path.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::failure::fail;

#[derive(Debug, Default)]
struct Shared {
    hits: AtomicU64,
    statuses: Mutex<HashMap<String, u16>>,
}

/// A test server's accept loop on `127.0.0.1:<free port>`: every connection is
/// served by `serve` on its own thread; stops (and joins) on drop.
#[derive(Debug)]
pub struct Acceptor {
    port: u16,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Acceptor {
    pub fn start<S: Send + Sync + 'static>(
        shared: Arc<S>,
        serve: fn(TcpStream, &S) -> std::io::Result<()>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| fail(format!("bind test server: {e}")));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| fail(format!("test server addr: {e}")))
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                // Head and body go out in one segment; without this, Nagle +
                // delayed ACK hold keep-alive responses for ~40 ms.
                let _ = stream.set_nodelay(true);
                let conn_shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let _ = serve(stream, &conn_shared);
                });
            }
        });
        Self {
            port,
            stop,
            handle: Some(handle),
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so the thread sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// A running upstream; stopped on drop.
#[derive(Debug)]
pub struct Upstream {
    shared: Arc<Shared>,
    acceptor: Acceptor,
}

impl Upstream {
    /// Starts the server on `127.0.0.1:<free port>`.
    pub fn start() -> Self {
        let shared = Arc::new(Shared::default());
        Self {
            acceptor: Acceptor::start(Arc::clone(&shared), serve),
            shared,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.acceptor.port()
    }

    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// Answer `status` for requests whose path (without query) equals `path`.
    pub fn set_status(&self, path: &str, status: u16) {
        self.shared
            .statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(path.to_string(), status);
    }
}

fn serve(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let request_line = request_line.trim_end().to_string();
        if request_line.is_empty() {
            continue;
        }
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let mut header_list: Vec<(String, String)> = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                header_list.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let content_length = header_list
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body)?;
        shared.hits.fetch_add(1, Ordering::SeqCst);

        let path = target.split('?').next().unwrap_or_default().to_string();
        let status = shared
            .statuses
            .lock()
            .map(|s| s.get(&path).copied().unwrap_or(200))
            .unwrap_or(200);
        let mut headers = serde_json::Map::new();
        for (name, value) in &header_list {
            let joined = match headers.get(name).and_then(|v| v.as_str()) {
                Some(previous) => format!("{previous}, {value}"),
                None => value.clone(),
            };
            headers.insert(name.clone(), serde_json::Value::String(joined));
        }
        let response_body = serde_json::json!({
            "headers": headers,
            "header_list": header_list,
            "path": target,
            "method": method,
            "body_len": body.len(),
        })
        .to_string();
        let head = format!(
            "HTTP/1.1 {status} Upstream\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            response_body.len()
        );
        let mut response = head.into_bytes();
        response.extend_from_slice(response_body.as_bytes());
        writer.write_all(&response)?;
        writer.flush()?;
    }
}

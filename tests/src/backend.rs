//! The controllable test upstream for the idempotency, JWT and Kong-engine
//! suites: per-path behaviour (status, delay, padding, dropped connections,
//! holding requests until the test releases them) and per-path counts that tell
//! *complete* requests (headers and the whole body read) from requests the
//! gateway started and then reset.
//!
//! Answers `{"hit": n, "path", "method", "body_len", "headers": {..}, "pad": ".."}`
//! with `x-upstream-marker: <path>#<n>` (`n` = complete requests on the path).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::set_json;
use crate::upstream::Acceptor;

/// The header every backend answer carries: `<path>#<complete requests on it>`.
pub const MARKER: &str = "x-upstream-marker";
/// How long a held request waits for [`Backend::release`] at most.
const HOLD_LIMIT: Duration = Duration::from_secs(30);

/// How the backend answers one path.
#[derive(Debug, Clone)]
pub struct Route {
    pub status: u16,
    pub delay: Duration,
    /// Pad the JSON body to at least this many bytes.
    pub pad_to: usize,
    /// Read the request, then close the connection without answering.
    pub drop: bool,
    /// Extra response header lines, as given (a name twice is two lines).
    pub headers: Vec<(String, String)>,
    /// `(request header, response header)`: the request's value answered
    /// back under the response name (e.g. the usage a test wants reported).
    pub echo: Vec<(String, String)>,
}

impl Default for Route {
    fn default() -> Self {
        Self {
            status: 200,
            delay: Duration::ZERO,
            pad_to: 0,
            drop: false,
            headers: Vec::new(),
            echo: Vec::new(),
        }
    }
}

#[derive(Debug, Default)]
struct BackendState {
    routes: HashMap<String, Route>,
    /// Requests whose headers arrived, per path.
    started: HashMap<String, u64>,
    /// Requests read completely (headers and whole body), per path.
    completed: HashMap<String, u64>,
    /// Request headers of the last complete request, per path.
    last_headers: HashMap<String, Vec<(String, String)>>,
    /// Paths whose complete requests wait for [`Backend::release`] before answering.
    held: HashSet<String>,
}

#[derive(Debug, Default)]
struct BackendShared {
    state: Mutex<BackendState>,
    released: Condvar,
}

/// The test upstream (see the module doc).
#[derive(Debug)]
pub struct Backend {
    shared: Arc<BackendShared>,
    acceptor: Acceptor,
}

impl Backend {
    pub fn start() -> Self {
        let shared = Arc::new(BackendShared::default());
        Self {
            acceptor: Acceptor::start(Arc::clone(&shared), serve),
            shared,
        }
    }

    pub fn port(&self) -> u16 {
        self.acceptor.port()
    }

    pub fn route(&self, path: &str, route: Route) {
        self.lock().routes.insert(path.to_string(), route);
    }

    fn lock(&self) -> MutexGuard<'_, BackendState> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Complete requests (the whole body read) for `path`.
    pub fn completed(&self, path: &str) -> u64 {
        self.lock().completed.get(path).copied().unwrap_or(0)
    }

    /// Requests whose headers reached the backend for `path` (complete or not).
    pub fn started(&self, path: &str) -> u64 {
        self.lock().started.get(path).copied().unwrap_or(0)
    }

    /// Complete requests over all paths.
    pub fn completed_total(&self) -> u64 {
        self.lock().completed.values().sum()
    }

    /// Request headers (one entry per line) of the last complete request to `path`.
    pub fn last_headers(&self, path: &str) -> Vec<(String, String)> {
        self.lock()
            .last_headers
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    /// Complete requests to `path` wait (counted, unanswered) until [`Backend::release`],
    /// so "in flight" is a state a test waits for, not a race it hopes to win.
    pub fn hold(&self, path: &str) {
        self.lock().held.insert(path.to_string());
    }

    pub fn release(&self, path: &str) {
        self.lock().held.remove(path);
        self.shared.released.notify_all();
    }
}

/// Request header values the backend received (one per header line).
pub fn seen(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .collect()
}

fn read_line(reader: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
}

fn read_body(reader: &mut impl BufRead, headers: &[(String, String)]) -> std::io::Result<Vec<u8>> {
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let mut body = Vec::new();
    if find("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        loop {
            let size_line = read_line(reader)?.ok_or(std::io::ErrorKind::UnexpectedEof)?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            if size == 0 {
                while !read_line(reader)?
                    .ok_or(std::io::ErrorKind::UnexpectedEof)?
                    .is_empty()
                {}
                return Ok(body);
            }
            let mut chunk = vec![0; size];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            read_line(reader)?;
        }
    }
    let len = find("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    body.resize(len, 0);
    reader.read_exact(&mut body)?;
    Ok(body)
}

fn serve(stream: TcpStream, shared: &BackendShared) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(request_line) = read_line(&mut reader)? else {
            return Ok(());
        };
        if request_line.is_empty() {
            continue;
        }
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let path = target.split('?').next().unwrap_or_default().to_string();
        let mut header_list: Vec<(String, String)> = Vec::new();
        loop {
            let Some(line) = read_line(&mut reader)? else {
                return Ok(());
            };
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                header_list.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let route = {
            let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            *state.started.entry(path.clone()).or_default() += 1;
            state.routes.get(&path).cloned().unwrap_or_default()
        };
        // A reset before the body is complete ends here: not counted as completed.
        let body = read_body(&mut reader, &header_list)?;
        let hit = {
            let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            let hit = {
                let counter = state.completed.entry(path.clone()).or_default();
                *counter += 1;
                *counter
            };
            state.last_headers.insert(path.clone(), header_list.clone());
            let (_state, _timeout) = shared
                .released
                .wait_timeout_while(state, HOLD_LIMIT, |s| s.held.contains(&path))
                .unwrap_or_else(PoisonError::into_inner);
            hit
        };
        if !route.delay.is_zero() {
            std::thread::sleep(route.delay);
        }
        if route.drop {
            let _ = writer.shutdown(Shutdown::Both);
            return Ok(());
        }
        let mut headers = serde_json::Map::new();
        for (name, value) in &header_list {
            headers.insert(name.clone(), Value::String(value.clone()));
        }
        let mut response = json!({
            "hit": hit,
            "path": target,
            "method": method,
            "body_len": body.len(),
            "headers": headers,
            "pad": "",
        });
        let len = response.to_string().len();
        if route.pad_to > len {
            set_json(
                &mut response,
                &["pad"],
                Value::String("p".repeat(route.pad_to - len)),
            );
        }
        let response_body = response.to_string();
        let mut extra = String::new();
        for (name, value) in &route.headers {
            extra.push_str(&format!("{name}: {value}\r\n"));
        }
        for (from, to) in &route.echo {
            for (_, value) in header_list.iter().filter(|(name, _)| name == from) {
                extra.push_str(&format!("{to}: {value}\r\n"));
            }
        }
        let mut message = format!(
            "HTTP/1.1 {} Backend\r\ncontent-type: application/json\r\n{MARKER}: {path}#{hit}\r\n{extra}content-length: {}\r\n\r\n",
            route.status,
            response_body.len()
        );
        message.push_str(&response_body);
        writer.write_all(message.as_bytes())?;
        writer.flush()?;
    }
}

//! Starting an Envoy without a port race: the bootstrap asks for port 0 for the
//! admin and the listener, Envoy binds both itself, writes its admin address to
//! `--admin-address-path`, and the listener's port is read from that admin's
//! `/listeners`.
//!
//! Why not pick free ports first: a port picked and released can be taken by
//! anyone before Envoy binds it. For the admin port that made Envoy exit while
//! another test's Envoy answered `/ready` on that port, so a dead Envoy looked
//! ready; for the listener (SO_REUSEPORT) two Envoys could even share one port
//! and split each other's requests. An address Envoy wrote itself is its own.

use std::fs;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use serde_json::Value;

use crate::http;
use crate::wait::wait_until;

/// The template values that let Envoy choose its admin and listener ports.
pub fn ephemeral_port_values() -> [(&'static str, String); 2] {
    [
        ("ADMIN_PORT", "0".to_owned()),
        ("LISTENER_PORT", "0".to_owned()),
    ]
}

/// The ports a started Envoy bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundPorts {
    /// Its admin port.
    pub admin: u16,
    /// The port of its listener named [`LISTENER_NAME`].
    pub listener: u16,
}

/// The name of the HTTP listener in every bootstrap template of `envoy/`.
pub const LISTENER_NAME: &str = "ingress";

/// Waits up to `timeout` until the Envoy `child` (started with
/// `--admin-address-path admin_address_path` on [`ephemeral_port_values`]) has
/// written its admin address, bound its listener and answers `/ready` with 200;
/// the ports. The error says whether it exited (with its status) or timed out;
/// an Envoy that is not ready is killed and reaped before it is returned.
pub fn wait_until_ready(
    child: &mut Child,
    admin_address_path: &Path,
    timeout: Duration,
) -> Result<BoundPorts, String> {
    let mut exited = None;
    let mut ports = None;
    let ready = wait_until(timeout, || {
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            return true;
        }
        if ports.is_none() {
            ports = discover(admin_address_path);
        }
        ports.is_some_and(|ports| {
            http::try_get(ports.admin, "/ready").is_some_and(|r| r.status == 200)
        })
    });
    let outcome = match (exited, ports) {
        (Some(status), _) => Err(format!("Envoy exited during startup ({status})")),
        (None, Some(ports)) if ready => Ok(ports),
        (None, Some(ports)) => Err(format!(
            "Envoy (admin port {}) not ready within {timeout:?}",
            ports.admin
        )),
        (None, None) => Err(format!(
            "Envoy did not report its ports within {timeout:?} ({} never named a bound listener)",
            admin_address_path.display()
        )),
    };
    if outcome.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    outcome
}

/// The admin port from `admin_address_path` and the listener's from its
/// `/listeners`, once both are there.
fn discover(admin_address_path: &Path) -> Option<BoundPorts> {
    let address = fs::read_to_string(admin_address_path).ok()?;
    let admin = port_of(address.trim())?;
    let listeners = http::try_get(admin, "/listeners?format=json")?;
    let listener = listener_port(
        &serde_json::from_slice(&listeners.body).ok()?,
        LISTENER_NAME,
    )?;
    Some(BoundPorts { admin, listener })
}

/// The port of `host:port` (0 is no port).
fn port_of(address: &str) -> Option<u16> {
    let (_, port) = address.rsplit_once(':')?;
    port.parse().ok().filter(|port| *port != 0)
}

/// The bound port of listener `name` in Envoy's `/listeners?format=json`.
fn listener_port(listeners: &Value, name: &str) -> Option<u16> {
    listeners
        .get("listener_statuses")?
        .as_array()?
        .iter()
        .find(|status| status.get("name").and_then(Value::as_str) == Some(name))?
        .pointer("/local_address/socket_address/port_value")?
        .as_u64()
        .and_then(|port| u16::try_from(port).ok())
        .filter(|port| *port != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_from_what_envoy_reports() {
        let listeners = serde_json::json!({"listener_statuses": [
            {"name": "other", "local_address": {"socket_address": {"port_value": 1}}},
            {"name": "ingress", "local_address": {"socket_address": {"port_value": 38999}}}
        ]});
        let unbound = serde_json::json!({"listener_statuses": [
            {"name": "ingress", "local_address": {"socket_address": {"port_value": 0}}}
        ]});
        let cases: [(Option<u16>, Option<u16>); 6] = [
            (port_of("127.0.0.1:41091"), Some(41091)),
            (port_of("[::1]:9901"), Some(9901)),
            (port_of("127.0.0.1:0"), None),
            (port_of("127.0.0.1"), None),
            (listener_port(&listeners, "ingress"), Some(38999)),
            (listener_port(&unbound, "ingress"), None),
        ];
        for (index, (got, want)) in cases.into_iter().enumerate() {
            assert_eq!(got, want, "case {index}");
        }
    }
}

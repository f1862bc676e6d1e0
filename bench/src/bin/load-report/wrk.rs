//! load-report's `wrk` runs: the rotating-tenants Lua script and one run
//! against a bench Envoy ([`run_wrk`]). The command line, the status-counting
//! script and the report parser are the library's (`tenant_guard_bench::wrk`).

use std::path::Path;

use tenant_guard_bench::{cannot_run_wrk, wrk_command, wrk_output, WrkResult};

use super::{Res, PATH};

/// Sends each request for a different tenant, `t00000` … (the 10k-tenant config).
pub(crate) fn rotating_tenants_script(tenants: usize) -> String {
    format!(
        r#"
local n = 0
function request()
  n = n + 1
  return wrk.format("GET", "{PATH}", {{ ["x-tenant-id"] = string.format("t%05d", n % {tenants}) }})
end
"#
    )
}

pub(crate) struct Load<'a> {
    pub(crate) port: u16,
    pub(crate) seconds: u64,
    pub(crate) connections: u32,
    pub(crate) headers: &'a [(String, String)],
    pub(crate) script: Option<&'a Path>,
}

/// One `wrk` run of `load` against `http://127.0.0.1:<port>`[`PATH`].
pub(crate) fn run_wrk(load: &Load<'_>) -> Res<WrkResult> {
    let mut command = wrk_command(load.connections, load.seconds, load.script);
    for (name, value) in load.headers {
        command.arg("-H").arg(format!("{name}: {value}"));
    }
    let output = command
        .arg(format!("http://127.0.0.1:{}{PATH}", load.port))
        .output()
        .map_err(cannot_run_wrk)?;
    wrk_output(&output)
}

//! What the benchmark binaries (`src/bin/filter-bench.rs`, `src/bin/load-report/`,
//! `src/bin/fleet-report/`, `src/bin/propagation-bench.rs`) share, on top of the
//! e2e harness (`tenant-guard-e2e`: filter build, Envoy binary, HTTP client,
//! sidecar stack), e.g. driving `wrk` and parsing its report ([`wrk`]).
//! Errors are `String`s, printed by the binaries.

pub mod cli;
pub mod configs;
pub mod envoy;
pub mod peers;
pub mod process;
pub mod report;
pub mod stats;
pub mod upstream;
pub mod wrk;

pub use cli::{file_labels, parse_command_line, Flags};
pub use configs::{
    es256_token, filter_config, rs256_token, with_jwt, SignedToken, JWT_AUDIENCE, JWT_ISSUER,
};
pub use envoy::{native_envoy_binary, BenchEnvoy, Bootstrap, Launch};
pub use process::{clock_ticks_per_second, rss_kib, CpuTime};
pub use report::{command_output, file_size};
pub use stats::{median, min_max, percentile_us};
pub use upstream::start_upstream;
pub use wrk::{cannot_run_wrk, parse_wrk, wrk_command, wrk_output, WrkResult, STATUS_SCRIPT};

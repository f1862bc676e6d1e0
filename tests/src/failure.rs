//! How a harness helper fails the test that called it. Helpers whose contract is
//! "do it or fail the test" (start Envoy, pick a port, build the `.wasm`, parse a
//! response as JSON) end the calling test with a message, as `assert!` does; they
//! all go through [`fail`], the crate's one panic, so everything else keeps the
//! workspace's no-unwrap / no-panic lints and states its error handling.

use std::fmt::Display;

/// Fails the calling test with `message` (reported at the caller's location).
#[track_caller]
#[allow(
    clippy::panic,
    reason = "failing the calling test is the harness's error path"
)]
pub fn fail(message: impl Display) -> ! {
    panic!("{message}")
}

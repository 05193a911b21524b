//! Helpers shared by the integration tests, one file per concern; everything is re-exported here, so a test module
//! needs only `use crate::support::*;`.
//!
//! - `process`: running a child or a thread with a deadline ([`SHORT`], [`LONG`]), so a hang fails the test naming
//!   what hung; the checks of a finished run; the real tools the tests need ([`tool`] fails, never skips).
//! - `tree`: making source trees with deterministic contents, reading restored trees back, comparing them byte for
//!   byte; the manifest and stats files the binaries leave; the MariaDB datadir fixture.
//! - `stream`: xbstream bytes in memory (parsed into chunks and encoded back; read a few bytes at a time).
//! - `commands`: the `producer` and `consumer` binaries (the only place that names them) and the ways the tests
//!   run them: once, through STDOUT or named pipes, beside the real `mbstream`.
//! - `storage`: the consumer's store commands and what they leave in a store.
//! - `servers`: the store services (`s3s-fs`, `fake-gcs-server`, Azurite) on 127.0.0.1, on ports picked at run
//!   time, and the `--storage` arguments that reach them.
//! - `fault_proxy`: an HTTP proxy that fails a share of the requests it forwards, in front of any of those servers.

// Not every test module uses every helper.
#![allow(dead_code)]

mod commands;
mod fault_proxy;
mod process;
mod servers;
mod storage;
mod stream;
mod tree;

pub use commands::*;
pub use fault_proxy::*;
pub use process::*;
pub use servers::*;
pub use storage::*;
pub use stream::*;
pub use tree::*;

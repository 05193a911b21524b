//! The one integration-test binary: every module below is a group of tests; `util` holds the shared helpers.

mod util;

mod clouds;
mod compression;
mod consumer;
mod directories;
mod faults;
mod fidelity;
mod pages;
mod producer;
mod proof;
mod proto_format;
mod proto_interop;
mod s3server;
mod smallfiles;
mod store;
mod store_safety;
mod transport;

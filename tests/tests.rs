//! The one integration-test binary: every module below is a group of tests; `support` holds the shared helpers
//! (processes with deadlines, trees, the binaries' command lines, the store servers and the fault proxy).

mod support;

mod clouds;
mod compression;
mod consumer;
mod crypt_interop;
mod directories;
mod downloads;
mod encryption;
mod faults;
mod fidelity;
mod operate;
mod pages;
mod producer;
mod proof;
mod proto_format;
mod proto_interop;
mod records;
mod s3server;
mod smallfiles;
mod store;
mod store_conformance;
mod store_safety;
mod transport;
mod wide;

/*!
The consumer: reads one xbstream from STDIN or N from named pipes and turns it back into files (`extract`), the way
`xbstream -x` does — but in parallel, never outside the target directory, and exiting 0 only when the producer's
manifest proves every file present and intact.

Modules: [`app`] (the driver: parse, validate, run, exit code) over [`cli`] (raw arguments) → [`config`] (validated
settings) → a module per command: [`extract`] (the wiring of an extraction), [`listing`] (`extract --list`, as `xbstream
-t`), [`put`], [`get`], [`catalog`] (`list` and `delete` of stored backups), [`verify`] (re-checking an extracted tree),
[`decompress`] (`.zst` files of an extracted tree back into originals), [`decrypt`] (`.age` files of an encrypted
backup's extracted tree back into originals, every one authenticated).

The stages of an extraction, each in a file of its own: `demux.rs` (one thread per stream: chunks to the writer that
owns their file), `decrypt_stage.rs` (`--decrypt`), `decompress_stage.rs` (`--decompress`), `writer.rs` (files
written at their offsets), `file_check.rs` (each file checked against its record), `wide.rs` (large chunks written by
whichever writer is free), `manifest_feed.rs` (the manifest parsed as it arrives, each record to its file's writer),
`spill.rs` (records that came far ahead of their files, kept in a temporary file), `proof.rs` (the closing phases,
shared with `--list` and `put`), and `dispatch.rs` (what travels between them). Below them: [`input`] (the opened streams), [`source`] (one stream as checked chunks, its start
marker taken off), [`batch`] (small chunks travelling together), [`target`] (safe file creation in a staging
directory, moved into place once proven), [`sparse`], [`coverage`] (which bytes of a file arrived). The object store's
side: [`storage`] (which store), [`layout`] (keys and the index), [`catalog`] (list, delete), [`check`] (a stored backup proven in place) and [`retention`]
(which backups `delete`'s rules let go), `pack.rs` (packs as put fills them), `put_seal.rs`
(a foreign stream encrypted on its way into the store), [`merge`] and [`sent_check`] (a stored backup sent back as a
stream, checked as it goes). How streams travel is the `transport` crate's.
*/

pub mod app;
pub mod batch;
pub mod catalog;
pub mod check;
pub mod claim;
pub mod cli;
pub mod config;
pub mod coverage;
pub mod decompress;
mod decompress_stage;
pub mod decrypt;
mod decrypt_stage;
mod demux;
mod dispatch;
pub mod extract;
mod file_check;
pub mod get;
pub mod input;
pub mod layout;
pub mod listing;
mod manifest_feed;
pub mod merge;
mod pack;
mod pack_download;
pub mod partial;
mod proof;
pub mod put;
mod put_seal;
pub mod retention;
pub mod sent_check;
pub mod source;
pub mod sparse;
mod spill;
pub mod storage;
pub mod target;
pub mod verify;
mod wide;
mod writer;

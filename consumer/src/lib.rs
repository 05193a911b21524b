/*!
The consumer: reads one xbstream from STDIN or N from named pipes and turns it back into files (`extract`), the way
`xbstream -x` does — but in parallel, never outside the target directory, and exiting 0 only when the producer's
manifest proves every file present and intact.

Modules: [`cli`] (raw arguments) → [`config`] (validated settings) → [`extract`] (threads, channels and the
proof), with [`input`] (STDIN or pipes), [`source`] (one stream as checked chunks, its start marker taken off), [`target`] (safe file creation in a staging directory, moved into place once proven), [`coverage`] (which
bytes of a file arrived), [`list`] (`--list`), [`verify`] (re-checking an extracted tree) and [`decompress`] (`.zst` files of an extracted
tree back into originals).
*/

pub mod batch;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod coverage;
pub mod decompress;
pub mod extract;
pub mod get;
pub mod input;
pub mod layout;
pub mod list;
pub mod merge;
pub mod put;
pub mod sent_check;
pub mod source;
pub mod sparse;
pub mod storage;
pub mod target;
pub mod verify;

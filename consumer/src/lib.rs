/*!
The consumer: reads one xbstream from STDIN or N from named pipes and turns it back into files (`extract`), the way
`xbstream -x` does — but in parallel, never outside the target directory, and exiting 0 only when the producer's
manifest proves every file present and intact.

Modules: [`cli`] (raw arguments) → [`config`] (validated settings) → [`extract`] (threads, channels and the
proof), with [`input`] (STDIN or pipes), [`target`] (safe file creation under partial names), [`coverage`] (which
bytes of a file arrived), [`list`] (`--list`) and [`verify`] (re-checking an extracted tree).
*/

pub mod cli;
pub mod config;
pub mod coverage;
pub mod extract;
pub mod input;
pub mod list;
pub mod target;
pub mod verify;

/*!
The xbstream wire format and everything both sides of a backup stream must agree on.

An xbstream is a bare sequence of `XBSTCK01` chunks ([`chunk`]): payload chunks (`P`) carry a slice of one file at
an offset, end-of-file chunks (`E`) close a file. There is no stream header and no trailer; a stream ends at a chunk
boundary. This crate writes exactly what Percona `xbstream`, MariaDB `mbstream` and `xbcloud` all accept (only `P`
and `E`), and reads strictly: anything else is a typed error naming the stream offset.

Modules, one concept each:
- [`chunk`]: the chunk layout, its constants and the header encoder.
- [`reader`]: an incremental chunk reader over any `Read`, bounded allocation, precise errors.
- [`writer`]: a chunk writer over any `Write` that emits each chunk as one contiguous write.
- [`path`]: the one path check every extracted name goes through.
- [`manifest`]: the JSON document the producer writes last, which lets a consumer prove completeness.
- [`marker`]: the small file that starts every stream of ours, so a consumer knows a manifest must follow.
- [`compressed`]: the layout of a compressed chunk (a skippable frame with its original offset, then a zstd frame).
- [`checksum`]: CRC-32 pieces that combine into a whole-file CRC without a second pass.
- [`fifo`]: the named-pipe transport (`<dir>/thread_<i>`), with open deadlines on both sides.
- [`idle`]: an idle deadline (and a cancel) on every read and write of a pipe, so a stalled peer cannot hang us.
- [`pool`] and [`cancel`]: the memory budget and the stop signal that both sides' pipelines are built on.
*/

pub mod cancel;
pub mod checksum;
pub mod chunk;
pub mod compressed;
pub mod fifo;
pub mod idle;
pub mod manifest;
pub mod marker;
pub mod path;
pub mod pool;
pub mod reader;
pub mod writer;

pub use checksum::CrcPiece;
pub use chunk::{ChunkHeader, ChunkKind, MAGIC, MAX_PATH_LEN};
pub use manifest::{Manifest, MANIFEST_NAME};
pub use path::{safe_relative_path, PathError};
pub use reader::{ChunkReader, PayloadBuffer, ReadError, DEFAULT_MAX_PAYLOAD};
pub use writer::{ChunkWriter, WriteError};

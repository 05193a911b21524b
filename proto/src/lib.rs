/*!
The xbstream wire format and everything both sides of a backup stream must agree on.

An xbstream is a bare sequence of `XBSTCK01` chunks ([`ChunkHeader`]): payload chunks (`P`) carry a slice of one file at
an offset, end-of-file chunks (`E`) close a file. There is no stream header and no trailer; a stream ends at a chunk
boundary. This crate writes exactly what Percona `xbstream`, MariaDB `mbstream` and `xbcloud` all accept (only `P`
and `E`), and reads strictly: anything else is a typed error naming the stream offset.

The modules are private; everything is used from the crate root. One concept each:
- `chunk`: the chunk layout, its constants and the header encoder ([`ChunkHeader`], [`ChunkKind`]);
- `reader`: an incremental chunk reader over any `Read`, bounded allocation, precise errors ([`ChunkReader`]);
- `writer`: a chunk writer over any `Write` that emits each chunk as one contiguous write ([`ChunkWriter`]);
- `path`: the one path check every extracted name goes through ([`safe_relative_path`]);
- `manifest`: the JSON document the producer writes last, which lets a consumer prove completeness
  ([`Manifest`], [`FileRecord`]);
- `marker`: the small file that starts every stream of ours, so a consumer knows a manifest must follow
  ([`StreamMarker`]);
- `compressed`: the layout of a compressed chunk: a skippable frame with its original offset, then a zstd frame
  ([`OriginalRange`]);
- `checksum`: CRC-32 pieces that combine into a whole-file CRC without a second pass ([`CrcPiece`]).

How streams travel (STDIO, named pipes, idle deadlines) is the `transport` crate's; the memory pool and the cancel
signal are `runtime`'s.
*/

mod checksum;
mod chunk;
mod compressed;
mod manifest;
mod marker;
mod path;
mod reader;
mod writer;

pub use checksum::CrcPiece;
pub use chunk::{
    encode_eof, encode_payload_header, encode_poison, encoded_header_len, encoded_len_at, ChunkHeader, ChunkKind,
    FLAG_IGNORABLE, MAGIC, MAX_HEADER_LEN, MAX_PATH_LEN, PAYLOAD_FIELDS_LEN, POISON_PATH, PREFIX_LEN,
};
pub use compressed::{
    encode_offset_frame, parse_offset_frame, strip_zstd_suffix, OriginalRange, OFFSET_FRAME_LEN, OFFSET_FRAME_MAGIC,
    ZSTD_SUFFIX,
};
pub use manifest::{
    Compression, Digest, DirectoryRecord, Encryption, FileRecord, Manifest, ManifestError, ManifestWriter, StoredForm,
    StreamRecord, StreamingError, WirePath, AGE_SUFFIX, MANIFEST_FORMAT, MANIFEST_FORMAT_OLDEST, MANIFEST_NAME,
    MAX_MANIFEST_PIECE, PLACEHOLDER_NAME, SECRET_MANIFEST_NAME, SHA1SUMS_NAME,
};
pub use marker::{
    is_marker_name, marker_name, new_backup_id, Binding as MarkerBinding, MarkerError, StreamMarker, MARKER_FORMAT,
    MARKER_PREFIX, MARKER_SUFFIX, MAX_MARKER_LEN,
};
pub use path::{checked_relative_path, safe_relative_path, wire_path, PathError};
pub use reader::{ChunkReader, PayloadBuffer, ReadError, DEFAULT_MAX_PAYLOAD};
pub use writer::{ChunkWriter, WholeFile, WriteError};

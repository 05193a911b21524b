/*!
The producer: backs up a directory tree as xbstream, the way `xtrabackup --stream` does, but with MySQL Enterprise
Backup's *horizontal* parallelism — every file is cut into chunks and the chunk, not the file, is the unit of work,
so one huge file keeps every read thread busy.

```text
scan ─► chunk jobs ─► read threads ─► process threads ─► per-file sequencer ─► stream writers ─► STDOUT | N pipes | dir
        (file, off,    (pread into a    (InnoDB pages,      (releases chunk k+1     (one per stream,
         len)           pool buffer)     CRC-32, later       after k; SHA-1, E)      whole chunks only)
                                         compression,
                                         encryption)
```

Memory is a fixed [`runtime::pool::BufferPool`] sized by `--memory-limit`; every channel is bounded and carries
buffer handles. The manifest is written last (on stream 0, after every other stream has finished).

Modules: [`app`] (the driver: parse, validate, run, exit code) over [`cli`] (raw arguments) → [`config`] (validated
settings) → [`pipeline`] (the wiring of a backup), with a file per stage: `scanner.rs` (the walk turned into read jobs,
files placed on streams), `read_stage.rs` (pread into pool buffers, `--throttle`), `process_stage.rs` (pages, CRC-32),
[`file`](mod@file) (per-file state and the in-order sequencer), [`compress`] (`--compress`: parallel zstd and the second
in-order step), [`encrypt`] (encryption: age segments sealed in parallel, and a third in-order step),
`router.rs` (chunks to streams, in scan order, counted), `output.rs` (the outputs and one writer thread
per stream, over [`sink`]), `documents.rs` (start markers; the manifest and the SHA-1 list, made as files complete) and `summary.rs`;
[`work`] holds what moves between the stages (jobs, what was read, the `BatchOutlet` batches go to; released chunks go
to `file::Outlet`). Beside them: [`scan`] (the source walk), [`validate`]
(`--validate-pages`: InnoDB page checks with re-reads) and [`stats`] (`--stats-json`). What the consumer shares (cancel,
pool, failure and panic policy, stop signals, progress, sizes) lives in `runtime`; how streams travel in `transport`.
*/

pub mod app;
pub mod cli;
pub mod compress;
pub mod config;
mod documents;
pub mod encrypt;
pub mod file;
mod output;
pub mod pipeline;
mod process_stage;
mod read_stage;
mod router;
pub mod scan;
mod scanner;
pub mod sink;
pub mod stats;
mod summary;
pub mod validate;
pub mod work;

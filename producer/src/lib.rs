/*!
The producer: backs up a directory tree as xbstream, the way `xtrabackup --stream` does, but with MySQL Enterprise
Backup's *horizontal* parallelism — every file is cut into chunks and the chunk, not the file, is the unit of work,
so one huge file keeps every read thread busy.

```text
scan ─► chunk jobs ─► read threads ─► process threads ─► per-file sequencer ─► stream writers ─► STDOUT | N pipes | dir
        (file, off,    (pread into a    (InnoDB pages,      (releases chunk k+1     (one per stream,
         len)           pool buffer)     CRC-32, later       after k; SHA-1, E)      whole chunks only)
                                         compression)
```

Memory is a fixed [`runtime::pool::BufferPool`] sized by `--memory-limit`; every channel is bounded and carries
buffer handles. The manifest is written last (on stream 0, after every other stream has finished).

Modules: [`cli`] (raw arguments) → [`config`] (validated settings) → [`pipeline`] (threads and channels), with
[`scan`] (the source walk), [`file`](mod@file) (per-file state and the in-order sequencer), [`compress`]
(`--compress`: parallel zstd and the second in-order step), [`sink`] (stream and directory
writers), [`validate`] (`--validate-pages`: InnoDB page checks with re-reads, on the process threads), [`stats`]
(`--stats-json`). What the consumer shares — failure and panic policy, stop signals, progress,
sizes, the pipe options — lives in the `runtime` crate.
*/

pub mod cli;
pub mod compress;
pub mod config;
mod documents;
pub mod file;
mod output;
pub mod pipeline;
mod process_stage;
mod read_stage;
pub mod records;
mod router;
pub mod scan;
mod scanner;
pub mod sink;
pub mod stats;
mod summary;
pub mod validate;

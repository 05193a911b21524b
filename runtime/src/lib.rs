/*!
What the producer and the consumer share, below both binaries (so that `consumer` never depends on `producer`):

- [`cancel`]: the stop signal every blocking wait of a pipeline listens to;
- [`pool`]: the memory budget, a fixed pool of equal buffers, the only home of chunk data;
- [`failure`]: the first real error of a multi-threaded run, and the one panic policy of its threads;
- [`signals`]: SIGINT, SIGTERM, SIGHUP and SIGPIPE end a run as a failure, with cleanup;
- [`progress`]: the progress bar or periodic lines, and [`progress::ProgressMode`];
- [`size`]: byte sizes on the command line and in messages;
- [`stats`]: what each stream carried, and peak memory, for `--stats-json`;
- [`limits`]: the open-file limit raised to what the system allows.

The format itself lives in `proto`; how streams travel (STDIO, pipes, idle deadlines) in `transport`.
*/

pub mod cancel;
pub mod failure;
pub mod limits;
pub mod pool;
pub mod progress;
pub mod signals;
pub mod size;
pub mod stats;

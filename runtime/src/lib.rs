/*!
What the producer and the consumer share, below both binaries (so that `consumer` never depends on `producer`):

- [`failure`]: the first real error of a multi-threaded run, and the one panic policy of its threads;
- [`signals`]: SIGINT, SIGTERM, SIGHUP and SIGPIPE end a run as a failure, with cleanup;
- [`progress`]: the progress bar or periodic lines, and [`progress::ProgressMode`];
- [`size`]: byte sizes on the command line and in messages;
- [`stats`]: what each stream carried, and peak memory, for `--stats-json`;
- [`args`]: the options both command lines take (the pipe transport, `--idle-timeout`);
- [`limits`]: the open-file limit raised to what the system allows.

The format itself, the pipe transport and the memory pool live in `proto`.
*/

pub mod args;
pub mod failure;
pub mod limits;
pub mod progress;
pub mod signals;
pub mod size;
pub mod stats;

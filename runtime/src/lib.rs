/*!
What the producer and the consumer share, below both binaries (so that `consumer` never depends on `producer`):

- [`budget`]: `--memory-limit` divided once into named parts;
- [`cancel`]: the stop signal every blocking wait of a pipeline listens to;
- [`pool`]: the memory budget, a fixed pool of equal buffers, the only home of chunk data;
- [`failure`]: the first real error of a multi-threaded run, the one panic policy of its threads, the one way a
  stage thread is started ([`failure::Failure::spawn_stage`]) and a run's outcome ([`failure::Failure::outcome`]);
- [`signals`]: SIGINT, SIGTERM, SIGHUP and SIGPIPE end a run as a failure, with cleanup ([`signals::Signals::run`]);
- [`progress`]: the progress bar or periodic lines, and [`progress::ProgressMode`];
- [`size`]: byte sizes on the command line and in messages;
- [`stats`]: what each stream carried, and peak memory, for `--stats-json`;
- [`limits`]: the open-file limit raised to what the system allows;
- [`machine`]: what the machine offers, for defaults that fit it (threads a core, the memory limit);
- [`lock`]: locks that outlive a panic (one method, not a closure at every call);
- [`reorder`]: the in-order sequencer, [`reorder::Reorder`].

The format itself lives in `proto`; how streams travel (STDIO, pipes, idle deadlines) in `transport`.
*/

pub mod budget;
pub mod cancel;
pub mod failure;
pub mod limits;
pub mod lock;
pub mod machine;
pub mod pool;
pub mod progress;
pub mod reorder;
pub mod signals;
pub mod size;
pub mod stats;

//! Progress on stderr: an indicatif bar when stderr is a terminal, plain periodic log lines with `--verbose`,
//! nothing otherwise. A thread samples shared counters, so the data path only does atomic adds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::size::human;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// An indicatif bar on stderr (stderr is a terminal).
    Bar,
    /// Plain log lines every few seconds (`--verbose`).
    Lines,
    /// Nothing.
    Quiet,
}

impl ProgressMode {
    /// What `-q` and `-v` ask for; otherwise a bar if one is `wanted` (the output is not itself the product) and
    /// stderr is a terminal, else nothing.
    pub fn choose(verbose: bool, quiet: bool, wanted: bool) -> ProgressMode {
        if quiet {
            ProgressMode::Quiet
        } else if verbose {
            ProgressMode::Lines
        } else if wanted && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            ProgressMode::Bar
        } else {
            ProgressMode::Quiet
        }
    }
}

/// Counters the pipeline bumps.
#[derive(Debug, Default)]
pub struct Counters {
    /// File bytes read so far.
    pub bytes_done: AtomicU64,
    /// Total bytes to copy (from the pre-scan).
    pub bytes_total: AtomicU64,
}

/// A running progress display; [`Progress::stop`] ends it.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts the display for `mode`.
    pub fn start(mode: ProgressMode, counters: Arc<Counters>, label: &'static str) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = match mode {
            ProgressMode::Quiet => None,
            ProgressMode::Bar => {
                let stop = Arc::clone(&stop);
                Some(std::thread::spawn(move || {
                    let total = counters.bytes_total.load(Ordering::Relaxed);
                    let bar = indicatif::ProgressBar::new(total);
                    // Without a known total (the consumer cannot know one), show bytes and rate only.
                    let template = if total > 0 {
                        "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
                    } else {
                        "{prefix} [{elapsed_precise}] {spinner} {bytes} {bytes_per_sec}"
                    };
                    bar.set_style(indicatif::ProgressStyle::with_template(template).expect("valid template"));
                    bar.set_prefix(label);
                    while !stop.load(Ordering::Relaxed) {
                        if total > 0 {
                            bar.set_length(counters.bytes_total.load(Ordering::Relaxed));
                        }
                        bar.set_position(counters.bytes_done.load(Ordering::Relaxed));
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    bar.finish_and_clear();
                }))
            }
            ProgressMode::Lines => {
                let stop = Arc::clone(&stop);
                Some(std::thread::spawn(move || {
                    let started = Instant::now();
                    let mut last = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                        if last.elapsed() >= Duration::from_secs(5) {
                            last = Instant::now();
                            let done = counters.bytes_done.load(Ordering::Relaxed);
                            let total = counters.bytes_total.load(Ordering::Relaxed);
                            let rate = done as f64 / started.elapsed().as_secs_f64() / 1e6;
                            // Without a known total (the consumer cannot know one), bytes and rate only.
                            if total == 0 {
                                log::info!("{label}: {}, {rate:.0} MB/s", human(done));
                            } else {
                                log::info!(
                                    "{label}: {} of {} ({:.1}%), {rate:.0} MB/s",
                                    human(done),
                                    human(total),
                                    done as f64 * 100.0 / total as f64
                                );
                            }
                        }
                    }
                }))
            }
        };
        Progress { stop, thread }
    }

    /// Stops and clears the display.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

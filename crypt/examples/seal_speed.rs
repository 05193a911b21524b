//! How fast a backup's files are sealed and opened: `cargo run --release -p crypt --example seal_speed -- MB
//! THREADS` seals MB of data as chunks of 2 MiB on THREADS threads (each chunk its own runs of 64 KiB segments, as
//! the producer's process threads will), then opens them the same way, and prints MB/s for each. Run by
//! `scripts/bench/bench-crypt.sh`, beside the stock `age` on the same data.

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let megabytes: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1024);
    let threads: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2);
    let chunk = 2usize << 20;
    let chunks = megabytes / 2;
    let recipient = age::x25519::Identity::generate().to_public();
    let key = crypt::BackupKey::new(&[&recipient]).expect("a backup key");
    let cipher = key.new_file();
    let plaintext: Vec<u8> = (0..chunk).map(|i| (i * 7 % 251) as u8).collect();

    let started = Instant::now();
    let sealed: Vec<Vec<Vec<u8>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let (cipher, plaintext) = (&cipher, &plaintext);
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for index in (thread..chunks).step_by(threads) {
                        let mut sealed = Vec::with_capacity(chunk + chunk / 4096);
                        let offset = (index * chunk) as u64;
                        cipher.seal(offset, plaintext, index + 1 == chunks, &mut sealed).expect("seal");
                        out.push(sealed);
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a sealing thread")).collect()
    });
    let seal_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    std::thread::scope(|scope| {
        for (thread, pieces) in sealed.iter().enumerate() {
            let cipher = &cipher;
            scope.spawn(move || {
                let mut out = Vec::with_capacity(chunk);
                for (k, piece) in pieces.iter().enumerate() {
                    let index = thread + k * threads;
                    out.clear();
                    cipher.open((index * chunk) as u64, piece, index + 1 == chunks, &mut out).expect("open");
                }
            });
        }
    });
    let open_seconds = started.elapsed().as_secs_f64();
    let bytes = (chunks * chunk) as f64;
    println!(
        "{megabytes} MB, {threads} thread(s): seal {:.0} MB/s, open {:.0} MB/s",
        bytes / seal_seconds / 1e6,
        bytes / open_seconds / 1e6
    );
}

//! `consumer extract` of arbitrary bytes into a temporary directory: success or an error, never a panic, and never
//! a file outside the target directory.
#![no_main]

use consumer::config::ExtractConfig;
use consumer::input::InputStream;
use libfuzzer_sys::fuzz_target;
use runtime::cancel::Cancel;
use runtime::progress::ProgressMode;
use runtime::signals::Signals;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let target = dir.path().join("out");
    let config = ExtractConfig {
        input: transport::Endpoint::Stdio,
        target: target.clone(),
        idle_timeout: None,
        writers: 2,
        buffers: 8,
        ended_files_memory: 8 << 20,
        manifest_limit: 64 << 20,
        buffer_size: 1 << 20,
        overwrite: false,
        fsync: false,
        fadvise: false,
        require_manifest: false,
        stream_sha1: false,
        decompress: false,
        decompress_threads: 1,
        decrypt: None,
        decrypt_threads: 2,
        stats_json: None,
        progress: ProgressMode::Quiet,
        selection: None,
    };
    let input = InputStream { name: "fuzz".into(), file: Box::new(std::io::Cursor::new(data.to_vec())) };
    let _ = consumer::extract::extract(&config, vec![input], &Signals::none(), &Cancel::new());
    // Nothing beside OUT in the temporary directory.
    for entry in std::fs::read_dir(dir.path()).expect("list the temporary directory") {
        let name = entry.expect("an entry").file_name();
        assert_eq!(name, "out", "extract wrote {name:?} outside its target");
    }
});

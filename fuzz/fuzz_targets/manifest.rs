//! The manifest parser on arbitrary bytes: a manifest or an error, never a panic; whatever parses writes back to
//! JSON that parses to the same manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::from_json(data) {
        let again = Manifest::from_json(&manifest.to_json()).expect("our own JSON parses");
        assert_eq!(format!("{manifest:?}"), format!("{again:?}"));
    }
});

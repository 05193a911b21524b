//! The chunk reader on arbitrary bytes: every chunk or a clean error, never a panic, an allocation beyond the
//! declared limit, or a position that disagrees with what was consumed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::ChunkReader;

fuzz_target!(|data: &[u8]| {
    let mut reader = ChunkReader::new(data).with_max_payload(1 << 20);
    let mut payload = Vec::new();
    let mut last = 0;
    while let Ok(Some(header)) = reader.read_chunk(&mut payload) {
        assert!(reader.position() > last, "a chunk that consumed nothing");
        assert!(reader.position() as usize <= data.len());
        assert_eq!(payload.len() as u64, header.payload_len);
        last = reader.position();
    }
});

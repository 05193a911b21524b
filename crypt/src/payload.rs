//! One file's payload: a 16-byte nonce, then 64 KiB segments sealed with ChaCha20-Poly1305 (age's STREAM: an
//! 11-byte big-endian counter and a last-segment flag as the AEAD nonce), under a key derived from the backup's
//! file key and this file's nonce.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use zeroize::Zeroizing;

use crate::CryptError;

/// Plaintext bytes per segment (age's chunk size).
pub const SEGMENT: u64 = 64 << 10;
/// The Poly1305 tag each segment carries.
pub const TAG_LEN: u64 = 16;
/// The payload nonce that starts every file's payload.
pub const NONCE_LEN: usize = 16;

/// Where the segment holding plaintext offset `offset` (a multiple of [`SEGMENT`]) starts in a `.age` file whose
/// header is `header_len` bytes.
pub fn ciphertext_offset(header_len: u64, offset: u64) -> u64 {
    header_len + NONCE_LEN as u64 + offset / SEGMENT * (SEGMENT + TAG_LEN)
}

/// How many bytes `plaintext_len` bytes of a file take sealed: each started segment gains a tag (no bytes still
/// take one empty segment).
pub fn sealed_len(plaintext_len: u64) -> u64 {
    plaintext_len + plaintext_len.div_ceil(SEGMENT).max(1) * TAG_LEN
}

/// The size of the `.age` file of `plaintext_len` bytes (an empty file still has one, empty, final segment).
pub fn ciphertext_len(header_len: u64, plaintext_len: u64) -> u64 {
    header_len + NONCE_LEN as u64 + sealed_len(plaintext_len)
}

/// One file's payload key and nonce: seals and opens runs of segments, from any thread, in any order.
pub struct FileCipher {
    cipher: ChaCha20Poly1305,
    nonce: [u8; NONCE_LEN],
    header_len: u64,
}

impl FileCipher {
    pub(crate) fn new(file_key: &[u8], nonce: [u8; NONCE_LEN], header_len: u64) -> FileCipher {
        let key = Zeroizing::new(age_core::primitives::hkdf(&nonce, b"payload", file_key));
        FileCipher { cipher: ChaCha20Poly1305::new(Key::from_slice(&key[..])), nonce, header_len }
    }

    /// The bytes that follow the header: the payload nonce.
    pub fn nonce(&self) -> &[u8; NONCE_LEN] {
        &self.nonce
    }

    /// Where plaintext offset `offset` (a segment boundary) lands in this file's `.age` form.
    pub fn ciphertext_offset(&self, offset: u64) -> u64 {
        ciphertext_offset(self.header_len, offset)
    }

    /// Seals `plaintext`, the file's bytes from `offset` (a multiple of [`SEGMENT`]), appending the sealed segments
    /// to `out`. Unless `last`, `plaintext` must be whole segments; with `last`, its final segment (possibly short,
    /// or empty for an empty file) is flagged as the file's end.
    pub fn seal(&self, offset: u64, plaintext: &[u8], last: bool, out: &mut Vec<u8>) -> Result<(), CryptError> {
        if offset % SEGMENT != 0 {
            return Err(CryptError::Misaligned(format!("offset {offset} is not a multiple of {SEGMENT}")));
        }
        if !last && (plaintext.is_empty() || plaintext.len() as u64 % SEGMENT != 0) {
            return Err(CryptError::Misaligned(format!(
                "{} bytes at offset {offset}: only the last run may end inside a segment",
                plaintext.len()
            )));
        }
        let mut segments: Vec<&[u8]> = plaintext.chunks(SEGMENT as usize).collect();
        if segments.is_empty() {
            segments.push(&[]);
        }
        let count = segments.len();
        let first = offset / SEGMENT;
        for (index, segment) in segments.into_iter().enumerate() {
            let counter = first + index as u64;
            // The counter, 11 bytes big-endian (the top three bytes are zero: no file has 2^64 segments).
            let nonce = segment_nonce(counter, last && index + 1 == count);
            let start = out.len();
            out.extend_from_slice(segment);
            let tag = self
                .cipher
                .encrypt_in_place_detached(&nonce, &[], &mut out[start..])
                .expect("ChaCha20-Poly1305 seals any segment of 64 KiB");
            out.extend_from_slice(&tag);
        }
        Ok(())
    }
}

impl FileCipher {
    /// Seals in place, for a stage that owns one fixed buffer per chunk: `buffer[..len]` holds the file's bytes
    /// from `offset` (a multiple of [`SEGMENT`]; whole segments unless `last`, as for [`FileCipher::seal`]), and
    /// the sealed segments are written from `buffer[lead]` on, leaving `lead` bytes in front for the caller (the
    /// header and nonce, before a file's first segment). Returns where the sealed bytes end. `buffer` must hold
    /// [`sealed_len`]`(len) + lead` bytes.
    pub fn seal_in_place(
        &self,
        offset: u64,
        buffer: &mut [u8],
        len: usize,
        last: bool,
        lead: usize,
    ) -> Result<usize, CryptError> {
        if offset % SEGMENT != 0 {
            return Err(CryptError::Misaligned(format!("offset {offset} is not a multiple of {SEGMENT}")));
        }
        if !last && (len == 0 || len as u64 % SEGMENT != 0) {
            return Err(CryptError::Misaligned(format!(
                "{len} bytes at offset {offset}: only the last run may end inside a segment"
            )));
        }
        let end = lead + sealed_len(len as u64) as usize;
        if buffer.len() < end {
            return Err(CryptError::Misaligned(format!(
                "a buffer of {} bytes cannot hold {len} bytes sealed after {lead}",
                buffer.len()
            )));
        }
        let segment = SEGMENT as usize;
        let count = len.div_ceil(segment).max(1);
        // Last segment first: each moves right (to make room for the tags before it), never over a segment not
        // yet moved, since segment i lands at or after its own start.
        for index in (0..count).rev() {
            let from = index * segment;
            let size = segment.min(len - from);
            let to = lead + index * (segment + TAG_LEN as usize);
            buffer.copy_within(from..from + size, to);
            let nonce = segment_nonce(offset / SEGMENT + index as u64, last && index + 1 == count);
            let tag = self
                .cipher
                .encrypt_in_place_detached(&nonce, &[], &mut buffer[to..to + size])
                .expect("ChaCha20-Poly1305 seals any segment of 64 KiB");
            buffer[to + size..to + size + TAG_LEN as usize].copy_from_slice(&tag);
        }
        Ok(end)
    }

    /// Opens `sealed`, the file's sealed segments from plaintext offset `offset` (a multiple of [`SEGMENT`]),
    /// appending the plaintext to `out`. Unless `last`, `sealed` must be whole sealed segments; with `last`, its
    /// final segment must carry the end flag (a file cut short, or a segment from the middle, fails). Any change,
    /// reordering, or a segment of another file fails, naming the offset.
    pub fn open(&self, offset: u64, sealed: &[u8], last: bool, out: &mut Vec<u8>) -> Result<(), CryptError> {
        let whole = (SEGMENT + TAG_LEN) as usize;
        if offset % SEGMENT != 0 || (!last && (sealed.is_empty() || sealed.len() % whole != 0)) {
            return Err(CryptError::Misaligned(format!("{} sealed bytes at offset {offset}", sealed.len())));
        }
        let segments: Vec<&[u8]> = sealed.chunks(whole).collect();
        let count = segments.len();
        for (index, segment) in segments.into_iter().enumerate() {
            let at = offset + index as u64 * SEGMENT;
            if segment.len() < TAG_LEN as usize {
                return Err(CryptError::Segment { offset: at });
            }
            let final_segment = last && index + 1 == count;
            let (data, tag) = segment.split_at(segment.len() - TAG_LEN as usize);
            // An empty final segment is allowed only as the whole of an empty file (age's rule).
            if data.is_empty() && !(final_segment && at == 0) {
                return Err(CryptError::Segment { offset: at });
            }
            let start = out.len();
            out.extend_from_slice(data);
            self.cipher
                .decrypt_in_place_detached(
                    &segment_nonce(at / SEGMENT, final_segment),
                    &[],
                    &mut out[start..],
                    tag.into(),
                )
                .map_err(|_| {
                    out.truncate(start);
                    CryptError::Segment { offset: at }
                })?;
        }
        Ok(())
    }
}

impl FileCipher {
    /// Opens in place, for a stage that owns one buffer per chunk and does not know whether the chunk is its file's
    /// last: `sealed` holds sealed segments from plaintext offset `offset` (a multiple of [`SEGMENT`]), all whole
    /// but perhaps the final one. Each segment is authenticated and decrypted where it lies and its plaintext moved
    /// to the front. Returns the plaintext length and whether the final segment is flagged as the file's last: a
    /// short one must be; a whole one is tried as a middle segment first, then as the last (a tag verifies under
    /// one flag only). A segment that fails both, or an empty one anywhere but as a whole empty file, fails
    /// naming its offset; on failure `sealed` is left partly decrypted.
    pub fn open_in_place(&self, offset: u64, sealed: &mut [u8]) -> Result<(usize, bool), CryptError> {
        if offset % SEGMENT != 0 {
            return Err(CryptError::Misaligned(format!("offset {offset} is not a multiple of {SEGMENT}")));
        }
        if sealed.is_empty() {
            return Err(CryptError::Segment { offset });
        }
        let whole = (SEGMENT + TAG_LEN) as usize;
        let count = sealed.len().div_ceil(whole);
        let (mut plain, mut last_found) = (0, false);
        for index in 0..count {
            let start = index * whole;
            let end = (start + whole).min(sealed.len());
            let at = offset + index as u64 * SEGMENT;
            let data_len = (end - start).checked_sub(TAG_LEN as usize).ok_or(CryptError::Segment { offset: at })?;
            let final_in_run = index + 1 == count;
            if data_len == 0 && !(final_in_run && at == 0) {
                return Err(CryptError::Segment { offset: at });
            }
            let tag: [u8; TAG_LEN as usize] = sealed[start + data_len..end].try_into().expect("a tag's length");
            let flags: &[bool] = match (final_in_run, end - start < whole) {
                (false, _) => &[false],
                (true, true) => &[true],
                (true, false) => &[false, true],
            };
            // The tag is checked before a byte is decrypted: a failed try leaves the segment as it was.
            let last = flags
                .iter()
                .copied()
                .find(|&last| {
                    self.cipher
                        .decrypt_in_place_detached(
                            &segment_nonce(at / SEGMENT, last),
                            &[],
                            &mut sealed[start..start + data_len],
                            (&tag).into(),
                        )
                        .is_ok()
                })
                .ok_or(CryptError::Segment { offset: at })?;
            sealed.copy_within(start..start + data_len, plain);
            plain += data_len;
            last_found = last;
        }
        Ok((plain, last_found))
    }
}

/// The AEAD nonce of segment `counter`: the counter as 11 bytes big-endian, then the last-segment flag.
fn segment_nonce(counter: u64, last: bool) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[3..11].copy_from_slice(&counter.to_be_bytes());
    nonce[11] = u8::from(last);
    *Nonce::from_slice(&nonce)
}

impl std::fmt::Debug for FileCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCipher").field("header_len", &self.header_len).finish_non_exhaustive()
    }
}

/// One file sealed front to back from pieces of any size, for a stream that was not cut on segment boundaries (a
/// foreign stream encrypted on its way to storage): whole segments are sealed as soon as a later byte shows that
/// none of them is the file's last; the rest waits for more bytes, or for the end. The `.age` file comes out in
/// order: the header and nonce in front of the first sealed bytes.
pub struct SequentialSealer {
    cipher: FileCipher,
    header: Vec<u8>,
    /// Bytes not sealed yet: at most one segment once a piece has been taken.
    carry: Vec<u8>,
    /// Plaintext offset of `carry`'s first byte.
    offset: u64,
    started: bool,
}

impl SequentialSealer {
    /// A sealer for one more file of the backup `key` (a fresh nonce).
    pub fn new(key: &crate::BackupKey) -> SequentialSealer {
        SequentialSealer {
            cipher: key.new_file(),
            header: key.header().to_vec(),
            carry: Vec::new(),
            offset: 0,
            started: false,
        }
    }

    /// The file's payload nonce.
    pub fn nonce(&self) -> &[u8; NONCE_LEN] {
        self.cipher.nonce()
    }

    /// Takes the file's next `bytes`; appends to `out` whatever can be sealed now.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), CryptError> {
        self.carry.extend_from_slice(bytes);
        // Keep the final segment back (a whole one too: it may be the last).
        let keep = match self.carry.len() % SEGMENT as usize {
            0 => (SEGMENT as usize).min(self.carry.len()),
            partial => partial,
        };
        let ready = self.carry.len() - keep;
        if ready > 0 {
            self.seal(ready, false, out)?;
        }
        Ok(())
    }

    /// The end of the file: seals what is left as its last segment.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), CryptError> {
        self.seal(self.carry.len(), true, out)
    }

    fn seal(&mut self, len: usize, last: bool, out: &mut Vec<u8>) -> Result<(), CryptError> {
        if !std::mem::replace(&mut self.started, true) {
            out.extend_from_slice(&self.header);
            out.extend_from_slice(self.cipher.nonce());
        }
        self.cipher.seal(self.offset, &self.carry[..len], last, out)?;
        self.offset += len as u64;
        self.carry.drain(..len);
        Ok(())
    }
}

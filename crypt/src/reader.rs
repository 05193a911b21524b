//! One `.age` file of a backup read back as its plaintext, front to back: the header checked to be the backup's,
//! the nonce checked to be the one the encrypted manifest binds to the file's path, every segment authenticated
//! before a byte of it is handed out, and the file's end authenticated too (a file cut at a segment boundary has no
//! segment flagged last, and fails).

use std::io::{self, Read};

use crate::{BackupKey, CryptError, FileCipher, NONCE_LEN, SEGMENT, TAG_LEN};

/// The plaintext of one file of a backup, read from its `.age` form.
pub struct FileReader<R> {
    inner: R,
    cipher: FileCipher,
    /// The sealed segment read ahead (to learn whether the one before it is the last).
    ahead: Vec<u8>,
    /// The plaintext of the current segment, and how much of it was handed out.
    plain: Vec<u8>,
    handed: usize,
    /// Plaintext offset of the next segment to open.
    offset: u64,
    done: bool,
}

impl<R: Read> FileReader<R> {
    /// Reads and checks the start of `inner`: it must begin with `key`'s header (the file belongs to this backup)
    /// and, when given, the payload nonce `nonce` (the file is the one the manifest names).
    pub fn new(key: &BackupKey, mut inner: R, nonce: Option<&[u8; NONCE_LEN]>) -> Result<FileReader<R>, CryptError> {
        let mut start = vec![0u8; key.header().len() + NONCE_LEN];
        inner.read_exact(&mut start).map_err(|e| CryptError::Header(format!("its header and nonce: {e}")))?;
        if &start[..key.header().len()] != key.header() {
            return Err(CryptError::Header("its header is not this backup's (another key, or another backup)".into()));
        }
        let found: [u8; NONCE_LEN] = start[key.header().len()..].try_into().expect("NONCE_LEN bytes");
        if nonce.is_some_and(|nonce| *nonce != found) {
            return Err(CryptError::Header(
                "its nonce is not the one the manifest gives this path (a file swapped for another)".into(),
            ));
        }
        let mut reader = FileReader {
            inner,
            cipher: key.file(found),
            ahead: Vec::new(),
            plain: Vec::new(),
            handed: 0,
            offset: 0,
            done: false,
        };
        reader.ahead = reader.read_sealed().map_err(|e| CryptError::Header(e.to_string()))?;
        Ok(reader)
    }

    /// Reads up to one sealed segment (fewer bytes only at the end of the file).
    fn read_sealed(&mut self) -> io::Result<Vec<u8>> {
        let mut sealed = Vec::with_capacity((SEGMENT + TAG_LEN) as usize);
        (&mut self.inner).take(SEGMENT + TAG_LEN).read_to_end(&mut sealed)?;
        Ok(sealed)
    }

    /// Opens the next segment into `plain`; `false` at the end of the file.
    fn next_segment(&mut self) -> io::Result<bool> {
        if self.done {
            return Ok(false);
        }
        let current = std::mem::take(&mut self.ahead);
        if current.is_empty() {
            // Not even the final segment every age file has: cut short.
            return Err(io::Error::other(CryptError::Segment { offset: self.offset }));
        }
        // A segment is the last when nothing follows it; a file with no segment at all is cut short.
        self.ahead = if current.len() == (SEGMENT + TAG_LEN) as usize { self.read_sealed()? } else { Vec::new() };
        let last = self.ahead.is_empty();
        self.plain.clear();
        self.handed = 0;
        self.cipher.open(self.offset, &current, last, &mut self.plain).map_err(io::Error::other)?;
        self.offset += SEGMENT;
        self.done = last;
        Ok(true)
    }
}

impl<R: Read> Read for FileReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.handed == self.plain.len() {
            if !self.next_segment()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.plain.len() - self.handed);
        buf[..n].copy_from_slice(&self.plain[self.handed..self.handed + n]);
        self.handed += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(key: &BackupKey, plaintext: &[u8]) -> (Vec<u8>, [u8; NONCE_LEN]) {
        let cipher = key.new_file();
        let mut file = key.header().to_vec();
        file.extend_from_slice(cipher.nonce());
        cipher.seal(0, plaintext, true, &mut file).unwrap();
        (file, *cipher.nonce())
    }

    fn read_all(key: &BackupKey, file: &[u8], nonce: Option<&[u8; NONCE_LEN]>) -> io::Result<Vec<u8>> {
        let mut reader = FileReader::new(key, file, nonce).map_err(io::Error::other)?;
        let mut out = Vec::new();
        reader.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn a_file_reads_back_whole_and_every_cut_swap_or_change_fails() {
        let recipient = age::x25519::Identity::generate().to_public();
        let key = BackupKey::new(&[&recipient]).unwrap();
        for size in [0usize, 1, SEGMENT as usize, SEGMENT as usize + 1, 3 * SEGMENT as usize] {
            let plaintext: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
            let (file, nonce) = sealed(&key, &plaintext);
            assert_eq!(read_all(&key, &file, Some(&nonce)).unwrap(), plaintext, "{size}");
            let header = key.header().len() + NONCE_LEN;
            // Cut at a segment boundary (the end is not flagged), or inside one.
            for cut in [header, header + (SEGMENT + TAG_LEN) as usize, file.len() - 1] {
                if cut < file.len() {
                    assert!(read_all(&key, &file[..cut], Some(&nonce)).is_err(), "{size} cut at {cut}");
                }
            }
            let mut changed = file.clone();
            *changed.last_mut().unwrap() ^= 1;
            assert!(read_all(&key, &changed, Some(&nonce)).is_err(), "{size} changed");
            assert!(read_all(&key, &file, Some(&[0; NONCE_LEN])).is_err(), "{size}: another file's nonce");
        }
        let other = BackupKey::new(&[&recipient]).unwrap();
        let (file, nonce) = sealed(&other, b"from another backup");
        assert!(read_all(&key, &file, Some(&nonce)).is_err(), "another backup's header");
    }
}

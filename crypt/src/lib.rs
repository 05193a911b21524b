/*!
age-compatible encryption of a backup's files, in parallel.

Every file of an encrypted backup travels as `<path>.age`, a valid age v1 file that stock `age -d -i KEY` decrypts
on its own. What makes it fast is that the files of one backup share one age header: one random file key, wrapped
once per recipient (one X25519 agreement, or one scrypt, per backup rather than per file), and a fresh random
16-byte nonce at the start of each file's payload, from which (HKDF-SHA-256, as age specifies) each file gets its
own payload key. A file's payload is a sequence of 64 KiB segments, each sealed with ChaCha20-Poly1305 under its
own counter, the last one flagged: a chunk that starts on a segment boundary is sealed alone, by any thread, in any
order, and lands at an offset computed from its plaintext offset ([`ciphertext_offset`]).

- [`BackupKey`]: the file key and the header, made once per backup ([`BackupKey::new`]), or recovered from a
  header with an identity, once per backup ([`BackupKey::unwrap`]).
- [`FileCipher`]: one file's payload key and nonce; seals and opens runs of segments ([`FileCipher::seal`],
  [`FileCipher::open`]).
- [`args`]: the command-line options that ask for encryption.
- [`FileReader`]: one file read back as plaintext, front to back, its header, nonce and end checked.
- [`keys`]: recipients, identity files and passphrase files as an operator hands them over.

The construction, and why sharing the header is sound, is in `docs/security.md`.
*/

pub mod args;
mod header;
pub mod keys;
mod payload;
mod reader;

pub use header::BackupKey;
pub use payload::{
    ciphertext_len, ciphertext_offset, sealed_len, FileCipher, SequentialSealer, NONCE_LEN, SEGMENT, TAG_LEN,
};
pub use reader::FileReader;

/// Why a backup cannot be encrypted or decrypted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptError {
    /// A recipient, identity or passphrase that cannot be read or parsed (the message names the file and line).
    #[error("{0}")]
    Key(String),
    /// No recipient and no passphrase: nothing to encrypt to.
    #[error("no recipient to encrypt to")]
    NoRecipients,
    /// A recipient refused to wrap the file key (age's own error).
    #[error("cannot encrypt to a recipient: {0}")]
    Wrap(String),
    /// A run of segments that does not start on a segment boundary, or a non-final run that is not whole segments.
    #[error("{0}")]
    Misaligned(String),
    /// Not an age v1 header, or a damaged one.
    #[error("not an age file of ours: {0}")]
    Header(String),
    /// None of the identities given unwraps the backup's file key.
    #[error("no identity given can decrypt this backup (it was encrypted to other keys, or with a passphrase)")]
    NoIdentity,
    /// An identity failed on the header's stanza (a wrong passphrase, a damaged stanza).
    #[error("cannot decrypt the backup's key: {0}")]
    Unwrap(String),
    /// The header's MAC does not match: it was changed, or made without the key.
    #[error("the age header's MAC does not match: it was changed")]
    HeaderMac,
    /// A segment that does not authenticate: changed, reordered, truncated, or from another file.
    #[error("the segment at plaintext offset {offset} does not authenticate (changed, moved, or cut short)")]
    Segment {
        /// Where the segment's plaintext starts in the file.
        offset: u64,
    },
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use age::secrecy::SecretString;

    use super::*;

    /// The `.age` file of `plaintext`, sealed in runs of `run` bytes taken in reverse order (as parallel threads
    /// may finish them) and placed at their computed offsets.
    fn sealed_file(key: &BackupKey, plaintext: &[u8], run: usize) -> Vec<u8> {
        let sealer = key.new_file();
        let mut file = vec![0u8; ciphertext_len(key.header().len() as u64, plaintext.len() as u64) as usize];
        file[..key.header().len()].copy_from_slice(key.header());
        file[key.header().len()..key.header().len() + NONCE_LEN].copy_from_slice(sealer.nonce());
        let runs: Vec<(usize, &[u8])> = if plaintext.is_empty() {
            vec![(0, &[][..])]
        } else {
            plaintext.chunks(run).enumerate().map(|(i, piece)| (i * run, piece)).collect()
        };
        let last = runs.len() - 1;
        for (index, (offset, piece)) in runs.into_iter().enumerate().rev() {
            let mut sealed = Vec::new();
            sealer.seal(offset as u64, piece, index == last, &mut sealed).unwrap();
            let at = sealer.ciphertext_offset(offset as u64) as usize;
            file[at..at + sealed.len()].copy_from_slice(&sealed);
        }
        file
    }

    fn decrypt(file: &[u8], identity: &dyn age::Identity) -> Result<Vec<u8>, String> {
        let decryptor = age::Decryptor::new(file).map_err(|e| e.to_string())?;
        let mut reader = decryptor.decrypt(std::iter::once(identity)).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        reader.read_to_end(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn files_sealed_in_runs_out_of_order_decrypt_with_age_and_share_one_header() {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public();
        let key = BackupKey::new(&[&recipient]).unwrap();
        let sizes = [0, 1, 65_535, 65_536, 65_537, 3 * 65_536, 300_000];
        let mut nonces = std::collections::HashSet::new();
        for (i, size) in sizes.into_iter().enumerate() {
            let plaintext = bytes(size, i as u8);
            let file = sealed_file(&key, &plaintext, 2 * SEGMENT as usize);
            assert!(file.starts_with(key.header()), "one header for every file");
            assert!(nonces.insert(file[key.header().len()..key.header().len() + NONCE_LEN].to_vec()));
            assert_eq!(decrypt(&file, &identity).unwrap(), plaintext, "{size} bytes");
        }
    }

    #[test]
    fn either_of_two_recipients_decrypts_and_a_passphrase_works_alone() {
        let (a, b) = (age::x25519::Identity::generate(), age::x25519::Identity::generate());
        let (ra, rb) = (a.to_public(), b.to_public());
        let key = BackupKey::new(&[&ra, &rb]).unwrap();
        let plaintext = bytes(200_000, 7);
        let file = sealed_file(&key, &plaintext, SEGMENT as usize);
        assert_eq!(decrypt(&file, &a).unwrap(), plaintext);
        assert_eq!(decrypt(&file, &b).unwrap(), plaintext);
        assert!(decrypt(&file, &age::x25519::Identity::generate()).is_err(), "a stranger's key");

        let mut passphrase = age::scrypt::Recipient::new(SecretString::from("correct horse".to_string()));
        passphrase.set_work_factor(10);
        let key = BackupKey::new(&[&passphrase]).unwrap();
        let file = sealed_file(&key, &plaintext, 3 * SEGMENT as usize);
        let identity = age::scrypt::Identity::new(SecretString::from("correct horse".to_string()));
        assert_eq!(decrypt(&file, &identity).unwrap(), plaintext);
        assert!(BackupKey::new(&[&passphrase, &ra]).is_err(), "age allows a passphrase only alone");
        assert!(matches!(BackupKey::new(&[]), Err(CryptError::NoRecipients)));
    }

    #[test]
    fn any_change_to_a_sealed_file_fails_its_decryption() {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public();
        let key = BackupKey::new(&[&recipient]).unwrap();
        let plaintext = bytes(3 * SEGMENT as usize + 10, 3);
        let file = sealed_file(&key, &plaintext, SEGMENT as usize);
        let header = key.header().len();
        for at in [10, header + 3, header + NONCE_LEN + 5, file.len() - 1] {
            let mut changed = file.clone();
            changed[at] ^= 1;
            assert!(decrypt(&changed, &identity).is_err(), "a flipped byte at {at}");
        }
        // A dropped final segment: the new end is not flagged as the last.
        let cut = sealed_file(&key, &plaintext, SEGMENT as usize);
        assert!(decrypt(&cut[..sealed_len_of(header, 3 * SEGMENT)], &identity).is_err(), "truncated");
        // Two segments swapped.
        let mut swapped = file.clone();
        let (s0, s1) =
            (ciphertext_offset(header as u64, 0) as usize, ciphertext_offset(header as u64, SEGMENT) as usize);
        let len = (SEGMENT + TAG_LEN) as usize;
        let first = swapped[s0..s0 + len].to_vec();
        swapped.copy_within(s1..s1 + len, s0);
        swapped[s1..s1 + len].copy_from_slice(&first);
        assert!(decrypt(&swapped, &identity).is_err(), "reordered");
    }

    fn sealed_len_of(header: usize, plaintext: u64) -> usize {
        ciphertext_offset(header as u64, plaintext) as usize
    }

    /// Opens a whole `.age` file with `key`, in runs of `run` segments, first run last.
    fn open_file(key: &BackupKey, file: &[u8], run: usize) -> Result<Vec<u8>, CryptError> {
        let header = key.header().len();
        let nonce: [u8; NONCE_LEN] = file[header..header + NONCE_LEN].try_into().unwrap();
        let cipher = key.file(nonce);
        let sealed = &file[header + NONCE_LEN..];
        let whole = run * (SEGMENT + TAG_LEN) as usize;
        let runs: Vec<&[u8]> = sealed.chunks(whole).collect();
        let mut pieces = vec![Vec::new(); runs.len()];
        for (index, piece) in runs.iter().enumerate().rev() {
            cipher.open((index * run) as u64 * SEGMENT, piece, index + 1 == runs.len(), &mut pieces[index])?;
        }
        Ok(pieces.concat())
    }

    #[test]
    fn a_backup_key_is_unwrapped_once_from_the_shared_header_and_opens_every_file() {
        let (a, b) = (age::x25519::Identity::generate(), age::x25519::Identity::generate());
        let recipient = a.to_public();
        let key = BackupKey::new(&[&recipient]).unwrap();
        let files: Vec<(Vec<u8>, Vec<u8>)> = [0, 5, 65_536, 200_000]
            .into_iter()
            .map(|size| {
                let plaintext = bytes(size, 9);
                (sealed_file(&key, &plaintext, SEGMENT as usize), plaintext)
            })
            .collect();
        let unwrapped = BackupKey::unwrap(&files[1].0, &[&b, &a]).unwrap();
        assert_eq!(unwrapped.header(), key.header());
        for (file, plaintext) in &files {
            assert!(file.starts_with(unwrapped.header()));
            assert_eq!(&open_file(&unwrapped, file, 2).unwrap(), plaintext);
        }
        assert!(matches!(BackupKey::unwrap(&files[0].0, &[&b]), Err(CryptError::NoIdentity)));
        let mut forged = files[2].0.clone();
        let mac_at = key.header().len() - 10;
        forged[mac_at] = if forged[mac_at] == b'A' { b'B' } else { b'A' };
        assert!(matches!(BackupKey::unwrap(&forged, &[&a]), Err(CryptError::HeaderMac)));
        assert!(matches!(BackupKey::unwrap(b"not age at all", &[&a]), Err(CryptError::Header(_))));

        // A file cut at a segment boundary, or a segment of another file of the backup: named by its offset.
        let (file, _) = &files[3];
        let header = key.header().len();
        let cut = &file[..ciphertext_offset(header as u64, 2 * SEGMENT) as usize];
        assert!(matches!(open_file(&unwrapped, cut, 1), Err(CryptError::Segment { offset }) if offset == SEGMENT));
        let mut mixed = file.clone();
        let other = &files[2].0;
        let at = ciphertext_offset(header as u64, 0) as usize;
        mixed[at..at + 100].copy_from_slice(&other[at..at + 100]);
        assert!(matches!(open_file(&unwrapped, &mixed, 1), Err(CryptError::Segment { offset: 0 })));
    }

    #[test]
    fn sealing_in_place_gives_the_bytes_seal_gives() {
        let recipient = age::x25519::Identity::generate().to_public();
        let key = BackupKey::new(&[&recipient]).unwrap();
        let sealer = key.new_file();
        for (offset, len, last) in
            [(0, 0, true), (0, 5, true), (SEGMENT, 3 * SEGMENT as usize, false), (0, 200_000, true)]
        {
            let plaintext = bytes(len, 1);
            let mut expected = Vec::new();
            sealer.seal(offset, &plaintext, last, &mut expected).unwrap();
            let lead = 40;
            let mut buffer = vec![0xEE; lead + sealed_len(len as u64) as usize];
            buffer[..len].copy_from_slice(&plaintext);
            let end = sealer.seal_in_place(offset, &mut buffer, len, last, lead).unwrap();
            assert_eq!(&buffer[lead..end], &expected[..], "{len} bytes at {offset}");
        }
        let mut small = vec![0; 10];
        assert!(sealer.seal_in_place(0, &mut small, 10, true, 0).is_err(), "no room for the tag");
        assert!(sealer.seal_in_place(0, &mut [0; 100], 10, false, 0).is_err(), "a short run not last");
    }

    #[test]
    fn opening_in_place_finds_the_last_segment_and_refuses_a_cut_or_a_move() {
        let recipient = age::x25519::Identity::generate().to_public();
        let key = BackupKey::new(&[&recipient]).unwrap();
        let cipher = key.new_file();
        let segment = SEGMENT as usize;
        let whole = (SEGMENT + TAG_LEN) as usize;
        for size in [0, 10, segment, 3 * segment, 3 * segment + 5] {
            let plaintext = bytes(size, 4);
            let mut sealed = Vec::new();
            cipher.seal(0, &plaintext, true, &mut sealed).unwrap();
            // Whole, then in runs of two segments: only the run that ends the file says it is the last.
            let mut copy = sealed.clone();
            assert_eq!(cipher.open_in_place(0, &mut copy).unwrap(), (size, true), "{size}");
            assert_eq!(&copy[..size], &plaintext[..]);
            let runs: Vec<Vec<u8>> = sealed.chunks(2 * whole).map(<[u8]>::to_vec).collect();
            for (index, mut run) in runs.iter().cloned().enumerate() {
                let (len, last) = cipher.open_in_place((index * 2 * segment) as u64, &mut run).unwrap();
                assert_eq!(last, index + 1 == runs.len(), "{size}: run {index}");
                assert_eq!(&run[..len], &plaintext[index * 2 * segment..index * 2 * segment + len]);
            }
            if size > segment {
                // A run opened at another offset (moved), or cut inside its final segment.
                let mut moved = runs[0].clone();
                assert!(cipher.open_in_place(2 * SEGMENT, &mut moved).is_err(), "{size}: moved");
                let mut cut = sealed[..whole + 100].to_vec();
                assert!(
                    matches!(cipher.open_in_place(0, &mut cut), Err(CryptError::Segment { offset }) if offset == SEGMENT)
                );
            }
        }
        assert!(cipher.open_in_place(0, &mut []).is_err(), "nothing at all");
    }

    #[test]
    fn a_file_sealed_front_to_back_from_pieces_of_any_size_decrypts_with_age() {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public();
        let key = BackupKey::new(&[&recipient]).unwrap();
        let segment = SEGMENT as usize;
        for (size, piece) in
            [(0, 1), (5, 1), (segment, segment), (segment, 7), (3 * segment + 9, 10_000), (300_000, 2 * segment)]
        {
            let plaintext = bytes(size, 6);
            let mut sealer = SequentialSealer::new(&key);
            let mut file = Vec::new();
            for part in plaintext.chunks(piece) {
                sealer.push(part, &mut file).unwrap();
                // What is out is always the header, the nonce and whole sealed segments.
                assert!(file.is_empty() || (file.len() - key.header().len() - NONCE_LEN) % (segment + 16) == 0);
            }
            sealer.finish(&mut file).unwrap();
            assert_eq!(file.len() as u64, ciphertext_len(key.header().len() as u64, size as u64), "{size}/{piece}");
            assert_eq!(decrypt(&file, &identity).unwrap(), plaintext, "{size} in pieces of {piece}");
        }
    }

    #[test]
    fn runs_must_start_on_a_segment_and_only_the_last_may_end_inside_one() {
        let recipient = age::x25519::Identity::generate().to_public();
        let sealer = BackupKey::new(&[&recipient]).unwrap().new_file();
        let mut out = Vec::new();
        assert!(sealer.seal(100, &[0; 10], true, &mut out).is_err());
        assert!(sealer.seal(0, &[0; 10], false, &mut out).is_err());
        assert!(sealer.seal(0, &[], false, &mut out).is_err());
        sealer.seal(SEGMENT, &vec![0; SEGMENT as usize], false, &mut out).unwrap();
        assert_eq!(out.len() as u64, SEGMENT + TAG_LEN);
        assert_eq!(ciphertext_len(100, 0), 100 + 16 + 16);
        assert_eq!(ciphertext_len(100, SEGMENT + 1), 100 + 16 + SEGMENT + 1 + 32);
    }
}

//! The encryption's promise to the outside world: every `.age` file of a backup, sealed in parallel runs with the
//! backup's one shared header, is decrypted by the stock `age` binary (Debian's `age` package, 1.1) with the key
//! that `age-keygen` made; and by either of two recipients' keys.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::str::FromStr;

use crate::support::*;

/// A key made by the stock `age-keygen` in `dir`: its file and its public recipient.
fn keygen(dir: &Path, name: &str) -> (std::path::PathBuf, age::x25519::Recipient) {
    let (key, public) = age_keygen(dir, name);
    (key, age::x25519::Recipient::from_str(&public).unwrap())
}

/// The `.age` file of `plaintext`, sealed in runs of four segments, last run first.
fn seal(key: &crypt::BackupKey, plaintext: &[u8]) -> Vec<u8> {
    let sealer = key.new_file();
    let header = key.header().len() as u64;
    let mut file = vec![0u8; crypt::ciphertext_len(header, plaintext.len() as u64) as usize];
    file[..key.header().len()].copy_from_slice(key.header());
    file[key.header().len()..key.header().len() + crypt::NONCE_LEN].copy_from_slice(sealer.nonce());
    let run = 4 * crypt::SEGMENT as usize;
    let runs: Vec<&[u8]> = if plaintext.is_empty() { vec![&[][..]] } else { plaintext.chunks(run).collect() };
    for (index, piece) in runs.iter().enumerate().rev() {
        let offset = (index * run) as u64;
        let mut sealed = Vec::new();
        sealer.seal(offset, piece, index + 1 == runs.len(), &mut sealed).unwrap();
        let at = sealer.ciphertext_offset(offset) as usize;
        file[at..at + sealed.len()].copy_from_slice(&sealed);
    }
    file
}

#[test]
fn stock_age_decrypts_every_file_of_a_backup_with_either_key() {
    let work = tempfile::tempdir().unwrap();
    let (key_a, recipient_a) = keygen(work.path(), "a.key");
    let (key_b, recipient_b) = keygen(work.path(), "b.key");
    let backup = crypt::BackupKey::new(&[&recipient_a, &recipient_b]).unwrap();
    for (name, size) in [("empty", 0usize), ("small", 1000), ("ibdata1", 1_000_000 + 17)] {
        let plaintext = pseudo_random_bytes(size, size as u64);
        let sealed = work.path().join(format!("{name}.age"));
        fs::write(&sealed, seal(&backup, &plaintext)).unwrap();
        for key in [&key_a, &key_b] {
            let out = run_ok(Command::new(tool("age")).arg("-d").arg("-i").arg(key).arg(&sealed), SHORT);
            assert!(
                out == plaintext,
                "{name}: age -d -i {} gave {} bytes, not the {size} sealed",
                key.display(),
                out.len()
            );
        }
    }
    // A third key, which the backup was not encrypted to: stock age refuses.
    let (stranger, _) = keygen(work.path(), "c.key");
    let refused = spawn(
        Command::new(tool("age"))
            .arg("-d")
            .arg("-i")
            .arg(&stranger)
            .arg(work.path().join("small.age"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .wait_output(SHORT);
    assert!(!refused.status.success(), "a key the backup was not encrypted to");
}

/// The other way round: a file the stock `age -r` encrypted (its own random file key and nonce) is unwrapped and
/// opened segment run by segment run, last run first, by our cipher.
#[test]
fn a_file_stock_age_encrypted_opens_in_runs_with_our_cipher() {
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(work.path(), "a.key");
    let plaintext = pseudo_random_bytes(5 * crypt::SEGMENT as usize + 123, 5);
    fs::write(work.path().join("plain"), &plaintext).unwrap();
    let encrypted = work.path().join("plain.age");
    run_ok(
        Command::new(tool("age"))
            .arg("-r")
            .arg(recipient.to_string())
            .arg("-o")
            .arg(&encrypted)
            .arg(work.path().join("plain")),
        SHORT,
    );
    let file = fs::read(&encrypted).unwrap();
    // The identity file exactly as age-keygen wrote it, read as `--identity` will read it.
    let identities = crypt::keys::identities(&[&key]).unwrap();
    let backup = crypt::BackupKey::unwrap(&file, &[identities[0].as_ref()]).unwrap();
    let header = backup.header().len();
    let cipher = backup.file(file[header..header + crypt::NONCE_LEN].try_into().unwrap());
    let whole = 2 * (crypt::SEGMENT + crypt::TAG_LEN) as usize;
    let runs: Vec<&[u8]> = file[header + crypt::NONCE_LEN..].chunks(whole).collect();
    let mut pieces = vec![Vec::new(); runs.len()];
    for (index, run) in runs.iter().enumerate().rev() {
        cipher.open(index as u64 * 2 * crypt::SEGMENT, run, index + 1 == runs.len(), &mut pieces[index]).unwrap();
    }
    assert!(pieces.concat() == plaintext, "the plaintext stock age encrypted");
}

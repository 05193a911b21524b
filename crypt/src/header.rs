//! The header every file of a backup shares: age's `age-encryption.org/v1` line, one stanza per recipient (made
//! once), `---` and the header's HMAC-SHA-256 under a key derived from the file key.

use age::{Identity, Recipient};
use age_core::format::{FileKey, Stanza, FILE_KEY_BYTES};
use age_core::secrecy::ExposeSecret;
use base64::{prelude::BASE64_STANDARD_NO_PAD, Engine};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::payload::FileCipher;
use crate::CryptError;

/// A backup's file key and the age header that wraps it for every recipient: made once, shared by every file.
pub struct BackupKey {
    file_key: FileKey,
    header: Vec<u8>,
}

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupKey").field("header_len", &self.header.len()).finish_non_exhaustive()
    }
}

impl BackupKey {
    /// A fresh random file key, wrapped for each of `recipients` (X25519 `age1…` keys, or one scrypt passphrase
    /// recipient: age allows a passphrase only alone, and refuses the mix).
    pub fn new(recipients: &[&dyn Recipient]) -> Result<BackupKey, CryptError> {
        if recipients.is_empty() {
            return Err(CryptError::NoRecipients);
        }
        let file_key = FileKey::init_with_mut(|key| rand::rngs::OsRng.fill_bytes(key));
        let mut stanzas = Vec::new();
        for recipient in recipients {
            let (wrapped, _labels) = recipient.wrap_file_key(&file_key).map_err(|e| CryptError::Wrap(e.to_string()))?;
            stanzas.extend(wrapped);
        }
        let scrypt = stanzas.iter().filter(|stanza| stanza.tag == "scrypt").count();
        if scrypt > 0 && stanzas.len() > 1 {
            return Err(CryptError::Wrap("a passphrase must be the only recipient (as age requires)".into()));
        }
        let mut header = b"age-encryption.org/v1\n".to_vec();
        for stanza in &stanzas {
            let write = age_core::format::write::age_stanza(&stanza.tag, &stanza.args, &stanza.body);
            header = cookie_factory::gen_simple(write, header).expect("a stanza serialises into a Vec");
        }
        header.extend_from_slice(b"---");
        // HMAC-SHA-256 of everything up to and including `---`, keyed by HKDF-SHA-256(file key, info "header").
        let mac_key = zeroize::Zeroizing::new(age_core::primitives::hkdf(&[], b"header", file_key.expose_secret()));
        let mut mac = Hmac::<Sha256>::new_from_slice(&mac_key[..]).expect("HMAC takes any key length");
        mac.update(&header);
        let tag = mac.finalize().into_bytes();
        header.push(b' ');
        header.extend_from_slice(BASE64_STANDARD_NO_PAD.encode(tag).as_bytes());
        header.push(b'\n');
        Ok(BackupKey { file_key, header })
    }

    /// The age header every `<path>.age` file of the backup starts with.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// A short name for this backup's key: the first 8 bytes of the SHA-256 of its header, in hex. The producer
    /// reports it and so does every decryption: a backup forged by someone who has only the recipient (age has no
    /// sender authentication) has another header, so another fingerprint; the backup id, in the clear, proves
    /// nothing of the kind.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest as _;
        let digest = Sha256::digest(&self.header);
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A sealer for one more file: a fresh random payload nonce, so a payload key of its own.
    pub fn new_file(&self) -> FileCipher {
        let mut nonce = [0u8; crate::NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        self.file(nonce)
    }

    /// The cipher of the file whose payload starts with `nonce` (to open it, or to seal with a chosen nonce).
    pub fn file(&self, nonce: [u8; crate::NONCE_LEN]) -> FileCipher {
        FileCipher::new(self.file_key.expose_secret(), nonce, self.header.len() as u64)
    }

    /// The backup key of an age file (or of every file of a backup: they share one header) that starts
    /// `file`, unwrapped by the first of `identities` that can: once per backup, whatever the number of files.
    /// The header must be age v1; a passphrase stanza must be alone (as age requires); its MAC must match.
    pub fn unwrap(file: &[u8], identities: &[&dyn Identity]) -> Result<BackupKey, CryptError> {
        let damaged = |what: &str| CryptError::Header(what.to_string());
        let mut rest =
            file.strip_prefix(b"age-encryption.org/v1\n".as_slice()).ok_or_else(|| damaged("no age v1 line"))?;
        let mut stanzas = Vec::new();
        while !rest.starts_with(b"---") {
            let (after, stanza) =
                age_core::format::read::age_stanza(rest).map_err(|_| damaged("a damaged recipient stanza"))?;
            stanzas.push(Stanza::from(stanza));
            rest = after;
        }
        let mac_at = file.len() - rest.len();
        let line_end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| damaged("no end to the header"))?;
        let encoded = rest[..line_end].strip_prefix(b"--- ".as_slice()).ok_or_else(|| damaged("no MAC"))?;
        let mac = BASE64_STANDARD_NO_PAD.decode(encoded).map_err(|_| damaged("a damaged MAC"))?;
        if stanzas.iter().any(|stanza| stanza.tag == "scrypt") && stanzas.len() != 1 {
            return Err(damaged("a passphrase stanza beside others"));
        }
        let file_key = identities
            .iter()
            .find_map(|identity| identity.unwrap_stanzas(&stanzas))
            .ok_or(CryptError::NoIdentity)?
            .map_err(|e| CryptError::Unwrap(e.to_string()))?;
        let mac_key = zeroize::Zeroizing::new(age_core::primitives::hkdf(&[], b"header", file_key.expose_secret()));
        let mut check = Hmac::<Sha256>::new_from_slice(&mac_key[..]).expect("HMAC takes any key length");
        check.update(&file[..mac_at + 3]);
        check.verify_slice(&mac).map_err(|_| CryptError::HeaderMac)?;
        Ok(BackupKey { file_key, header: file[..mac_at + line_end + 1].to_vec() })
    }

    /// Length of the file key, for documentation and tests.
    pub const FILE_KEY_LEN: usize = FILE_KEY_BYTES;
}

//! The header every file of a backup shares: age's `age-encryption.org/v1` line, one stanza per recipient (made
//! once), `---` and the header's HMAC-SHA-256 under a key derived from the file key.

use age::Recipient;
use age_core::format::{FileKey, FILE_KEY_BYTES};
use age_core::secrecy::ExposeSecret;
use base64::{prelude::BASE64_STANDARD_NO_PAD, Engine};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::payload::FileSealer;
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
        let mac_key = age_core::primitives::hkdf(&[], b"header", file_key.expose_secret());
        let mut mac = Hmac::<Sha256>::new_from_slice(&mac_key).expect("HMAC takes any key length");
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

    /// A sealer for one more file: a fresh random payload nonce, so a payload key of its own.
    pub fn new_file(&self) -> FileSealer {
        let mut nonce = [0u8; crate::NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        FileSealer::new(self.file_key.expose_secret(), nonce, self.header.len() as u64)
    }

    /// Length of the file key, for documentation and tests.
    pub const FILE_KEY_LEN: usize = FILE_KEY_BYTES;
}

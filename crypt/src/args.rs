//! The encryption options, spelled the same wherever a backup is encrypted (`producer`, and later `consumer put`
//! for a foreign stream): clap derive, flattened into each binary's arguments. Secrets come from files only.

use std::path::PathBuf;

use crate::{keys, BackupKey, CryptError};

/// `--encrypt-recipient`, `--encrypt-recipients-file`, `--encrypt-passphrase-file`: any of them encrypts the
/// backup, every file as `<path>.age`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EncryptArgs {
    /// Encrypt every file to this age X25519 recipient (`age1…`, from `age-keygen`), as `<path>.age`, which
    /// stock `age -d -i KEY` decrypts; repeatable (any one of the keys restores). Only public keys go here.
    #[arg(long, value_name = "RECIPIENT")]
    pub encrypt_recipient: Vec<String>,

    /// Encrypt to every recipient listed in FILE (one `age1…` per line, `#` comments), as `age -R` reads it;
    /// repeatable.
    #[arg(long, value_name = "FILE")]
    pub encrypt_recipients_file: Vec<PathBuf>,

    /// Encrypt with the passphrase on the first line of FILE (age's scrypt; alone, never beside recipients).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["encrypt_recipient", "encrypt_recipients_file"])]
    pub encrypt_passphrase_file: Option<PathBuf>,
}

impl EncryptArgs {
    /// Whether any encryption option was given.
    pub fn wanted(&self) -> bool {
        !self.encrypt_recipient.is_empty()
            || !self.encrypt_recipients_file.is_empty()
            || self.encrypt_passphrase_file.is_some()
    }

    /// The backup's key, wrapped once for every recipient (or the passphrase); `None` without encryption. Every
    /// bad key is an error naming where it came from, before anything is written.
    pub fn backup_key(&self) -> Result<Option<BackupKey>, CryptError> {
        if !self.wanted() {
            return Ok(None);
        }
        if let Some(file) = &self.encrypt_passphrase_file {
            let passphrase = keys::passphrase(file)?;
            let recipient = age::scrypt::Recipient::new(passphrase);
            return BackupKey::new(&[&recipient]).map(Some);
        }
        let files: Vec<&std::path::Path> = self.encrypt_recipients_file.iter().map(PathBuf::as_path).collect();
        let recipients = keys::recipients(&self.encrypt_recipient, &files)?;
        let recipients: Vec<&dyn age::Recipient> = recipients.iter().map(|r| r as &dyn age::Recipient).collect();
        BackupKey::new(&recipients).map(Some)
    }
}

/// `--identity`, `--passphrase-file`: the keys that decrypt a backup (`consumer decrypt`, later `extract` and
/// `get -C` with `--decrypt`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DecryptArgs {
    /// An age identity file (`age-keygen`'s output: `AGE-SECRET-KEY-1…` lines), as `age -d -i` reads it;
    /// repeatable: the first that opens the backup is used.
    #[arg(long, value_name = "FILE")]
    pub identity: Vec<PathBuf>,

    /// The passphrase on the first line of FILE, for a backup encrypted with `--encrypt-passphrase-file`.
    #[arg(long, value_name = "FILE", conflicts_with = "identity")]
    pub passphrase_file: Option<PathBuf>,
}

impl DecryptArgs {
    /// Whether a key was given.
    pub fn given(&self) -> bool {
        !self.identity.is_empty() || self.passphrase_file.is_some()
    }

    /// The identities to try, read from their files (every bad one named), or the passphrase's.
    pub fn identities(&self) -> Result<Vec<keys::Identity>, CryptError> {
        if let Some(file) = &self.passphrase_file {
            return Ok(vec![Box::new(age::scrypt::Identity::new(keys::passphrase(file)?))]);
        }
        if self.identity.is_empty() {
            return Err(CryptError::Key("give the key: --identity FILE or --passphrase-file FILE".into()));
        }
        let files: Vec<&std::path::Path> = self.identity.iter().map(PathBuf::as_path).collect();
        keys::identities(&files)
    }
}

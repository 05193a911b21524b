//! Keys as an operator hands them over: recipients (`age1…`, on the command line or in a file, one per line, `#`
//! comments allowed, as `age -R` reads them), identity files (`age-keygen`'s output, as `age -i` reads them), and a
//! passphrase in a file (its first line). Secrets never come from the command line; what is read is kept in
//! zeroizing buffers (`SecretString`), and every error names the file and, for a recipients file, the line.

use std::path::Path;
use std::str::FromStr;

use age::secrecy::SecretString;
use zeroize::Zeroizing;

use crate::CryptError;

/// The X25519 recipients in `keys` (command-line values) and in each of `files` (recipients files).
pub fn recipients(keys: &[String], files: &[&Path]) -> Result<Vec<age::x25519::Recipient>, CryptError> {
    let parse = |text: &str, place: &str| {
        age::x25519::Recipient::from_str(text).map_err(|e| {
            // An identity given where a recipient belongs is a secret: it is never repeated in a message.
            if text.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
                return CryptError::Key(format!(
                    "{place}: that is an age identity (a secret key), not a recipient: give its public key \
                     (age-keygen -y), and keep the identity off this host"
                ));
            }
            CryptError::Key(format!("{place}: {text:?} is not an age X25519 recipient (age1…): {e}"))
        })
    };
    let mut out = Vec::new();
    for key in keys {
        out.push(parse(key.trim(), "--encrypt-recipient")?);
    }
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| CryptError::Key(format!("cannot read recipients file {}: {e}", file.display())))?;
        let before = out.len();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            out.push(parse(line, &format!("{}:{}", file.display(), number + 1))?);
        }
        if out.len() == before {
            return Err(CryptError::Key(format!("recipients file {} lists no recipient", file.display())));
        }
    }
    Ok(out)
}

/// The passphrase in the first line of `file` (its line ending dropped); an empty one is refused.
pub fn passphrase(file: &Path) -> Result<SecretString, CryptError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(file)
            .map_err(|e| CryptError::Key(format!("cannot read passphrase file {}: {e}", file.display())))?,
    );
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(CryptError::Key(format!(
            "passphrase file {} holds no passphrase on its first line",
            file.display()
        )));
    }
    Ok(SecretString::from(line.to_string()))
}

/// An identity that decrypts a backup, usable from any thread.
pub type Identity = Box<dyn age::Identity + Send + Sync>;

/// The identities in each of `files` (age identity files as `age-keygen` writes them: `AGE-SECRET-KEY-1…` lines,
/// `#` comments), as X25519 identities every decrypting thread can use. A line that is not one is an error naming
/// the file and line (never the line itself: it may be a secret); plugin identities are not supported.
pub fn identities(files: &[&Path]) -> Result<Vec<Identity>, CryptError> {
    let mut out: Vec<Identity> = Vec::new();
    for file in files {
        let text = Zeroizing::new(
            std::fs::read_to_string(file)
                .map_err(|e| CryptError::Key(format!("cannot read identity file {}: {e}", file.display())))?,
        );
        let before = out.len();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let identity = age::x25519::Identity::from_str(line).map_err(|_| {
                let plugin =
                    if line.starts_with("AGE-PLUGIN-") { " (plugin identities are not supported)" } else { "" };
                CryptError::Key(format!(
                    "identity file {}:{}: not an age identity (AGE-SECRET-KEY-1…){plugin}",
                    file.display(),
                    number + 1
                ))
            })?;
            out.push(Box::new(identity));
        }
        if out.len() == before {
            return Err(CryptError::Key(format!("identity file {}: it holds no identity", file.display())));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_from_files_and_bad_ones_are_named() {
        let work = std::env::temp_dir().join(format!("crypt-keys-{}", std::process::id()));
        std::fs::create_dir_all(&work).unwrap();
        let identity = age::x25519::Identity::generate();
        let public = identity.to_public().to_string();
        let ids = work.join("key.txt");
        std::fs::write(
            &ids,
            format!("# created: now\n# public key: {public}\n{}\n", {
                use age::secrecy::ExposeSecret;
                identity.to_string().expose_secret().to_string()
            }),
        )
        .unwrap();
        assert_eq!(identities(&[&ids]).unwrap().len(), 1);
        let list = work.join("recipients.txt");
        std::fs::write(&list, format!("# the backup key\n\n{public}\n")).unwrap();
        let all = recipients(std::slice::from_ref(&public), &[&list]).unwrap();
        assert_eq!(all.len(), 2);

        let bad = work.join("bad.txt");
        std::fs::write(&bad, "# nothing\nage1notakey\n").unwrap();
        let error = recipients(&[], &[&bad]).unwrap_err().to_string();
        assert!(error.contains("bad.txt:2") && error.contains("age1notakey"), "{error}");
        // A secret key where a recipient belongs: refused, and never repeated in the message.
        let secret = {
            use age::secrecy::ExposeSecret;
            identity.to_string().expose_secret().to_string()
        };
        std::fs::write(&bad, format!("{secret}\n")).unwrap();
        let error = recipients(&[], &[&bad]).unwrap_err().to_string();
        assert!(
            error.contains("bad.txt:1") && error.contains("secret key") && !error.contains(&secret[15..]),
            "{error}"
        );
        let error = recipients(std::slice::from_ref(&secret), &[]).unwrap_err().to_string();
        assert!(!error.contains(&secret[15..]), "{error}");
        std::fs::write(&bad, "AGE-SECRET-KEY-1NOTAKEY\n").unwrap();
        let error = identities(&[&bad]).err().expect("a damaged identity file").to_string();
        assert!(error.contains("bad.txt"), "{error}");
        std::fs::write(&bad, "# only comments\n").unwrap();
        assert!(recipients(&[], &[&bad]).unwrap_err().to_string().contains("lists no recipient"));
        assert!(identities(&[&work.join("missing")]).is_err());

        let phrase = work.join("phrase");
        std::fs::write(&phrase, "correct horse\nignored\n").unwrap();
        use age::secrecy::ExposeSecret;
        assert_eq!(passphrase(&phrase).unwrap().expose_secret(), "correct horse");
        std::fs::write(&phrase, "\n").unwrap();
        assert!(passphrase(&phrase).unwrap_err().to_string().contains("no passphrase"));
        std::fs::remove_dir_all(&work).unwrap();
    }
}

//! The one path check: every name read from a stream, and every name the producer puts on the wire, goes through
//! [`safe_relative_path`].
//!
//! The rules are stricter than both real tools (`shared/xbstream-spec.md` §2): empty paths, absolute paths, empty,
//! `.` or `..` components, NUL bytes and paths over 511 bytes are rejected, so the result is a relative path that
//! cannot name anything outside the directory it is joined to — lexically. Symlinks already inside that directory are
//! the extractor's business (it opens with `O_NOFOLLOW`-style calls).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::chunk::MAX_PATH_LEN;

/// Why a path is unsafe. Each variant carries the offending path (lossy UTF-8) for the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// Zero bytes long.
    #[error("empty path")]
    Empty,
    /// Over [`MAX_PATH_LEN`] bytes.
    #[error("path {path:?} is {len} bytes long (at most {max})", max = MAX_PATH_LEN)]
    TooLong {
        /// The path.
        path: String,
        /// Its length.
        len: usize,
    },
    /// Contains a NUL byte.
    #[error("path {path:?} contains a NUL byte")]
    Nul {
        /// The path.
        path: String,
    },
    /// Starts with `/`.
    #[error("absolute path {path:?} not allowed")]
    Absolute {
        /// The path.
        path: String,
    },
    /// Has an empty, `.` or `..` component (`a//b`, `./a`, `a/..`, trailing `/`).
    #[error("path {path:?} has a {component:?} component")]
    BadComponent {
        /// The path.
        path: String,
        /// The offending component (`""`, `"."` or `".."`).
        component: String,
    },
}

/// Validates a path as it appears on the wire and returns it as a relative `PathBuf` that stays inside any
/// directory it is joined to.
pub fn safe_relative_path(raw: &[u8]) -> Result<PathBuf, PathError> {
    checked_relative_path(raw).map(Path::to_path_buf)
}

/// [`safe_relative_path`] without the copy: the same checks, and the path borrowed from `raw` (for the per-chunk
/// and per-file checks, where an allocation each adds up).
pub fn checked_relative_path(raw: &[u8]) -> Result<&Path, PathError> {
    let lossy = || String::from_utf8_lossy(raw).into_owned();
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong { path: lossy(), len: raw.len() });
    }
    if raw.contains(&0) {
        return Err(PathError::Nul { path: lossy() });
    }
    if raw[0] == b'/' {
        return Err(PathError::Absolute { path: lossy() });
    }
    for component in raw.split(|&b| b == b'/') {
        if component.is_empty() || component == b"." || component == b".." {
            return Err(PathError::BadComponent {
                path: lossy(),
                component: String::from_utf8_lossy(component).into_owned(),
            });
        }
    }
    Ok(Path::new(OsStr::from_bytes(raw)))
}

/// The wire form of a relative path found under a source directory: its bytes, validated by the same rules.
pub fn wire_path(relative: &Path) -> Result<Vec<u8>, PathError> {
    let bytes = relative.as_os_str().as_bytes();
    checked_relative_path(bytes)?;
    Ok(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_relative_paths() {
        for ok in [&b"a"[..], b"db/t1.ibd", b"a..b", b"a\\b", b".hidden", b"x/.y", b"\xff\xfe", b"a/b/c/d"] {
            assert_eq!(safe_relative_path(ok).unwrap().as_os_str().as_bytes(), ok);
        }
        assert!(safe_relative_path(&[b'a'; MAX_PATH_LEN]).is_ok());
    }

    #[test]
    fn rejects_every_escape() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty path"),
            (b"/etc/passwd", "absolute path \"/etc/passwd\" not allowed"),
            (b"../x", "path \"../x\" has a \"..\" component"),
            (b"a/../../x", "path \"a/../../x\" has a \"..\" component"),
            (b"a/..", "has a \"..\" component"),
            (b"./a", "has a \".\" component"),
            (b"a/./b", "has a \".\" component"),
            (b"a//b", "has a \"\" component"),
            (b"a/", "has a \"\" component"),
            (b"a\0b", "contains a NUL byte"),
        ];
        for (raw, message) in cases {
            let err = safe_relative_path(raw).unwrap_err();
            assert!(err.to_string().contains(message), "{raw:?}: {err}");
        }
        let long = vec![b'a'; MAX_PATH_LEN + 1];
        assert_eq!(
            safe_relative_path(&long).unwrap_err(),
            PathError::TooLong { path: String::from_utf8(long).unwrap(), len: 512 }
        );
    }

    proptest! {
        #[test]
        fn accepted_paths_never_leave_the_directory(raw in proptest::collection::vec(
            prop_oneof![Just(b'/'), Just(b'.'), Just(b'a'), Just(0u8), Just(b'\\')], 0..12)) {
            if let Ok(path) = safe_relative_path(&raw) {
                prop_assert!(path.is_relative());
                for component in path.components() {
                    prop_assert!(matches!(component, std::path::Component::Normal(_)), "{:?}", path);
                }
                // Lexical normalisation of base/path stays below base.
                let joined = Path::new("/base").join(&path);
                prop_assert!(joined.starts_with("/base/"));
            }
        }
    }
}

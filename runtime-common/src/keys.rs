//! Where a runtime member gets its cluster keys: a key file, the [`KEYS_ENV`] variable, or
//! a fresh random key (demos and tests). The text format is [`Keyring::parse`]'s: hex keys,
//! one per line or separated by commas, `#` comments; the first key is used for sending.
//!
//! Nothing here ever logs or returns key material: errors name the source and the reason.

use hybridcast_core::{ClusterKey, Keyring};
use std::io::Read;
use std::path::Path;

/// Environment variable holding the cluster keys as text (see the module docs).
pub const KEYS_ENV: &str = "HYBRIDCAST_CLUSTER_KEYS";

/// Largest key file read (eight 64-byte keys in hex with comments fit many times over).
pub const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;

/// Reads the keys in the file at `path` (at most [`MAX_KEY_FILE_BYTES`]).
pub fn read_key_file(path: &Path) -> Result<Keyring, crate::Error> {
    let bad = |reason: String| crate::Error::Config {
        field: "key file",
        reason: format!("{}: {reason}", path.display()),
    };
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| bad(e.to_string()))?;
    if text.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(bad(format!("longer than {MAX_KEY_FILE_BYTES} bytes")));
    }
    warn_if_readable_by_others(path);
    Keyring::parse(&text).map_err(|e| bad(e.to_string()))
}

/// The keys in [`KEYS_ENV`], if it is set.
pub fn keys_from_env() -> Result<Option<Keyring>, crate::Error> {
    let Some(text) = std::env::var_os(KEYS_ENV) else {
        return Ok(None);
    };
    let text = text.to_str().ok_or_else(|| crate::Error::Config {
        field: KEYS_ENV,
        reason: "not UTF-8".into(),
    })?;
    Keyring::parse(text)
        .map(Some)
        .map_err(|e| crate::Error::Config {
            field: KEYS_ENV,
            reason: e.to_string(),
        })
}

fn random_bytes() -> Result<[u8; 32], crate::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| crate::Error::Config {
        field: "cluster key",
        reason: format!("no OS randomness: {e}"),
    })?;
    Ok(bytes)
}

/// A fresh 32-byte key from the operating system's random source.
pub fn random_key() -> Result<ClusterKey, crate::Error> {
    ClusterKey::new(random_bytes()?.to_vec()).map_err(|e| crate::Error::Config {
        field: "cluster key",
        reason: e.to_string(),
    })
}

/// The text of a new key file holding one fresh random key (`hybridcast keygen`).
pub fn new_key_file_text() -> Result<String, crate::Error> {
    Ok(key_file_text(&[&random_bytes()?]))
}

/// Key-file text holding `keys` (raw bytes) in hex, the first one signing.
pub fn key_file_text(keys: &[&[u8]]) -> String {
    let mut s = String::from("# hybridcast cluster keys: the first signs, all are accepted\n");
    for k in keys {
        s.push_str(&hybridcast_core::auth::to_hex(k));
        s.push('\n');
    }
    s
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the key file is readable by other users; chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_read_bounded_and_errors_never_show_keys() {
        let dir = std::env::temp_dir().join(format!("hybridcast-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let good = dir.join("good");
        std::fs::write(&good, key_file_text(&[&[7u8; 32], &[8u8; 16]])).expect("write");
        assert_eq!(read_key_file(&good).expect("reads").len(), 2);
        let short = dir.join("short");
        std::fs::write(&short, "0707070707070707\n").expect("write");
        let e = read_key_file(&short).expect_err("too short").to_string();
        assert!(e.contains("at least 16"), "{e}");
        assert!(!e.contains("0707"), "{e}");
        let big = dir.join("big");
        std::fs::write(&big, "#".repeat(MAX_KEY_FILE_BYTES as usize + 10)).expect("write");
        assert!(
            read_key_file(&big)
                .expect_err("too long")
                .to_string()
                .contains("longer")
        );
        let e = read_key_file(&dir.join("missing"))
            .expect_err("missing")
            .to_string();
        assert!(e.contains("missing"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn random_keys_differ() {
        let a = random_key().expect("key");
        let b = random_key().expect("key");
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }
}

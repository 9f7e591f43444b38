//! The key of an image (`iset`/`iget`): a digest of the file's content, so the same
//! picture gets the same key whatever its file name, and another picture another key.

use std::io::Read;

/// Prefix of image keys, so they can be listed with `kvsctl ls --prefix img-`.
pub const IMAGE_KEY_PREFIX: &str = "img-";
/// The store refuses keys longer than this (the contract's "Key is too long").
pub const MAX_KEY_CHARS: usize = 50;
/// Hex digits of the BLAKE3 digest kept: as many as fit after the prefix (46 digits,
/// 184 bits: far beyond any chance of two pictures sharing a key).
const DIGEST_HEX_CHARS: usize = MAX_KEY_CHARS - IMAGE_KEY_PREFIX.len();

/// The image key of the content `reader` yields: `img-` and the first hex digits of its
/// BLAKE3 digest. Streams the content, so a large file is not held in memory.
pub fn image_key(reader: impl Read) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(reader)?;
    let hex = hasher.finalize().to_hex();
    Ok(format!(
        "{IMAGE_KEY_PREFIX}{}",
        &hex.as_str()[..DIGEST_HEX_CHARS]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_fits_the_stores_limit_and_depends_only_on_content() {
        let a = image_key(&b"picture one"[..]).expect("hash");
        assert_eq!(a.chars().count(), MAX_KEY_CHARS);
        assert!(a.starts_with("img-"));
        assert!(a[4..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, image_key(&b"picture one"[..]).expect("hash"));
        assert_ne!(a, image_key(&b"picture two"[..]).expect("hash"));
    }

    #[test]
    fn the_key_is_the_truncated_blake3_digest() {
        let full = blake3::hash(b"").to_hex();
        let key = image_key(std::io::empty()).expect("hash");
        assert_eq!(key, format!("img-{}", &full.as_str()[..46]));
    }
}

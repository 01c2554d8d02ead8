//! Bearer tokens: random, shown once, stored only as a hash.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

/// Every Meridian token starts with this, so a leaked one is recognisable
/// (secret scanners) and never mistaken for a JWT.
pub const PREFIX: &str = "mrd_";

/// A new token: 256 random bits.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random generator works");
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Checks a token an operator made (to keep in a secret and import), so a
/// weak or mangled one is refused: the prefix, then at least 32 characters
/// of base64url or hex, e.g. `mrd_$(openssl rand -hex 32)`.
pub fn check_imported(token: &str) -> Result<(), String> {
    let Some(body) = token.strip_prefix(PREFIX) else {
        return Err(format!("a token starts with {PREFIX:?}"));
    };
    if body.len() < 32 {
        return Err(format!(
            "{} characters after {PREFIX:?} are too few; use at least 32 (256 random bits: `openssl rand -hex 32`)",
            body.len()
        ));
    }
    if let Some(c) = body
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        // Says which kind of character, never the token itself.
        let kind = if c.is_whitespace() {
            "whitespace"
        } else {
            "a character outside base64url"
        };
        return Err(format!("the token holds {kind}"));
    }
    Ok(())
}

/// What the database keeps: SHA-256 of the token, hex. The token has 256
/// bits of entropy, so a fast hash is enough (no password stretching).
pub fn hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_prefixed_and_hash_stably() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 43);
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
        assert!(check_imported(&a).is_ok());
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn imported_tokens_must_be_long_and_plain() {
        let hex = format!("{PREFIX}{}", "0f".repeat(32));
        assert!(check_imported(&hex).is_ok());
        assert!(check_imported("mrd_short").unwrap_err().contains("too few"));
        assert!(check_imported(&"0f".repeat(32))
            .unwrap_err()
            .contains("starts with"));
        let spaced = format!("{PREFIX}{} x", "a".repeat(40));
        let e = check_imported(&spaced).unwrap_err();
        assert!(e.contains("whitespace") && !e.contains("aaaa"), "{e}");
    }
}

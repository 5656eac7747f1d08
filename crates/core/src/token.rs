//! API tokens: 32 random bytes shown once as hex; the registry stores only their SHA-256.

use sha2::{Digest, Sha256};

/// A new random token.
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The hash under which a token is stored and cached. Tokens carry 256 bits of entropy, so a
/// plain SHA-256 is enough: there is nothing to brute-force.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hash_stably() {
        let a = new_token();
        assert_eq!(a.len(), 64);
        assert_ne!(a, new_token());
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token("other"));
    }
}

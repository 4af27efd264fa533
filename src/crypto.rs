//! Secrets: hashing of credentials, generation of API keys and tokens,
//! password hashing, and encryption at rest of provider API keys.
//!
//! API keys and user tokens carry 190+ bits of randomness, so one SHA-256
//! is enough to store them safely and keeps the lookup on the hot path cheap.
//! Passwords are low-entropy and go through argon2id instead.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::distributions::Alphanumeric;
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};

/// Hex SHA-256 of a presented secret, as stored in the database.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new organization API key and its displayable prefix, e.g.
/// `bk_4fQ9xZ2a_...` with prefix `bk_4fQ9xZ2a`.
pub fn generate_api_key() -> (String, String) {
    let prefix: String = rand::thread_rng().sample_iter(&Alphanumeric).take(8).map(char::from).collect();
    let secret: String = rand::thread_rng().sample_iter(&Alphanumeric).take(40).map(char::from).collect();
    let prefix = format!("bk_{prefix}");
    (format!("{prefix}_{secret}"), prefix)
}

/// A new user token: 40 hex digits, as DRF's TokenAuthentication issues.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 20];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Hashes a password with argon2id. CPU-heavy: call from a blocking thread.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut rand::thread_rng());
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| format!("password hashing failed: {err}"))
}

/// Checks a password against a stored argon2 hash. CPU-heavy: call from a blocking thread.
pub fn verify_password(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Encrypts provider secrets with ChaCha20-Poly1305 under the server key.
/// The stored form is base64 of a random 12-byte nonce followed by the ciphertext.
#[derive(Clone)]
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl SecretBox {
    pub fn new(key: [u8; 32]) -> Self {
        SecretBox { cipher: ChaCha20Poly1305::new(Key::from_slice(&key)) }
    }

    /// Parses a key given as 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text.trim()).map_err(|_| "the secret key must be 64 hex digits".to_string())?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| "the secret key must be 64 hex digits (32 bytes)".to_string())?;
        Ok(Self::new(key))
    }

    pub fn generate_hex() -> String {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        hex::encode(key)
    }

    pub fn encrypt(&self, plaintext: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        // Encryption with a fresh nonce cannot fail for inputs below 256 GiB.
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
            .unwrap_or_default();
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&ciphertext);
        base64::engine::general_purpose::STANDARD.encode(stored)
    }

    pub fn decrypt(&self, stored: &str) -> Option<String> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(stored).ok()?;
        if bytes.len() < 12 {
            return None;
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let plaintext = self.cipher.decrypt(Nonce::from_slice(nonce), ciphertext).ok()?;
        String::from_utf8(plaintext).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_box_round_trips_and_hides_plaintext() {
        let sealed = SecretBox::new([7; 32]);
        let stored = sealed.encrypt("sk-live-123");
        assert!(!stored.contains("sk-live-123"));
        assert_eq!(sealed.decrypt(&stored).as_deref(), Some("sk-live-123"));
        assert_eq!(SecretBox::new([8; 32]).decrypt(&stored), None);
    }

    #[test]
    fn api_key_starts_with_its_prefix() {
        let (key, prefix) = generate_api_key();
        assert!(key.starts_with(&format!("{prefix}_")));
        assert_eq!(prefix.len(), 11);
        assert_eq!(key.len(), 11 + 1 + 40);
    }

    #[test]
    fn password_hash_verifies_only_the_password() {
        let stored = hash_password("correct horse").unwrap();
        assert!(verify_password("correct horse", &stored));
        assert!(!verify_password("wrong horse", &stored));
    }
}

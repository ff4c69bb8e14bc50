//! Signed digests of the audit chain: at a configured interval the chain's
//! head (sequence and hash) is signed with the gateway's Ed25519 key. Whoever
//! holds the public key can check an export offline: an attacker who edits an
//! event and recomputes every later hash cannot make the signed hashes match.

use std::path::Path;

use chrono::{DateTime, SecondsFormat, SubsecRound as _, Utc};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde_json::{Value, json};

pub use crate::store::audit_trail::SignedDigest;

/// The bytes a digest signs.
pub fn message(sequence: i64, hash: &[u8], signed_at: DateTime<Utc>) -> Vec<u8> {
    format!(
        "ecr-gateway-audit-digest:v1:{sequence}:{}:{}",
        hex::encode(hash),
        signed_at.to_rfc3339_opts(SecondsFormat::Micros, true)
    )
    .into_bytes()
}

/// Signs the chain head `(sequence, hash)` at `signed_at` (kept to the microsecond, as stored).
pub fn sign(key: &SigningKey, sequence: i64, hash: &[u8], signed_at: DateTime<Utc>) -> SignedDigest {
    let signed_at = signed_at.trunc_subsecs(6);
    let signature = key.sign(&message(sequence, hash, signed_at));
    SignedDigest {
        sequence,
        hash: hash.to_vec(),
        signed_at,
        public_key: key.verifying_key().to_bytes().to_vec(),
        signature: signature.to_bytes().to_vec(),
    }
}

/// Checks a digest's signature against the trusted key.
pub fn check(digest: &SignedDigest, trusted: &VerifyingKey) -> Result<(), String> {
    if digest.public_key != trusted.to_bytes() {
        return Err(format!(
            "the digest of sequence {} was signed by key {}, not the key given",
            digest.sequence,
            hex::encode(&digest.public_key)
        ));
    }
    let signature = Signature::from_slice(&digest.signature).map_err(|_| {
        format!(
            "the digest of sequence {} has a malformed signature",
            digest.sequence
        )
    })?;
    trusted
        .verify(
            &message(digest.sequence, &digest.hash, digest.signed_at),
            &signature,
        )
        .map_err(|_| {
            format!(
                "the digest of sequence {} does not verify: it was altered",
                digest.sequence
            )
        })
}

/// Reads a signing key: a file holding the 32-byte seed as 64 hex characters.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{}: not an Ed25519 key (64 hex characters)", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Reads a public key: 64 hex characters, or a file holding them.
pub fn parse_public_key(text_or_path: &str) -> Result<VerifyingKey, String> {
    let text = if Path::new(text_or_path).is_file() {
        std::fs::read_to_string(text_or_path).map_err(|e| format!("cannot read {text_or_path}: {e}"))?
    } else {
        text_or_path.to_owned()
    };
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "a public key is 64 hex characters (or a file holding them)".to_owned())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid Ed25519 public key".to_owned())
}

/// A new random signing key.
pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// The export line of a digest.
pub fn export_json(digest: &SignedDigest) -> Value {
    json!({"digest": {
        "sequence": digest.sequence,
        "hash": hex::encode(&digest.hash),
        "signedAt": digest.signed_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "publicKey": hex::encode(&digest.public_key),
        "signature": hex::encode(&digest.signature),
    }})
}

/// Reads a digest line of an export (None: the line is not a digest).
pub fn from_export(value: &Value) -> Option<Result<SignedDigest, String>> {
    let digest = value.get("digest")?;
    let hex_of = |name: &str| {
        digest
            .get(name)
            .and_then(Value::as_str)
            .and_then(|h| hex::decode(h).ok())
    };
    let parsed = (|| {
        Some(SignedDigest {
            sequence: digest.get("sequence")?.as_i64()?,
            hash: hex_of("hash")?,
            signed_at: DateTime::parse_from_rfc3339(digest.get("signedAt")?.as_str()?)
                .ok()?
                .with_timezone(&Utc),
            public_key: hex_of("publicKey")?,
            signature: hex_of("signature")?,
        })
    })();
    Some(parsed.ok_or_else(|| "a digest line with missing or malformed fields".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_verifies_with_its_key_and_not_when_altered_or_with_another() {
        let key = generate();
        let at = Utc::now();
        let digest = sign(&key, 42, &[9; 32], at);
        assert_eq!(check(&digest, &key.verifying_key()), Ok(()));
        let line = export_json(&digest);
        assert_eq!(from_export(&line), Some(Ok(digest.clone())));

        let mut moved = digest.clone();
        moved.hash = vec![8; 32];
        assert!(
            check(&moved, &key.verifying_key())
                .unwrap_err()
                .contains("altered")
        );
        let other = generate();
        assert!(
            check(&digest, &other.verifying_key())
                .unwrap_err()
                .contains("not the key given")
        );
        assert!(parse_public_key("abc").is_err());
        assert_eq!(
            parse_public_key(&hex::encode(key.verifying_key().to_bytes())).unwrap(),
            key.verifying_key()
        );
    }
}

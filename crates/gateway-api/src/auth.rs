//! API keys: `[api.keys]` maps each key to a user id.
//!
//! Keys are compared in constant time (SHA-256 digests compared with `subtle`, every
//! configured key checked), so timing tells nothing about a key's length or prefix.
//! No keys configured means every request is refused. Keys never reach a log, an
//! error message or a span.

use std::collections::BTreeMap;

use anyhow::bail;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Why a request was not authenticated; the messages are safe to show the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "this gateway has no API keys configured, so it refuses every request; an operator must add [api.keys] to nexus.toml"
    )]
    NoKeysConfigured,
    #[error("missing API key: send `Authorization: Bearer <key>`")]
    Missing,
    #[error("invalid API key")]
    Invalid,
}

/// The configured keys, as digests, with the user id each one stands for.
pub struct ApiKeys {
    keys: Vec<([u8; 32], String)>,
}

impl ApiKeys {
    /// Validates `[api.keys]`: user ids must be able to name `USER_<id>.md`.
    pub fn new(keys: &BTreeMap<String, String>) -> anyhow::Result<Self> {
        let mut out = Vec::with_capacity(keys.len());
        for (key, user) in keys {
            if !valid_user_id(user) {
                bail!(
                    "[api.keys]: user id {user:?} is invalid (1 to 128 of A-Z, a-z, 0-9, '-', '_')"
                );
            }
            if key.trim().is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!("[api.keys]: the key of user {user:?} is empty or holds whitespace");
            }
            out.push((digest(key), user.clone()));
        }
        Ok(Self { keys: out })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The user id bound to the credentials of an `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<String, AuthError> {
        if self.keys.is_empty() {
            return Err(AuthError::NoKeysConfigured);
        }
        let presented = authorization.and_then(bearer).ok_or(AuthError::Missing)?;
        let presented = digest(presented);
        // Every key is compared, so the time taken does not say which one matched.
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, (key, _)) in self.keys.iter().enumerate() {
            let hit = key.ct_eq(&presented);
            index.conditional_assign(&u32::try_from(i).unwrap_or(u32::MAX), hit);
            found |= hit;
        }
        if bool::from(found) {
            self.keys
                .get(index as usize)
                .map(|(_, user)| user.clone())
                .ok_or(AuthError::Invalid)
        } else {
            Err(AuthError::Invalid)
        }
    }
}

/// The credentials of `Bearer <key>` (scheme case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let key = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Whether a user id can name `USER_<id>.md` (memory-svc's rule) and prefix a chat id.
pub fn valid_user_id(user: &str) -> bool {
    (1..=128).contains(&user.len())
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pairs: &[(&str, &str)]) -> ApiKeys {
        ApiKeys::new(
            &pairs
                .iter()
                .map(|(k, u)| ((*k).to_owned(), (*u).to_owned()))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn a_bearer_key_maps_to_its_user_and_anything_else_is_refused() {
        let k = keys(&[("key-alice-123", "alice"), ("key-bob-456", "bob")]);
        assert_eq!(k.authenticate(Some("Bearer key-bob-456")).unwrap(), "bob");
        assert_eq!(
            k.authenticate(Some("bearer key-alice-123")).unwrap(),
            "alice"
        );
        assert_eq!(k.authenticate(None), Err(AuthError::Missing));
        assert_eq!(k.authenticate(Some("key-bob-456")), Err(AuthError::Missing));
        assert_eq!(
            k.authenticate(Some("Basic key-bob-456")),
            Err(AuthError::Missing)
        );
        assert_eq!(
            k.authenticate(Some("Bearer key-bob-45")),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            k.authenticate(Some("Bearer key-bob-4567")),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn without_keys_every_request_is_refused_with_a_clear_message() {
        let k = keys(&[]);
        let err = k.authenticate(Some("Bearer anything")).unwrap_err();
        assert_eq!(err, AuthError::NoKeysConfigured);
        assert!(err.to_string().contains("[api.keys]"));
    }

    #[test]
    fn user_ids_that_cannot_name_a_profile_file_are_refused_without_showing_the_key() {
        let bad: BTreeMap<String, String> = [("secret-key-1".to_owned(), "../x".to_owned())].into();
        let err = ApiKeys::new(&bad).err().unwrap().to_string();
        assert!(
            err.contains("../x") && !err.contains("secret-key-1"),
            "{err}"
        );
    }
}

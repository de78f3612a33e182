//! Admin sessions without shared state: a login with one of `[api] admin_keys` gets
//! a cookie `v1.<expiry>.<nonce>.<mac>`, the MAC an HMAC-SHA256 of
//! `admin|<expiry>|<nonce>` keyed by a digest of that admin key. Any replica with
//! the same keys verifies it; removing a key from the settings ends its sessions.
//! The CSRF token of a session is another HMAC of the same nonce, so forms carry a
//! per-session token that no other site can know.
//!
//! Keys and MACs are compared in constant time; a key never reaches a log, a cookie
//! or a page.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Name of the session cookie.
pub const COOKIE: &str = "nexus_admin";
/// How long a login lasts.
pub const SESSION_SECS: i64 = 12 * 3600;

/// The admin keys, kept only as the secrets derived from them.
pub struct AdminKeys {
    /// SHA-256 of each key, for the login comparison.
    digests: Vec<[u8; 32]>,
    /// The MAC key of each admin key's sessions.
    mac_keys: Vec<[u8; 32]>,
}

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub expires_at: i64,
    nonce: String,
    key_index: usize,
}

impl AdminKeys {
    pub fn new(keys: &[String]) -> Self {
        Self {
            digests: keys
                .iter()
                .map(|k| Sha256::digest(k.as_bytes()).into())
                .collect(),
            mac_keys: keys
                .iter()
                .map(|k| {
                    let mut h = Sha256::new();
                    h.update(b"nexus admin session\0");
                    h.update(k.as_bytes());
                    h.finalize().into()
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Which admin key `presented` is, comparing against every one.
    fn matching(&self, presented: &str) -> Option<usize> {
        let presented: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        let mut found = None;
        for (i, d) in self.digests.iter().enumerate() {
            if bool::from(d.ct_eq(&presented)) && found.is_none() {
                found = Some(i);
            }
        }
        found
    }

    /// A new session for `presented` if it is an admin key: the session and its cookie value.
    pub fn login(&self, presented: &str, now_secs: i64) -> Option<(Session, String)> {
        let key_index = self.matching(presented)?;
        let session = Session {
            expires_at: now_secs + SESSION_SECS,
            nonce: uuid::Uuid::new_v4().simple().to_string(),
            key_index,
        };
        let mac = self.mac(&session, "admin");
        let value = format!("v1.{}.{}.{}", session.expires_at, session.nonce, mac);
        Some((session, value))
    }

    /// The session a cookie value stands for, if it is genuine and not expired.
    pub fn verify(&self, value: &str, now_secs: i64) -> Option<Session> {
        let mut parts = value.split('.');
        let (Some("v1"), Some(exp), Some(nonce), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let expires_at: i64 = exp.parse().ok()?;
        if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut found = None;
        for key_index in 0..self.mac_keys.len() {
            let candidate = Session {
                expires_at,
                nonce: nonce.to_owned(),
                key_index,
            };
            let expected = self.mac(&candidate, "admin");
            if bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) && found.is_none() {
                found = Some(candidate);
            }
        }
        found.filter(|s| now_secs < s.expires_at)
    }

    /// The token the session's forms carry.
    pub fn csrf(&self, session: &Session) -> String {
        self.mac(session, "csrf")
    }

    /// Whether `presented` is the session's CSRF token.
    pub fn csrf_ok(&self, session: &Session, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| bool::from(self.csrf(session).as_bytes().ct_eq(p.as_bytes())))
    }

    fn mac(&self, session: &Session, purpose: &str) -> String {
        let key = self
            .mac_keys
            .get(session.key_index)
            .copied()
            .unwrap_or_default();
        // HMAC takes keys of any length; this cannot fail.
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&key) else {
            return String::new();
        };
        mac.update(format!("{purpose}|{}|{}", session.expires_at, session.nonce).as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn keys() -> AdminKeys {
        AdminKeys::new(&["admin-key-0123456789".into(), "other-key-0123456789".into()])
    }

    #[test]
    fn a_login_with_an_admin_key_gives_a_cookie_that_verifies_until_it_expires() {
        let k = keys();
        assert!(k.login("admin-key-012345678", NOW).is_none());
        assert!(k.login("", NOW).is_none());
        let (session, value) = k.login("other-key-0123456789", NOW).unwrap();
        assert_eq!(k.verify(&value, NOW + 60), Some(session.clone()));
        assert_eq!(k.verify(&value, NOW + SESSION_SECS), None);
        assert!(!value.contains("other-key"));
        // Another deployment (other keys) does not accept it.
        let other = AdminKeys::new(&["third-key-0123456789".into()]);
        assert_eq!(other.verify(&value, NOW), None);
    }

    #[test]
    fn a_changed_expiry_nonce_or_mac_is_refused() {
        let k = keys();
        let (_, value) = k.login("admin-key-0123456789", NOW).unwrap();
        let parts: Vec<&str> = value.split('.').collect();
        let later = format!("v1.{}.{}.{}", NOW + 10 * SESSION_SECS, parts[2], parts[3]);
        assert_eq!(k.verify(&later, NOW), None);
        let nonce = format!("v1.{}.{}.{}", parts[1], "0".repeat(32), parts[3]);
        assert_eq!(k.verify(&nonce, NOW), None);
        let mac = format!("v1.{}.{}.{}", parts[1], parts[2], "0".repeat(64));
        assert_eq!(k.verify(&mac, NOW), None);
        assert_eq!(k.verify("garbage", NOW), None);
        assert_eq!(k.verify(&format!("{value}.x"), NOW), None);
    }

    #[test]
    fn the_csrf_token_belongs_to_one_session() {
        let k = keys();
        let (a, _) = k.login("admin-key-0123456789", NOW).unwrap();
        let (b, _) = k.login("admin-key-0123456789", NOW).unwrap();
        assert!(k.csrf_ok(&a, Some(&k.csrf(&a))));
        assert!(!k.csrf_ok(&a, Some(&k.csrf(&b))));
        assert!(!k.csrf_ok(&a, None));
        assert!(!k.csrf_ok(&a, Some("")));
    }

    #[test]
    fn cookies_are_found_by_name() {
        assert_eq!(cookie("a=1; nexus_admin=v1.x; b=2", COOKIE), Some("v1.x"));
        assert_eq!(cookie("nexus_admin_old=1", COOKIE), None);
    }
}

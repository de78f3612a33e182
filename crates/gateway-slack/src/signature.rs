//! Slack request signing: `v0=hex(HMAC-SHA256(signing secret, "v0:{timestamp}:{raw body}"))`
//! in `X-Slack-Signature`, with the timestamp from `X-Slack-Request-Timestamp`.
//!
//! This module owns the only check that stands between the internet and a turn; it
//! must never accept a request whose body or timestamp was not signed, or whose
//! timestamp is more than [`MAX_SKEW_SECS`] away from now (replays).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Requests whose timestamp is further than this from now are refused (Slack's five minutes).
pub const MAX_SKEW_SECS: i64 = 5 * 60;

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-slack-signature";
/// Header carrying the signed timestamp (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";

/// Why a request was refused. None of them says anything about the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Slack-Signature or X-Slack-Request-Timestamp")]
    Missing,
    #[error("X-Slack-Request-Timestamp is not a Unix timestamp")]
    BadTimestamp,
    #[error("request timestamp is more than five minutes away from now")]
    Stale,
    #[error("X-Slack-Signature is not of the form v0=<hex>")]
    Malformed,
    #[error("signature does not match")]
    Mismatch,
}

fn mac(secret: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac
}

/// The `X-Slack-Signature` value Slack would send for this timestamp and body.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    format!(
        "v0={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Checks a request's signature and timestamp against `now_secs` (Unix seconds).
/// The comparison is constant-time.
pub fn verify(
    secret: &str,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), SignatureError> {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(SignatureError::Missing);
    };
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if now_secs.abs_diff(ts) > MAX_SKEW_SECS as u64 {
        return Err(SignatureError::Stale);
    }
    let expected = signature
        .trim()
        .strip_prefix("v0=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(SignatureError::Malformed)?;
    mac(secret, timestamp.trim(), body)
        .verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    nexus_common::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    // The worked example of Slack's "Verifying requests from Slack" guide.
    const DOC_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const DOC_TS: &str = "1531420618";
    const DOC_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const DOC_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    #[test]
    fn slacks_documented_example_signs_and_verifies() {
        assert_eq!(sign(DOC_SECRET, DOC_TS, DOC_BODY.as_bytes()), DOC_SIG);
        let now = 1_531_420_618 + 10;
        assert_eq!(
            verify(
                DOC_SECRET,
                Some(DOC_TS),
                Some(DOC_SIG),
                DOC_BODY.as_bytes(),
                now
            ),
            Ok(())
        );
    }

    #[test]
    fn independently_computed_vectors_match() {
        // Computed with Python's hmac module.
        assert_eq!(
            sign("s3cr3t", "1700000000", br#"{"a":1}"#),
            "v0=e9059c43cd474a569209c909bf322c65b8cb12b70b2ffea21dad45a992d0bb04"
        );
        assert_eq!(
            sign("", "0", b""),
            "v0=05d07c4bf47bd5859ab994f77c2493a1d715dd26ac0a43114e18411257ef4083"
        );
    }

    #[test]
    fn a_changed_body_timestamp_or_secret_is_refused() {
        let now = 1_531_420_618;
        let body = DOC_BODY.as_bytes();
        let mut tampered = body.to_vec();
        tampered[10] ^= 1;
        assert_eq!(
            verify(DOC_SECRET, Some(DOC_TS), Some(DOC_SIG), &tampered, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(DOC_SECRET, Some("1531420619"), Some(DOC_SIG), body, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("another-secret", Some(DOC_TS), Some(DOC_SIG), body, now),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_malformed_and_stale_requests_are_refused() {
        let body = DOC_BODY.as_bytes();
        let ts: i64 = DOC_TS.parse().unwrap();
        assert_eq!(
            verify(DOC_SECRET, None, Some(DOC_SIG), body, ts),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(DOC_SECRET, Some(DOC_TS), None, body, ts),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(DOC_SECRET, Some("soon"), Some(DOC_SIG), body, ts),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            verify(DOC_SECRET, Some(DOC_TS), Some("a2114d57"), body, ts),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(DOC_SECRET, Some(DOC_TS), Some("v0=zz"), body, ts),
            Err(SignatureError::Malformed)
        );
        // Five minutes either way is the limit, inclusive.
        assert_eq!(
            verify(DOC_SECRET, Some(DOC_TS), Some(DOC_SIG), body, ts + 300),
            Ok(())
        );
        assert_eq!(
            verify(DOC_SECRET, Some(DOC_TS), Some(DOC_SIG), body, ts + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(DOC_SECRET, Some(DOC_TS), Some(DOC_SIG), body, ts - 301),
            Err(SignatureError::Stale)
        );
    }
}

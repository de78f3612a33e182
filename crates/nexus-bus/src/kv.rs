//! KV buckets: opened or created with the KV layout, and the key encoding.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::{Bus, BusError};

impl Bus {
    /// Opens a KV bucket, creating it (with `history` revisions per key) if missing.
    ///
    /// Not `create_key_value`: async-nats 0.51 first queries the account and cannot
    /// parse a 2.9 server's answer (no `reserved_memory`), so the bucket's backing
    /// stream is created here with the KV layout, which every server version accepts.
    pub async fn ensure_kv_bucket(
        &self,
        bucket: &str,
        history: i64,
        max_age: Option<Duration>,
        description: &str,
    ) -> Result<jetstream::kv::Store, BusError> {
        if let Ok(store) = self.js.get_key_value(bucket).await {
            return Ok(store);
        }
        let config = stream::Config {
            name: format!("KV_{bucket}"),
            description: Some(description.to_owned()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: history.max(1),
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            max_age: max_age.unwrap_or_default(),
            ..Default::default()
        };
        // Another replica may create it at the same moment; opening afterwards decides.
        let created = self.js.create_stream(config).await;
        self.js.get_key_value(bucket).await.map_err(|e| {
            BusError::Nats(format!(
                "KV bucket {bucket}: {e}{}",
                created
                    .err()
                    .map(|c| format!(" (create: {c})"))
                    .unwrap_or_default()
            ))
        })
    }
}

/// KV keys allow `[-/_=.a-zA-Z0-9]` and may not start or end with `.`; anything
/// outside `[-/_a-zA-Z0-9]` is written as `=xx` (hex), so distinct ids stay distinct.
pub fn kv_key(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_keys_are_valid_and_distinct() {
        assert_eq!(kv_key("reply:telegram:12"), "reply=3atelegram=3a12");
        assert_eq!(kv_key("+49.1"), "=2b49=2e1");
        assert_ne!(kv_key("a:b"), kv_key("a=3ab"));
        assert!(!kv_key(".x.").starts_with('.') && !kv_key(".x.").ends_with('.'));
        assert!(
            kv_key("+49 151@s.whatsapp.net")
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_/=.".contains(&b))
        );
    }
}

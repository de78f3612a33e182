//! The media object store: bytes a message carries by reference.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use nexus_proto::v1;

use crate::{Bus, BusError};

impl Bus {
    /// The media object store of the namespace (created on first use; objects expire after 30 days).
    pub async fn media_store(&self) -> Result<jetstream::object_store::ObjectStore, BusError> {
        let bucket = self.subjects.media_bucket();
        if let Ok(store) = self.js.get_object_store(&bucket).await {
            return Ok(store);
        }
        self.js
            .create_object_store(jetstream::object_store::Config {
                bucket: bucket.clone(),
                description: Some("media carried by messages".into()),
                max_age: Duration::from_secs(30 * 24 * 3600),
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::Nats(format!("object store {bucket}: {e}")))
    }

    /// Stores media bytes and returns the reference a message carries. `key` should be
    /// derived from the upstream id so a redelivery overwrites instead of duplicating.
    pub async fn put_media(
        &self,
        key: &str,
        kind: v1::media_ref::Kind,
        mime_type: &str,
        file_name: &str,
        caption: &str,
        bytes: &[u8],
    ) -> Result<v1::MediaRef, BusError> {
        let store = self.media_store().await?;
        let mut reader = bytes;
        store
            .put(key, &mut reader)
            .await
            .map_err(|e| BusError::Nats(format!("storing media {key}: {e}")))?;
        Ok(v1::MediaRef {
            kind: kind as i32,
            bucket: self.subjects.media_bucket(),
            key: key.to_owned(),
            mime_type: mime_type.to_owned(),
            file_name: file_name.to_owned(),
            size_bytes: bytes.len() as u64,
            caption: caption.to_owned(),
        })
    }

    /// Reads the bytes behind a media reference (at most `max_bytes`).
    pub async fn get_media(
        &self,
        media: &v1::MediaRef,
        max_bytes: usize,
    ) -> Result<Vec<u8>, BusError> {
        use tokio::io::AsyncReadExt;
        if media.bucket != self.subjects.media_bucket() {
            return Err(BusError::Nats(format!(
                "media bucket {} is not this namespace's",
                media.bucket
            )));
        }
        let store = self.media_store().await?;
        let object = store
            .get(&media.key)
            .await
            .map_err(|e| BusError::Nats(format!("reading media {}: {e}", media.key)))?;
        let mut out = Vec::new();
        object
            .take(max_bytes as u64 + 1)
            .read_to_end(&mut out)
            .await
            .map_err(|e| BusError::Nats(format!("reading media {}: {e}", media.key)))?;
        if out.len() > max_bytes {
            return Err(BusError::Nats(format!(
                "media {} is larger than {max_bytes} bytes",
                media.key
            )));
        }
        Ok(out)
    }
}

//! Queue depth for the `nexus.queue.depth` gauge: how many messages of a stream
//! wait for a group of consumers (pending plus delivered and not yet acked).

use std::time::Duration;

use futures::TryStreamExt as _;
use nexus_common::shutdown::CancellationToken;

use crate::{Bus, BusError};

/// How often the depth is sampled: one consumer listing per period and process.
const QUEUE_DEPTH_PERIOD: Duration = Duration::from_secs(15);

impl Bus {
    /// Messages of `stream` waiting for its consumers named `prefix…` (one page of
    /// the consumer list per call, however many partitions).
    pub async fn queue_depth(&self, stream: &str, prefix: &str) -> Result<u64, BusError> {
        let stream = self.js.get_stream(stream).await.map_err(BusError::nats)?;
        let mut consumers = stream.consumers();
        let mut depth = 0;
        while let Some(info) = consumers.try_next().await.map_err(BusError::nats)? {
            if info.name.starts_with(prefix) {
                depth += info.num_pending + info.num_ack_pending as u64;
            }
        }
        Ok(depth)
    }

    /// Samples [`Bus::queue_depth`] into the gauge as `(stream, label)` every
    /// [`QUEUE_DEPTH_PERIOD`] until `shutdown`; returns at once when no metrics
    /// are recorded, so it costs nothing then.
    pub async fn sample_queue_depth(
        self,
        stream: String,
        prefix: String,
        label: String,
        shutdown: CancellationToken,
    ) {
        if !nexus_common::telemetry::metrics_enabled() {
            return;
        }
        let mut tick = tokio::time::interval(QUEUE_DEPTH_PERIOD);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.queue_depth(&stream, &prefix).await {
                Ok(depth) => nexus_common::telemetry::set_queue_depth(&stream, &label, depth),
                Err(error) => tracing::debug!(%error, stream, "queue depth not sampled"),
            }
        }
    }
}

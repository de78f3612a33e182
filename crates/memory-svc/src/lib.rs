//! memory-svc: session history in SQL and the Markdown memory of the workspace,
//! served on `N.memory.<op>` through the NATS service API.
//!
//! It owns the session store (`store`), the workspace's Markdown files
//! (`files`), their search index (`index`, chunked by `markdown`), the
//! meaning of each operation (`ops`), the memory tools `remember` and
//! `memory_search` (`tools`, writing through `edit`), the daily journals and
//! consolidated facts (`journal`, from summaries agent-core writes), the usage
//! ledger (`usage`, fed by `llm_usage` events) and the request loop (`server`). agent-core builds prompts from what it answers and never reads
//! the disk itself.
//!
//! It must never call an LLM or another service's tool, never publish to a
//! stream (but consumes one: the usage events), and never exit or panic because of one bad request.

pub mod edit;
pub mod files;
pub mod index;
pub mod journal;
pub mod markdown;
pub mod ops;
pub mod server;
pub mod store;
pub mod tools;
pub mod usage;

use std::sync::Arc;

use anyhow::Context as _;
use nexus_bus::Bus;
use nexus_common::Config;
use tokio_util::sync::CancellationToken;

pub use files::MarkdownFiles;
pub use index::{MemoryIndex, UserId};
pub use ops::{Memory, OpError};
pub use store::{ChunkHit, Identity, ModelOverride, SessionStore, StoreError};
pub use tools::MemoryTools;

/// Runs memory-svc until `shutdown` is cancelled: templates, database,
/// NATS, then requests. Returns once every request in flight has answered.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let files = MarkdownFiles::new(&config.workspace);
    let written = files.ensure_templates().await.with_context(|| {
        format!(
            "cannot prepare the workspace {}",
            config.workspace.display()
        )
    })?;
    if !written.is_empty() {
        tracing::info!(files = ?written, workspace = %config.workspace.display(), "wrote missing templates");
    }

    let url = config.database_url();
    let store = SessionStore::connect(&url)
        .await
        .context("cannot open the session store")?;
    tracing::info!(
        backend = store.backend(),
        database = %store::redact_url(&url),
        "session store ready"
    );

    let result = async {
        let bus = Bus::connect(&config, server::SERVICE_NAME).await?;
        let index = MemoryIndex::new(store.clone(), files.root());
        let tools = Arc::new(MemoryTools::new(index.clone())).serve(&config.tools);
        let memory = Arc::new(
            Memory::new(store.clone(), files, index, &config.memory)
                .context("[memory] timezone")?,
        );
        // Summaries a crash left unwritten go to the files before anything else.
        match memory.journal().apply_pending().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(summaries = n, "journal caught up after a restart"),
            Err(error) => {
                tracing::warn!(%error, "journal not caught up; retried on the next sweep")
            }
        }
        let ledger = tokio::spawn(usage::run(bus.clone(), store.clone(), shutdown.clone()));
        let served =
            server::serve(&bus, memory, tools, config.tools.max_output_bytes, shutdown).await;
        if let Err(error) = ledger.await {
            tracing::error!(%error, "usage ledger task failed");
        }
        bus.drain().await;
        served
    }
    .await;
    store.close().await;
    result
}

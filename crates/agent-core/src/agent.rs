//! The process-wide `Agent`: the clients, settings and wake-ups every turn of a
//! replica shares. What a turn does with them lives in `turn.rs`; approvals in
//! `approvals.rs`; chat commands in `commands.rs`.

use std::sync::Arc;

use nexus_bus::Bus;
use nexus_common::Config;

use crate::{
    llm::{ChatModel, genai_model::ProviderEnv, router::ModelRouter},
    tools::ToolDirectory,
};

/// `LlmUsage.purpose` of the calls that answer a message.
pub const USAGE_TURN: &str = "turn";

/// Everything a turn needs; shared by all turns of a replica.
pub struct Agent {
    pub bus: Bus,
    pub model: Arc<dyn ChatModel>,
    pub router: ModelRouter,
    pub tools: ToolDirectory,
    pub config: Arc<Config>,
    /// Which providers are configured, to check `/model <name>` before accepting it.
    pub providers: ProviderEnv,
    /// The approvals bucket, opened on first use.
    pub approvals: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    /// Wakes the journal writer when a session has turns to summarize.
    pub journal: crate::journal::Wake,
    /// The tasks bucket, opened on first use.
    pub tasks_kv: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    /// Files each sub-agent running here wrote so far, by task id.
    pub task_files: std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>,
    /// The rate-log and notice bucket of `[limits]`, opened on first use.
    pub limits_kv: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    /// The bucket of admins' per-user limits, opened on first use.
    pub user_limits_kv: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    /// What `user_limits_kv` said per user lately.
    pub user_limits_seen: crate::recent::Recent<nexus_proto::v1::UserLimits>,
    /// The bucket of admins' deployment-wide choices, opened on first use.
    pub settings_kv: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    /// The model for everyone as read lately from `settings_kv`.
    pub model_for_everyone: crate::recent::Recent<String>,
}

/// The provider part of a model name (`openai::x` → `openai`), or the name's family.
pub(crate) fn provider_of(model: &str) -> String {
    match model.split_once("::") {
        Some((p, _)) => p.to_owned(),
        None => model.split(['-', ':']).next().unwrap_or(model).to_owned(),
    }
}

//! Chat commands answered by agent-core itself, on every channel: /help, /new,
//! /model, /stop, /tasks, /cancel <task>, and for admins (`[agent] admins`) /pair and
//! /model all — parsed here, and carried out here ([`Agent::command`]).

use nexus_bus::{BusError, MemoryOp};
use nexus_common::now_ms;
use nexus_gateway::pairing::{Pairing, PairingCode, for_how_long};
use nexus_proto::v1::{
    IdentityRequest, IdentityResponse, ResolveIdentity, SessionCommandRequest,
    SessionCommandResponse, identity_request, session_command_request,
};

use crate::{agent::Agent, turn::Turn};

/// A recognised command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    /// Start a fresh session; the old one is archived.
    New,
    /// Cancel the turn in flight in this session.
    Stop,
    ShowModel,
    /// `/model <name>`; `default` clears the choice.
    SetModel(String),
    /// `/model all <name>` (admins only): the model of every conversation that did
    /// not choose its own; `default` clears it.
    SetModelForEveryone(String),
    /// The chat's running and recent tasks.
    Tasks,
    /// `/cancel <task id>`: stop a task.
    CancelTask(String),
    /// `/pair list|approve <code> [user]|reject <code>` (admins only); the words after /pair.
    Pair(String),
}

/// What /help says.
pub const HELP: &str = "Commands:\n\
/new — start a fresh conversation (the current one is archived)\n\
/model — show the model; /model <name> — use another model here; /model default — back to the configured one\n\
/model all <name> — the model for everyone; /model all default — back to the configured one (admins only)\n\
/stop — cancel what I am working on\n\
/tasks — background tasks of this chat; /cancel <id> — stop one\n\
/pair list | approve <code> [user] | reject <code> — pairing requests of new senders (admins only)\n\
/help — this list";

/// What a non-admin hears for an admin command.
const ADMINS_ONLY: &str =
    "Sorry, /pair is for admins only. Ask an admin to approve or reject pairing codes.";
const MODEL_ALL_ADMINS_ONLY: &str = "Sorry, /model all is for admins only. \
     /model <name> changes the model of this conversation.";
/// The key of the model for everyone in the settings bucket.
const EVERYONE_MODEL_KEY: &str = "model";
const PAIR_USAGE: &str = "Use /pair list, /pair approve <code> [user id], or /pair reject <code>.";

impl Command {
    /// Parses a message; `None` when it is not a command (text is for the model).
    /// Accepts Telegram's `/cmd@botname` form.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let rest = text.strip_prefix('/')?;
        let (head, arg) = match rest.split_once(char::is_whitespace) {
            Some((h, a)) => (h, a.trim()),
            None => (rest, ""),
        };
        let name = head.split('@').next().unwrap_or(head).to_ascii_lowercase();
        Some(match name.as_str() {
            "help" | "start" => Self::Help,
            "new" | "reset" => Self::New,
            "stop" => Self::Stop,
            "cancel" if arg.is_empty() => Self::Stop,
            "cancel" => Self::CancelTask(arg.to_owned()),
            "tasks" => Self::Tasks,
            "model" if arg.is_empty() => Self::ShowModel,
            "model" => match arg.split_once(char::is_whitespace) {
                Some(("all", name)) => Self::SetModelForEveryone(name.trim().to_owned()),
                _ => Self::SetModel(arg.to_owned()),
            },
            "pair" => Self::Pair(arg.to_owned()),
            _ => return None,
        })
    }

    /// Whether a raw message is `/stop` (checked on the live feed, before its turn).
    pub fn is_stop(text: &str) -> bool {
        matches!(Self::parse(text), Some(Self::Stop))
    }
}

impl Agent {
    async fn settings_kv(&self) -> Result<&async_nats::jetstream::kv::Store, BusError> {
        self.settings_kv
            .get_or_try_init(|| async {
                self.bus
                    .ensure_kv_bucket(
                        &self.bus.subjects().settings_bucket(),
                        5,
                        None,
                        "deployment-wide choices admins make from a chat",
                    )
                    .await
            })
            .await
    }

    /// The model an admin set for everyone with `/model all`; empty when none. A
    /// bucket that cannot be read means none: the configured models still answer.
    pub(crate) async fn model_for_everyone(&self) -> String {
        if let Some(model) = self.model_for_everyone.fresh(EVERYONE_MODEL_KEY) {
            return model;
        }
        let read = async {
            let entry = self.settings_kv().await?.get(EVERYONE_MODEL_KEY).await;
            entry.map_err(|e| BusError::Nats(e.to_string()))
        };
        match read.await {
            Ok(value) => {
                let model = value
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_default();
                self.model_for_everyone
                    .remember(EVERYONE_MODEL_KEY, model.clone());
                model
            }
            Err(error) => {
                tracing::warn!(%error, "the model for everyone is unreadable; using the configured one");
                String::new()
            }
        }
    }

    /// The model a /model command names (empty for `default`), or what to answer
    /// when no configured provider can run it.
    fn usable_model(&self, name: String) -> Result<String, String> {
        if name == "default" {
            return Ok(String::new());
        }
        match self.providers.check(&name) {
            Ok(_) => Ok(name),
            Err(e) => Err(format!("I cannot use \"{name}\": {}", e.user_message())),
        }
    }

    /// Stores (or, empty, clears) the model for everyone.
    async fn set_model_for_everyone(&self, model: &str) -> Result<(), BusError> {
        let kv = self.settings_kv().await?;
        if model.is_empty() {
            kv.delete(EVERYONE_MODEL_KEY)
                .await
                .map_err(|e| BusError::Nats(e.to_string()))?;
        } else {
            kv.put(EVERYONE_MODEL_KEY, model.to_owned().into())
                .await
                .map_err(|e| BusError::Nats(e.to_string()))?;
        }
        self.model_for_everyone
            .remember(EVERYONE_MODEL_KEY, model.to_owned());
        Ok(())
    }

    pub(crate) async fn session_command(
        &self,
        turn: &Turn,
        command: session_command_request::Command,
    ) -> Result<SessionCommandResponse, BusError> {
        self.bus
            .request(
                self.bus.subjects().memory(MemoryOp::Session),
                &SessionCommandRequest {
                    session: Some(turn.session_ref()),
                    command: Some(command),
                },
                &turn.trace,
                None,
            )
            .await
    }

    /// Whether the sender of a turn is one of `[agent] admins`: by the user id the
    /// gateway named, or the one memory-svc links their sender id to.
    async fn is_admin(&self, turn: &Turn) -> Result<bool, BusError> {
        let admins = &self.config.agent.admins;
        if admins.is_empty() {
            return Ok(false);
        }
        if admins.contains(&turn.user_id) {
            return Ok(true);
        }
        let sender = turn
            .msg
            .sender
            .as_ref()
            .map(|s| s.id.as_str())
            .unwrap_or("");
        if sender.is_empty() {
            return Ok(false);
        }
        let resolved: IdentityResponse = self
            .bus
            .request(
                self.bus.subjects().memory(MemoryOp::Identity),
                &IdentityRequest {
                    op: Some(identity_request::Op::Resolve(ResolveIdentity {
                        channel: turn.session.channel().to_string(),
                        sender_id: sender.to_owned(),
                    })),
                },
                &turn.trace,
                None,
            )
            .await?;
        Ok(admins.contains(&resolved.user_id))
    }

    /// `/pair …` from a chat: the admin's view of `nexus pair`.
    async fn pair(&self, turn: &Turn, args: &str) -> Result<String, BusError> {
        if !self.is_admin(turn).await? {
            tracing::info!(user = %turn.user_id, "/pair refused: not an admin");
            return Ok(ADMINS_ONLY.to_owned());
        }
        let words: Vec<&str> = args.split_whitespace().collect();
        let pairing = Pairing::open(&self.bus).await?;
        let now = now_ms();
        let by = turn.user_id.as_str();
        let said = match words.as_slice() {
            ["list"] => match pairing.pending(now).await {
                Ok(codes) if codes.is_empty() => "No pairing codes are waiting.".to_owned(),
                Ok(codes) => {
                    let lines: Vec<String> = codes.iter().map(|c| waiting(c, now)).collect();
                    format!("Pairing codes waiting:\n{}", lines.join("\n"))
                }
                Err(e) => format!("I could not read the pairing codes: {e}"),
            },
            ["approve", code] | ["approve", code, _] => {
                let user = words.get(2).copied();
                match pairing.approve(code, user, by, now).await {
                    Ok(c) => format!(
                        "Approved {}: {} may talk to me on {} now, as user {}.",
                        c.code,
                        who(&c),
                        c.channel,
                        c.user_id
                    ),
                    Err(e) => format!("Not approved: {e}."),
                }
            }
            ["reject", code] => match pairing.reject(code, by, now).await {
                Ok(c) => format!(
                    "Rejected {}: {} on {} gets no further answer.",
                    c.code,
                    who(&c),
                    c.channel
                ),
                Err(e) => format!("Not rejected: {e}."),
            },
            _ => PAIR_USAGE.to_owned(),
        };
        Ok(said)
    }

    /// Runs a chat command and returns the text to answer with.
    pub(crate) async fn command(&self, turn: &Turn, cmd: Command) -> Result<String, BusError> {
        use session_command_request::Command as Op;
        Ok(match cmd {
            Command::Help => HELP.to_owned(),
            Command::New => {
                let r = self.session_command(turn, Op::Reset(true)).await?;
                // The archived conversation goes to the journal now, not at the next sweep.
                if r.archived_turns > 0 {
                    self.journal.session(turn.session_ref());
                }
                let journal = if r.archived_turns > 0 && self.config.memory.journal {
                    " Its summary goes to the journal (memories/ in the workspace)."
                } else {
                    ""
                };
                format!(
                    "Started a new conversation. The previous one ({} turn{}) is archived.{journal}",
                    r.archived_turns,
                    if r.archived_turns == 1 { "" } else { "s" }
                )
            }
            Command::Tasks => self
                .list_tasks(turn)
                .await
                .map_err(|e| BusError::Nats(format!("tasks: {e}")))?,
            Command::CancelTask(id) => self
                .cancel_task(turn, &id)
                .await
                .map_err(|e| BusError::Nats(format!("tasks: {e}")))?,
            Command::Pair(args) => self.pair(turn, &args).await?,
            // The turn it stops was cancelled when the command was seen on the wire.
            Command::Stop => "Stopped. Send a new message when you are ready.".to_owned(),
            Command::ShowModel => {
                let ctx = self.context(turn).await?;
                let models = self.models_for(turn, &ctx).await;
                let everyone = self.model_for_everyone().await;
                let how = if let Some(chosen) = &ctx.model_override {
                    format!("chosen with /model {chosen}")
                } else if !everyone.is_empty() {
                    format!("chosen for everyone by an admin with /model all {everyone}")
                } else {
                    "configured".to_owned()
                };
                let routes = if self.config.llm.routes.is_empty() {
                    String::new()
                } else {
                    let names: Vec<&str> =
                        self.config.llm.routes.keys().map(String::as_str).collect();
                    format!(" Routes: {}.", names.join(", "))
                };
                format!(
                    "Models for this conversation, first choice first: {} ({how}).{routes} Change with /model <model or route>, or /model default.",
                    models.join(", ")
                )
            }
            Command::SetModel(name) => {
                let name = match self.usable_model(name) {
                    Ok(name) => name,
                    Err(refusal) => return Ok(refusal),
                };
                let r = self.session_command(turn, Op::SetModel(name)).await?;
                // What "configured" means now: an admin's choice for everyone wins.
                let everyone = self.model_for_everyone().await;
                let configured = if everyone.is_empty() {
                    self.config.llm.model.clone()
                } else {
                    everyone
                };
                if r.model_override.is_empty() {
                    format!("This conversation uses the configured model again ({configured}).")
                } else {
                    format!("This conversation now uses {}.", r.model_override)
                }
            }
            Command::SetModelForEveryone(name) => {
                if !self.is_admin(turn).await? {
                    tracing::info!(user = %turn.user_id, "/model all refused: not an admin");
                    return Ok(MODEL_ALL_ADMINS_ONLY.to_owned());
                }
                let name = match self.usable_model(name) {
                    Ok(name) => name,
                    Err(refusal) => return Ok(refusal),
                };
                self.set_model_for_everyone(&name).await?;
                tracing::info!(by = %turn.user_id, model = %name, "model for everyone set");
                if name.is_empty() {
                    format!(
                        "Everyone uses the configured model again ({}), except conversations that chose their own with /model.",
                        self.config.llm.model
                    )
                } else {
                    format!(
                        "Everyone now uses {name}, except conversations that chose their own with /model."
                    )
                }
            }
        })
    }
}

/// "Eve (sender 99)", or the sender id alone.
fn who(c: &PairingCode) -> String {
    if c.display_name.is_empty() {
        format!("sender {}", c.sender_id)
    } else {
        format!("{} (sender {})", c.display_name, c.sender_id)
    }
}

/// One waiting code for /pair list.
fn waiting(c: &PairingCode, now: i64) -> String {
    let secs = |ms: i64| u64::try_from(ms.max(0) / 1000).unwrap_or(0);
    format!(
        "{} — {} on {}, {} old, expires in {}",
        c.code,
        who(c),
        c.channel,
        for_how_long(secs(now - c.created_at_ms)),
        for_how_long(secs(c.expires_at_ms - now))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_recognised_and_other_text_is_left_to_the_model() {
        assert_eq!(Command::parse("/new"), Some(Command::New));
        assert_eq!(Command::parse("  /STOP "), Some(Command::Stop));
        assert_eq!(Command::parse("/help@nexus_bot"), Some(Command::Help));
        assert_eq!(Command::parse("/model"), Some(Command::ShowModel));
        assert_eq!(
            Command::parse("/model  claude-sonnet-4-5 "),
            Some(Command::SetModel("claude-sonnet-4-5".into()))
        );
        assert_eq!(Command::parse("/etc/hosts is a file"), None);
        assert_eq!(Command::parse("please /stop"), None);
        assert!(Command::is_stop("/stop"));
        assert!(Command::is_stop("/cancel"));
        assert_eq!(Command::parse("/tasks"), Some(Command::Tasks));
        assert_eq!(
            Command::parse("/cancel t0123456789"),
            Some(Command::CancelTask("t0123456789".into()))
        );
        assert!(!Command::is_stop("/cancel t0123456789"));
        assert_eq!(
            Command::parse("/pair approve ABCD-EFGH"),
            Some(Command::Pair("approve ABCD-EFGH".into()))
        );
        assert_eq!(Command::parse("/pair"), Some(Command::Pair(String::new())));
        assert_eq!(
            Command::parse("/model all  claude-sonnet-4-5"),
            Some(Command::SetModelForEveryone("claude-sonnet-4-5".into()))
        );
        // A model or route named "all" is still a conversation's choice.
        assert_eq!(
            Command::parse("/model all"),
            Some(Command::SetModel("all".into()))
        );
    }
}

//! Chat commands answered by agent-core itself, on every channel: /help, /new,
//! /model, /stop. Parsing only; `turn.rs` carries them out.

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
}

/// What /help says.
pub const HELP: &str = "Commands:\n\
/new — start a fresh conversation (the current one is archived)\n\
/model — show the model; /model <name> — use another model here; /model default — back to the configured one\n\
/stop — cancel what I am working on\n\
/help — this list";

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
            "stop" | "cancel" => Self::Stop,
            "model" if arg.is_empty() => Self::ShowModel,
            "model" => Self::SetModel(arg.to_owned()),
            _ => return None,
        })
    }

    /// Whether a raw message is `/stop` (checked on the live feed, before its turn).
    pub fn is_stop(text: &str) -> bool {
        matches!(Self::parse(text), Some(Self::Stop))
    }
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
    }
}

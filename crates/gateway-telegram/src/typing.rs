//! The "typing…" indicator: sent when a message is taken in, repeated every few
//! seconds (Telegram shows it for about five) until the chat's replies are
//! delivered, and never for longer than [`MAX_TYPING`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use nexus_common::shutdown::CancellationToken;
use teloxide::{
    Bot,
    payloads::SendChatActionSetters,
    requests::Requester,
    types::{ChatAction, ChatId, ThreadId},
};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

/// Interval between two `sendChatAction` calls.
const REPEAT: Duration = Duration::from_secs(4);
/// Upper bound of one indicator, so a lost reply cannot keep a chat "typing" forever.
const MAX_TYPING: Duration = Duration::from_secs(120);

struct Entry {
    /// Messages taken in whose reply is not delivered yet.
    pending: u32,
    deadline: Instant,
    generation: u64,
    stop: CancellationToken,
}

#[derive(Default)]
struct Chats {
    by_chat: HashMap<i64, Entry>,
    generation: u64,
}

pub(crate) struct Typing {
    bot: Bot,
    chats: Arc<Mutex<Chats>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Typing {
    pub fn new(bot: Bot, shutdown: CancellationToken, tasks: TaskTracker) -> Self {
        Self {
            bot,
            chats: Arc::default(),
            shutdown,
            tasks,
        }
    }

    /// A message of `chat` was taken in: show "typing…" until its reply goes out.
    pub fn start(&self, chat: ChatId, thread: Option<ThreadId>) {
        let Ok(mut chats) = self.chats.lock() else {
            return;
        };
        let deadline = Instant::now() + MAX_TYPING;
        if let Some(entry) = chats.by_chat.get_mut(&chat.0) {
            entry.pending += 1;
            entry.deadline = deadline;
            return;
        }
        chats.generation += 1;
        let generation = chats.generation;
        let stop = self.shutdown.child_token();
        chats.by_chat.insert(
            chat.0,
            Entry {
                pending: 1,
                deadline,
                generation,
                stop: stop.clone(),
            },
        );
        drop(chats);
        let bot = self.bot.clone();
        let registry = self.chats.clone();
        self.tasks.spawn(async move {
            loop {
                let mut action = bot.send_chat_action(chat, ChatAction::Typing);
                if let Some(t) = thread {
                    action = action.message_thread_id(t);
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = tokio::time::timeout(Duration::from_secs(10), action) => {
                        if let Ok(Err(error)) = r {
                            tracing::debug!(%error, "typing indicator not shown");
                        }
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(REPEAT) => {}
                }
                let Ok(mut chats) = registry.lock() else {
                    break;
                };
                let expired = chats
                    .by_chat
                    .get(&chat.0)
                    .is_none_or(|e| e.generation != generation || Instant::now() >= e.deadline);
                if expired {
                    if chats
                        .by_chat
                        .get(&chat.0)
                        .is_some_and(|e| e.generation == generation)
                    {
                        chats.by_chat.remove(&chat.0);
                    }
                    break;
                }
            }
        });
    }

    /// A reply for `chat` was delivered.
    pub fn stop(&self, chat: ChatId) {
        let Ok(mut chats) = self.chats.lock() else {
            return;
        };
        let done = match chats.by_chat.get_mut(&chat.0) {
            Some(entry) => {
                entry.pending = entry.pending.saturating_sub(1);
                entry.pending == 0
            }
            None => false,
        };
        if done && let Some(entry) = chats.by_chat.remove(&chat.0) {
            entry.stop.cancel();
        }
    }

    /// Whether an indicator is running for `chat`.
    #[cfg(test)]
    pub fn active(&self, chat: ChatId) -> bool {
        self.chats
            .lock()
            .map(|c| c.by_chat.contains_key(&chat.0))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_indicator_runs_until_every_pending_reply_of_the_chat_is_delivered() {
        // Nothing listens on port 9: the actions fail quietly, the bookkeeping is what is tested.
        let bot = Bot::new("1:x").set_api_url(url::Url::parse("http://127.0.0.1:9").unwrap());
        let typing = Typing::new(bot, CancellationToken::new(), TaskTracker::new());
        let chat = ChatId(42);
        typing.start(chat, None);
        typing.start(chat, None);
        assert!(typing.active(chat));
        typing.stop(chat);
        assert!(typing.active(chat), "one reply is still pending");
        typing.stop(chat);
        assert!(!typing.active(chat));
        typing.stop(chat);
        assert!(!typing.active(chat), "a stray reply changes nothing");
    }
}

//! The state shared by intake and delivery: the gateway kit, the Bot API client,
//! the bot's own identity, and the small in-memory bookkeeping around them.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use anyhow::Context as _;
use nexus_common::{backoff::Backoff, shutdown::CancellationToken};
use nexus_gateway::{Gateway, PartLog};
use nexus_proto::v1::{ServiceNotice, event};
use teloxide::{
    ApiError, Bot, RequestError,
    requests::Requester,
    types::{Me, UserId},
};
use tokio_util::task::TaskTracker;

use crate::{SERVICE, settings::TelegramSettings, typing::Typing};

/// Waits between reconnection attempts: 1 s, 2 s, 4 s … at most a minute.
pub(crate) const BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

pub(crate) struct Telegram {
    pub gateway: Gateway,
    pub bot: Bot,
    pub me: Me,
    pub settings: TelegramSettings,
    pub typing: Typing,
    /// Failed media downloads per update id; after a few, the message is taken in without it.
    pub media_failures: Mutex<HashMap<u32, u32>>,
    /// Parts of a reply already sent, so a retry after a partial failure (or a
    /// restart) continues where it stopped instead of repeating the first messages.
    pub parts: PartLog,
    /// This process, for service events.
    pub instance: String,
}

impl Telegram {
    pub fn new(
        gateway: Gateway,
        bot: Bot,
        me: Me,
        settings: TelegramSettings,
        parts: PartLog,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            typing: Typing::new(bot.clone(), shutdown, tasks),
            gateway,
            bot,
            me,
            settings,
            media_failures: Mutex::default(),
            parts,
            instance: format!(
                "{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
        }
    }

    pub fn bot_id(&self) -> UserId {
        self.me.user.id
    }

    pub fn bot_username(&self) -> &str {
        self.me.user.username.as_deref().unwrap_or_default()
    }

    /// An error's text with the bot token removed (URLs in network errors carry it).
    pub fn scrub(&self, error: &dyn std::fmt::Display) -> String {
        scrub(&error.to_string(), self.settings.token.expose())
    }

    /// Emits a `ServiceNotice` event (`degraded`, `recovered`).
    pub async fn notice(&self, status: &str, detail: String) {
        self.gateway
            .bus()
            .emit(event::Kind::Service(ServiceNotice {
                service: SERVICE.to_owned(),
                instance: self.instance.clone(),
                status: status.to_owned(),
                detail,
            }))
            .await;
    }
}

pub(crate) fn scrub(text: &str, token: &str) -> String {
    if token.is_empty() {
        text.to_owned()
    } else {
        text.replace(token, "<token>")
    }
}

/// A Bot API client for `TELEGRAM_API_URL`, whose HTTP timeout outlasts a long poll.
pub(crate) fn new_bot(settings: &TelegramSettings) -> anyhow::Result<Bot> {
    let client = teloxide::net::default_reqwest_settings()
        .timeout(settings.poll_timeout + Duration::from_secs(15))
        .build()
        .context("building the HTTP client for Telegram")?;
    Ok(Bot::with_client(settings.token.expose(), client).set_api_url(settings.api_url.clone()))
}

/// `getMe` until it answers: the bot's username is needed to see mentions in groups.
/// `Ok(None)` means shutdown came first; a refused token is fatal.
pub(crate) async fn identify(
    bot: &Bot,
    settings: &TelegramSettings,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Me>> {
    let mut backoff = BACKOFF;
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            r = bot.get_me() => r,
        };
        match result {
            Ok(me) => return Ok(Some(me)),
            Err(RequestError::Api(ApiError::InvalidToken)) => {
                anyhow::bail!(
                    "Telegram refused TELEGRAM_BOT_TOKEN (Unauthorized): check the token with @BotFather"
                );
            }
            Err(error) => {
                let wait = backoff.fail();
                tracing::warn!(
                    error = %scrub(&error.to_string(), settings.token.expose()),
                    retry_in_secs = wait.as_secs(),
                    "Telegram is not reachable yet"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped_at_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|f| BACKOFF.delay(f).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(BACKOFF.delay(0).as_secs(), 1);
    }

    #[test]
    fn the_token_is_scrubbed_from_error_text() {
        let t = "123:abc";
        assert_eq!(
            scrub(
                "error sending request for url (http://x/bot123:abc/getUpdates)",
                t
            ),
            "error sending request for url (http://x/bot<token>/getUpdates)"
        );
    }
}

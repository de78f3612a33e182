//! `nexus users`: which user id each (channel, sender id) is. `link` makes two
//! senders one person with one profile; `list` shows the links. Both go
//! through memory-svc's `identity` operation; this file never touches the
//! database or the workspace.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use nexus_bus::{Bus, BusError, MemoryOp, TraceContext};
use nexus_common::Config;
use nexus_proto::v1::{
    IdentityRequest, IdentityResponse, LinkIdentity, ListIdentities, identity_request::Op,
};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct UsersArgs {
    #[command(subcommand)]
    command: UsersCommand,
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Link a sender of a channel to a user id: their conversations share USER_<user_id>.md.
    Link {
        /// The channel, as in `telegram` or `slack`.
        channel: String,
        /// The sender's id on that channel.
        sender_id: String,
        /// The user id: 1 to 96 of A-Z, a-z, 0-9, _ and -.
        user_id: String,
    },
    /// List linked identities; unlinked senders are `<channel>_<sender_id>`.
    List {
        /// Only the identities of this user.
        #[arg(long = "user")]
        user: Option<String>,
    },
    /// Show or set a user's own limits (over [limits]): messages per minute, tokens
    /// and USD per UTC day and month; a number, 0 for unlimited, `default` for [limits].
    Limit(crate::limits::LimitArgs),
}

pub async fn run(config: Config, args: UsersArgs) -> anyhow::Result<ExitCode> {
    let bus = Bus::connect(&config, "nexus-users").await?;
    let op = match args.command {
        UsersCommand::Link {
            channel,
            sender_id,
            user_id,
        } => Op::Link(LinkIdentity {
            channel,
            sender_id,
            user_id,
        }),
        UsersCommand::List { user } => Op::List(ListIdentities {
            user_id: user.unwrap_or_default(),
        }),
        UsersCommand::Limit(limit) => {
            print!("{}", crate::limits::set(&config, limit).await?);
            return Ok(ExitCode::SUCCESS);
        }
    };
    let listing = matches!(op, Op::List(_));
    let reply: IdentityResponse = ask_memory(
        &bus,
        &config,
        MemoryOp::Identity,
        &IdentityRequest { op: Some(op) },
    )
    .await?;
    if listing {
        print!("{}", table(&reply));
    } else {
        for link in &reply.identities {
            println!(
                "linked {}:{} to {}",
                link.channel, link.sender_id, link.user_id
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One request to memory-svc, its failures said in words: not running, or a
/// request it refused (its message as is).
pub(crate) async fn ask_memory<Req: prost::Message, Resp: prost::Message + Default>(
    bus: &Bus,
    config: &Config,
    op: MemoryOp,
    req: &Req,
) -> anyhow::Result<Resp> {
    match bus
        .request(
            bus.subjects().memory(op),
            req,
            &TraceContext::new_root(),
            Some(REQUEST_TIMEOUT),
        )
        .await
    {
        Ok(reply) => Ok(reply),
        Err(BusError::NoResponders { .. }) => bail!(
            "memory-svc is not running in namespace \"{}\" on {}: start it (`nexus up`) and try again",
            config.namespace,
            config.nats.url
        ),
        Err(BusError::Remote {
            code: 400, message, ..
        }) => bail!("{message}"),
        Err(e) => Err(e).context("asking memory-svc"),
    }
}

/// One line per identity under a header, columns aligned; a note when there are none.
fn table(reply: &IdentityResponse) -> String {
    if reply.identities.is_empty() {
        return "no linked identities\n".to_owned();
    }
    let header = ["CHANNEL", "SENDER", "USER"];
    let rows: Vec<[&str; 3]> = reply
        .identities
        .iter()
        .map(|i| [i.channel.as_str(), i.sender_id.as_str(), i.user_id.as_str()])
        .collect();
    let width = |col: usize| {
        rows.iter()
            .map(|r| r[col].chars().count())
            .chain([header[col].len()])
            .max()
            .unwrap_or_default()
    };
    let (w0, w1) = (width(0), width(1));
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows) {
        out.push_str(&format!("{:w0$}  {:w1$}  {}\n", row[0], row[1], row[2]));
    }
    out
}

#[cfg(test)]
mod tests {
    use nexus_proto::v1::Identity;

    use super::*;

    #[test]
    fn the_list_is_an_aligned_table_or_says_there_is_nothing() {
        assert_eq!(
            table(&IdentityResponse::default()),
            "no linked identities\n"
        );
        let id = |channel: &str, sender: &str, user: &str| Identity {
            channel: channel.into(),
            sender_id: sender.into(),
            user_id: user.into(),
            linked_at_ms: 1,
        };
        let reply = IdentityResponse {
            user_id: String::new(),
            identities: vec![id("slack", "U7", "ada"), id("telegram", "42", "ada")],
        };
        assert_eq!(
            table(&reply),
            "CHANNEL   SENDER  USER\nslack     U7      ada\ntelegram  42      ada\n"
        );
    }
}

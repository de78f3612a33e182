//! `nexus pair`: the pairing codes strangers got on channels with
//! `dm_policy = "pairing"`; `approve` lets a sender in (and links them to a user),
//! `reject` shuts them out. The state is `nexus_gateway::pairing`'s, in NATS KV.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use nexus_bus::Bus;
use nexus_common::{Config, now_ms};
use nexus_gateway::pairing::{Pairing, PairingCode};

#[derive(Args)]
pub struct PairArgs {
    #[command(subcommand)]
    command: PairCommand,
}

#[derive(Subcommand)]
enum PairCommand {
    /// Codes waiting for an admin: channel, sender, code, age and expiry.
    List,
    /// Let the sender of a code in on its channel.
    Approve {
        /// The code the sender was given (case and dashes do not matter).
        code: String,
        /// Link the sender to this user id (default: the user they already are, e.g. telegram_42).
        #[arg(long = "user")]
        user: Option<String>,
    },
    /// Refuse the sender of a code: they get no further answer.
    Reject {
        /// The code the sender was given.
        code: String,
    },
}

pub async fn run(config: Config, args: PairArgs) -> anyhow::Result<ExitCode> {
    let bus = Bus::connect(&config, "nexus-pair").await?;
    let pairing = Pairing::open(&bus).await?;
    let now = now_ms();
    match args.command {
        PairCommand::List => print!("{}", table(&pairing.pending(now).await?, now)),
        PairCommand::Approve { code, user } => {
            let c = pairing.approve(&code, user.as_deref(), "cli", now).await?;
            println!(
                "approved {}: {} ({}) may talk on {} as user {}",
                c.code,
                c.sender_id,
                name_or_dash(&c.display_name),
                c.channel,
                c.user_id
            );
        }
        PairCommand::Reject { code } => {
            let c = pairing.reject(&code, "cli", now).await?;
            println!(
                "rejected {}: {} on {} gets no further answer",
                c.code, c.sender_id, c.channel
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn name_or_dash(name: &str) -> &str {
    if name.is_empty() { "-" } else { name }
}

/// Whole minutes (or seconds below one) of a span in milliseconds.
fn span(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m", secs / 60)
    } else {
        format!("{}h{:02}m", secs / 3600, secs / 60 % 60)
    }
}

/// One line per waiting code under a header, columns aligned; a note when there are none.
fn table(codes: &[PairingCode], now: i64) -> String {
    if codes.is_empty() {
        return "no pairing codes waiting\n".to_owned();
    }
    let header = ["CHANNEL", "SENDER", "NAME", "CODE", "AGE", "EXPIRES IN"].map(str::to_owned);
    let rows: Vec<[String; 6]> = codes
        .iter()
        .map(|c| {
            [
                c.channel.clone(),
                c.sender_id.clone(),
                name_or_dash(&c.display_name).to_owned(),
                c.code.clone(),
                span(now - c.created_at_ms),
                span(c.expires_at_ms - now),
            ]
        })
        .collect();
    let mut widths = [0usize; 6];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use nexus_gateway::pairing::CodeState;

    use super::*;

    #[test]
    fn the_list_shows_channel_sender_code_age_and_expiry() {
        assert_eq!(table(&[], 0), "no pairing codes waiting\n");
        let code = PairingCode {
            code: "ABCDEFGH".into(),
            channel: "telegram".into(),
            sender_id: "99".into(),
            display_name: "Eve".into(),
            chat_id: "99".into(),
            thread_id: String::new(),
            created_at_ms: 0,
            expires_at_ms: 3_600_000,
            state: CodeState::Pending,
            user_id: String::new(),
            decided_by: String::new(),
            decided_at_ms: 0,
        };
        assert_eq!(
            table(&[code], 600_000),
            "CHANNEL   SENDER  NAME  CODE      AGE  EXPIRES IN\n\
             telegram  99      Eve   ABCDEFGH  10m  50m\n"
        );
    }
}

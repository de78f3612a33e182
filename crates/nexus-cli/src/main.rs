//! `nexus`: the command line of Nexus. `up` runs the stack, `chat` talks to the
//! agent, `tail` shows the traffic, `status` shows replicas and backlogs, `users`
//! links senders to users, `pair` approves strangers' pairing codes, `cron`
//! manages scheduled jobs, `whatsapp` pairs the WhatsApp channel. `onboard` writes a
//! first config, `doctor` checks a deployment, `health` is the containers' health check.

mod chat;
mod cron;
mod doctor;
mod dotenv;
mod health;
mod limits;
mod onboard;
mod pair;
mod status;
mod tail;
mod up;
mod usage;
mod users;
mod whatsapp;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "nexus",
    version,
    about = "Nexus: an enterprise AI agent over NATS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole stack on this machine (NATS, agent-core, tool-runner, memory-svc, configured gateways).
    Up(up::UpArgs),
    /// Talk to the agent: one message with -m, or an interactive chat.
    Chat(chat::ChatArgs),
    /// Print every message of the namespace, decoded from protobuf, as JSON lines.
    Tail(tail::TailArgs),
    /// List live service replicas and stream backlogs.
    Status(status::StatusArgs),
    /// Link a channel's sender to a user id, or list the links.
    Users(users::UsersArgs),
    /// Pairing codes of unknown senders (dm_policy = "pairing"): list, approve, reject.
    Pair(pair::PairArgs),
    /// Model calls, tokens and cost per user, model, channel, day or purpose.
    Usage(usage::UsageArgs),
    /// Scheduled jobs of every user: list (owner, next and last fire, last outcome), add, remove, pause, resume.
    Cron(cron::CronArgs),
    /// Pair the WhatsApp channel (`login` draws the QR code) or show its status.
    #[command(name = "whatsapp")]
    WhatsApp(whatsapp::WhatsAppArgs),
    /// First run: choose the model provider and channels; writes nexus.toml and .env.
    Onboard(onboard::OnboardArgs),
    /// Check NATS, the database, providers, channels and the sandbox; print each fix.
    Doctor(doctor::DoctorArgs),
    /// GET a service's /readyz (the container health check); exit 1 unless 2xx.
    Health(health::HealthArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // These run before a config exists (onboard), report a broken one (doctor), or
    // must not depend on one (health): they load it themselves, if at all.
    let result = match cli.command {
        Command::Onboard(a) => onboard::run(a).await,
        Command::Doctor(a) => {
            dotenv::reexec_with_dotenv();
            let _telemetry = nexus_common::telemetry::init_with_default("nexus", "warn", None);
            doctor::run(a).await
        }
        Command::Health(a) => health::run(a).await,
        command => {
            dotenv::reexec_with_dotenv();
            return with_config(command).await;
        }
    };
    finish(result)
}

async fn with_config(command: Command) -> ExitCode {
    // The CLI is quiet unless RUST_LOG asks otherwise; `up` shows its children's logs.
    let level = if matches!(command, Command::Up(_)) {
        "info"
    } else {
        "warn"
    };
    let config = match nexus_common::Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nexus: {e}");
            return ExitCode::from(2);
        }
    };
    // `up` is the supervisor of a deployment and logs to redacted.log like its
    // services; other commands print to the console only.
    let up = matches!(command, Command::Up(_));
    let _telemetry =
        nexus_common::telemetry::init_with_default("nexus", level, up.then_some(&config));
    let result = match command {
        Command::Up(a) => up::run(config, a).await,
        Command::Chat(a) => chat::run(config, a).await,
        Command::Tail(a) => tail::run(config, a).await,
        Command::Status(a) => status::run(config, a).await,
        Command::Users(a) => users::run(config, a).await,
        Command::Pair(a) => pair::run(config, a).await,
        Command::Usage(a) => usage::run(config, a).await,
        Command::Cron(a) => cron::run(config, a).await,
        Command::WhatsApp(a) => whatsapp::run(config, a).await,
        // Dispatched in main, without a loaded config.
        Command::Onboard(_) | Command::Doctor(_) | Command::Health(_) => Ok(ExitCode::SUCCESS),
    };
    finish(result)
}

fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nexus: {e:#}");
            ExitCode::FAILURE
        }
    }
}

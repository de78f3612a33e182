//! `exec`: a shell command run by `/bin/sh -c` in the workspace, inside the
//! sandbox ([`crate::exec`]). Returns the exit status, stdout and stderr (each
//! capped, with a note when cut) and how long it ran.
//!
//! It is offered only where the sandbox was seen working at start; it must never
//! run a command any other way.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use nexus_tools::{Caller, DynTool, Tool, typed};
use schemars::JsonSchema;
use serde::Deserialize;

use super::ToolEnv;
use crate::{
    error::ToolFailure,
    exec::{Exec, Finished},
};

pub const NAME: &str = "exec";
/// Beyond the command's own timeout: start-up and the kill of what it left.
const TIMEOUT_MARGIN: Duration = Duration::from_secs(15);
/// Room kept for the header and the section titles under the output cap.
const FRAME_ROOM: usize = 512;

/// Offered where `[tools.exec]` is on and its backend works here.
pub fn offered(env: &ToolEnv) -> Result<(), String> {
    let (_, report) = Exec::probe(&env.config.exec, env.workspace.root())?;
    tracing::info!(report, "exec is offered");
    Ok(())
}

pub fn build(env: &ToolEnv) -> Arc<dyn DynTool> {
    typed(ExecTool {
        exec: Exec::probe(&env.config.exec, env.workspace.root())
            .map(|(exec, _)| exec)
            .map_err(|why| ToolFailure::internal(format!("exec is not available: {why}"))),
        max_output_bytes: env.config.max_output_bytes,
        max_timeout: Duration::from_secs(env.config.exec.timeout_secs),
        network: env.config.exec.network,
    })
}

pub struct ExecTool {
    /// `Err` only if the sandbox broke between the check and the build.
    exec: Result<Exec, ToolFailure>,
    max_output_bytes: usize,
    max_timeout: Duration,
    network: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// Shell command, run by /bin/sh -c in the workspace, e.g. "python3 analyse.py data.csv"
    command: String,
    /// Seconds it may run before it is killed (at most the configured limit)
    #[schemars(range(min = 1))]
    timeout_secs: Option<u64>,
}

#[async_trait]
impl Tool for ExecTool {
    type Args = Args;
    const NAME: &'static str = NAME;

    fn description(&self) -> String {
        format!(
            "Run a shell command with /bin/sh -c in the workspace (the working directory) and get \
             its exit status, stdout, stderr and duration. sh, coreutils, grep/sed/awk and python3 \
             are there: write a script with write_file, then run it. It runs in a sandbox: only \
             the workspace is writable and kept (/tmp is private and lost), {}, and it is killed \
             after timeout_secs (default and most {} s).",
            if self.network {
                "the network is reachable"
            } else {
                "there is no network"
            },
            self.max_timeout.as_secs()
        )
    }

    fn timeout(&self) -> Duration {
        self.max_timeout + TIMEOUT_MARGIN
    }

    async fn call(&self, _: &Caller, args: Args) -> Result<String, ToolFailure> {
        let exec = self.exec.as_ref().map_err(Clone::clone)?;
        if args.command.trim().is_empty() {
            return Err(ToolFailure::invalid_args("command is empty"));
        }
        if args.command.contains('\0') {
            return Err(ToolFailure::invalid_args("command contains a NUL byte"));
        }
        let timeout = args
            .timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(self.max_timeout)
            .clamp(Duration::from_secs(1), self.max_timeout);
        let keep = self.max_output_bytes.saturating_sub(FRAME_ROOM) / 2;
        let done = exec.run(&args.command, timeout, keep).await?;
        if done.timed_out {
            return Err(ToolFailure::timeout(format!(
                "the command ran past its {} s timeout and was killed, with every process it \
                 started. Output until then:\n{}",
                timeout.as_secs(),
                sections(&done)
            ))
            .retryable(false));
        }
        Ok(format!("{}\n{}", header(&done), sections(&done)))
    }
}

/// `exit status 0 after 0.12 s`, with what a limit's signal means.
fn header(done: &Finished) -> String {
    let why = match done.status {
        137 => " (killed: SIGKILL — the CPU time or memory limit)",
        152 => " (killed: SIGXCPU — the CPU time limit)",
        153 => " (killed: SIGXFSZ — the file size limit)",
        139 => " (killed: SIGSEGV — often the memory limit)",
        _ => "",
    };
    format!(
        "exit status {}{why} after {:.2} s",
        done.status,
        done.elapsed.as_secs_f64()
    )
}

fn sections(done: &Finished) -> String {
    let mut text = String::new();
    for (name, stream) in [("stdout", &done.stdout), ("stderr", &done.stderr)] {
        if stream.total > 0 {
            text.push_str(&format!("--- {name} ---\n{}", stream.text()));
            if !text.ends_with('\n') {
                text.push('\n');
            }
        }
    }
    if text.is_empty() {
        text.push_str("(no output)\n");
    }
    text
}

//! The tool figures: what one call costs through tool-runner (a `read_file` of a
//! small file, request to result over NATS), and one call of an MCP server's tool
//! over stdio (`mcp-server-time` from PyPI, when python3 has it).

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use nexus_bus::{Bus, TraceContext};
use nexus_common::domain::{Namespace, ToolName};
use nexus_proto::v1::{ToolCall, ToolResult, tool_result::Outcome};
use tokio::process::Command;

/// Sorted round trips of both kinds; `mcp` is `None` without `mcp-server-time`.
pub struct ToolCost {
    pub builtin: Vec<Duration>,
    pub mcp: Option<Vec<Duration>>,
}

/// Starts tool-runner (beside this binary) in a namespace of its own on `nats_url`
/// and times `calls` sequential calls of each kind, after a warm-up.
pub async fn run(nats_url: &str, calls: usize) -> anyhow::Result<ToolCost> {
    let workspace = tempfile::tempdir()?;
    std::fs::write(workspace.path().join("note.txt"), "a small file\n")?;
    let namespace = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mcp = std::process::Command::new("python3")
        .args(["-c", "import mcp_server_time"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let config = workspace.path().join("bench.toml");
    std::fs::write(
        &config,
        if mcp {
            "[[tools.mcp]]\nname = \"time\"\ncommand = \"python3\"\n\
             args = [\"-m\", \"mcp_server_time\", \"--local-timezone\", \"UTC\"]\n"
        } else {
            ""
        },
    )?;
    let mut runner = Command::new(crate::sibling("tool-runner")?)
        .env("NATS_URL", nats_url)
        .env("NEXUS_NAMESPACE", &namespace)
        .env("NEXUS_WORKSPACE", workspace.path())
        .env("NEXUS_CONFIG", &config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting tool-runner")?;

    let client = nexus_bus::connect_options(nats_url)?
        .connect(nats_url)
        .await?;
    let bus = Bus::from_client(
        client,
        Namespace::parse(&namespace)?,
        "bench",
        Duration::from_secs(10),
    );
    let stop = nexus_common::shutdown::CancellationToken::new();
    let tools = nexus_tools::ToolDirectory::start(&bus, stop.clone()).await?;
    let wanted: &[&str] = if mcp {
        &["read_file", "time__get_current_time"]
    } else {
        &["read_file"]
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !wanted.iter().all(|t| tools.specs().contains_key(*t)) {
        if Instant::now() > deadline {
            bail!("tool-runner did not offer {wanted:?} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let builtin = timed(&bus, "read_file", r#"{"path":"note.txt"}"#, calls).await?;
    let mcp = if mcp {
        Some(
            timed(
                &bus,
                "time__get_current_time",
                r#"{"timezone":"UTC"}"#,
                calls,
            )
            .await?,
        )
    } else {
        None
    };
    stop.cancel();
    let _ = runner.kill().await;
    Ok(ToolCost { builtin, mcp })
}

async fn timed(bus: &Bus, tool: &str, args: &str, calls: usize) -> anyhow::Result<Vec<Duration>> {
    let subject = bus.subjects().tool(&ToolName::parse(tool)?);
    let call = ToolCall {
        call_id: "bench".into(),
        name: tool.into(),
        arguments_json: args.into(),
        context: None,
    };
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls + calls / 10 {
        let started = Instant::now();
        let result: ToolResult = bus
            .request(subject.clone(), &call, &TraceContext::new_root(), None)
            .await?;
        let took = started.elapsed();
        if let Some(Outcome::Error(e)) = result.outcome {
            bail!("{tool} failed: {}", e.message);
        }
        // The first tenth warms up (connections, caches, the MCP server's imports).
        if i >= calls / 10 {
            times.push(took);
        }
    }
    times.sort();
    Ok(times)
}

pub fn print(cost: &ToolCost) {
    let (p50, p99) = (
        crate::percentile(&cost.builtin, 50.0),
        crate::percentile(&cost.builtin, 99.0),
    );
    out!(
        "| one tool call through tool-runner (`read_file` of a small file, request → result), p50 / p99 | {:.2} / {:.2} ms |",
        crate::ms(p50),
        crate::ms(p99)
    );
    match &cost.mcp {
        Some(mcp) => out!(
            "| one MCP tool call over stdio (`mcp-server-time` via tool-runner), p50 / p99 | {:.2} / {:.2} ms |",
            crate::ms(crate::percentile(mcp, 50.0)),
            crate::ms(crate::percentile(mcp, 99.0))
        ),
        None => out!(
            "| one MCP tool call over stdio | skipped: `python3 -m pip install mcp-server-time` |"
        ),
    }
}

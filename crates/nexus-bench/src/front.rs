//! What a user waits for at the front doors: a warm turn through gateway-api's
//! OpenAI-compatible endpoint (client-side, HTTP included), and a whole
//! `nexus chat -m` process against a running stack.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// gateway-api as `nexus up` started it for the bench.
pub struct Api {
    pub url: String,
    pub key: String,
}

/// `turns` sequential `POST /v1/chat/completions` in one session after `warm`
/// turns; each request's time, sorted.
pub async fn api_turns(api: &Api, warm: usize, turns: usize) -> anyhow::Result<Vec<Duration>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let body = serde_json::json!({
        "model": "gpt-4.1-mini",
        "messages": [{"role": "user", "content": "ping"}],
    });
    let mut each = Vec::with_capacity(turns);
    for i in 0..warm + turns {
        let t = Instant::now();
        let r = client
            .post(format!("{}/v1/chat/completions", api.url))
            .bearer_auth(&api.key)
            .header("x-nexus-session", "api-bench")
            .json(&body)
            .send()
            .await
            .context("gateway-api")?;
        let status = r.status();
        let _ = r.bytes().await?;
        if !status.is_success() {
            bail!("gateway-api answered {status}");
        }
        if i >= warm {
            each.push(t.elapsed());
        }
    }
    each.sort();
    Ok(each)
}

/// `runs` whole `nexus chat -m ping` processes (start, connect, ask, answer, exit)
/// with `env`; each one's wall time, sorted.
pub async fn chat_runs(
    nexus: &std::path::Path,
    env: &[(String, String)],
    runs: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut each = Vec::with_capacity(runs);
    for i in 0..runs {
        let t = Instant::now();
        let out = tokio::process::Command::new(nexus)
            .args([
                "chat",
                "-m",
                "ping",
                "--session",
                &format!("chat-bench-{i}"),
            ])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .await
            .context("nexus chat")?;
        let took = t.elapsed();
        if !out.status.success() {
            bail!(
                "nexus chat -m failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        each.push(took);
    }
    each.sort();
    Ok(each)
}

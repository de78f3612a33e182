//! `nexus health [URL]`: the container health check. GETs a service's `/readyz`
//! (default `http://127.0.0.1:9090/readyz`, what compose runs in each service's
//! container) and exits 0 on 2xx, 1 otherwise with the reason on stderr.
//!
//! It must not need a config file or NATS: it runs inside any service's image.

use std::{process::ExitCode, time::Duration};

use clap::Args;

#[derive(Args)]
pub struct HealthArgs {
    /// The readiness URL to GET.
    #[arg(default_value = "http://127.0.0.1:9090/readyz")]
    url: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3)]
    timeout: u64,
}

pub async fn run(args: HealthArgs) -> anyhow::Result<ExitCode> {
    // reqwest: nexus-cli links it anyway for onboard/doctor's HTTPS checks.
    let client = crate::onboard::http_client(Duration::from_secs(args.timeout.max(1)))?;
    let response = match client.get(&args.url).send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: {}", args.url, crate::onboard::error_chain(&e));
            return Ok(ExitCode::FAILURE);
        }
    };
    let status = response.status();
    if status.is_success() {
        println!("ok");
        return Ok(ExitCode::SUCCESS);
    }
    let body = response.text().await.unwrap_or_default();
    let body: String = body.trim().chars().take(500).collect();
    eprintln!("{}: HTTP {status} {body}", args.url);
    Ok(ExitCode::FAILURE)
}

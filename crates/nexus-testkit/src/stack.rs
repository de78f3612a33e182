//! The core services as real processes in one test's namespace, and the `nexus`
//! CLI run against them.

use std::{process::Output, time::Duration};

use crate::{ServiceProcess, TestEnv, bin_path};

/// memory-svc, tool-runner and agent-core, started as processes.
pub struct Stack {
    pub memory: Option<ServiceProcess>,
    pub tools: Option<ServiceProcess>,
    pub agent: Option<ServiceProcess>,
    env: Vec<(String, String)>,
}

impl Stack {
    /// Starts the three services with the test's environment plus `extra`, and
    /// waits until each answers on the NATS service API.
    pub async fn start(test: &TestEnv, extra: &[(&str, &str)]) -> Self {
        let mut env = test.process_env();
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let mut stack = Self {
            memory: None,
            tools: None,
            agent: None,
            env,
        };
        stack.memory = Some(stack.spawn("memory-svc"));
        stack.tools = Some(stack.spawn("tool-runner"));
        stack.agent = Some(stack.spawn("agent-core"));
        stack
            .wait_ready(test, &["memory-svc", "tool-runner", "agent-core"])
            .await;
        stack
    }

    /// Starts one more process of `name` with the stack's environment.
    pub fn spawn(&self, name: &str) -> ServiceProcess {
        ServiceProcess::spawn(name, &[], &self.env)
    }

    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// Waits until every named service has at least one live instance.
    pub async fn wait_ready(&mut self, test: &TestEnv, names: &[&str]) {
        let bus = test.bus("test-probe").await;
        let mut started: Vec<&mut ServiceProcess> =
            [&mut self.memory, &mut self.tools, &mut self.agent]
                .into_iter()
                .flatten()
                .collect();
        wait_registered(&bus, &mut started, names, Duration::from_secs(60)).await;
    }
}

/// Waits until each of `names` has a live instance on the service API; one of
/// `processes` that exits meanwhile (refused by NATS, a bad setting) fails the test at
/// once, with its name, instead of at the timeout.
pub async fn wait_registered(
    bus: &nexus_bus::Bus,
    processes: &mut [&mut ServiceProcess],
    names: &[&str],
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        for p in processes.iter_mut() {
            if let Some(status) = p.try_status() {
                panic!(
                    "{} exited during start with {status}; run with TEST_LOG=1 to see why",
                    p.name()
                );
            }
        }
        let seen = bus
            .discover_services(Duration::from_millis(200))
            .await
            .unwrap_or_default();
        if names.iter().all(|n| seen.iter().any(|s| s.name == *n)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {names:?} to register"
        );
    }
}

/// Runs the `nexus` CLI with the test's environment and returns its output.
pub async fn nexus(env: &[(String, String)], args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(bin_path("nexus"));
    cmd.args(args)
        .env_clear()
        .envs(
            ["PATH", "HOME"]
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
        )
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(Duration::from_secs(120), cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("running nexus {args:?}: {e}"),
        Err(_) => panic!("nexus {args:?} did not finish within 120s"),
    }
}

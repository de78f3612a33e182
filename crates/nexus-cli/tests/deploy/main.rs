//! Docker cannot run in CI, so the compose file and Dockerfile are checked by
//! reading them: every binary has a service, state has volumes, agent-core scales.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::BTreeSet, path::PathBuf};

use serde_yaml::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn compose() -> Value {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let mut v: Value = serde_yaml::from_str(&text).unwrap();
    v.apply_merge().unwrap();
    // Merges nest (service → environment); apply them inside every service too.
    if let Some(services) = v.get_mut("services").and_then(Value::as_mapping_mut) {
        for (_, s) in services.iter_mut() {
            s.apply_merge().unwrap();
            if let Some(env) = s.get_mut("environment") {
                env.apply_merge().unwrap();
            }
        }
    }
    v
}

/// Service binaries of the workspace: every crate with a `src/main.rs`, except the CLI and benchmarks.
/// The strings of a YAML sequence (compose lists, collector pipelines).
fn strs(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

fn service_binaries() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(repo().join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        // nexus-sandbox is tool-runner's helper (in the same image), not a service.
        if dir.join("src/main.rs").exists()
            && !matches!(name.as_str(), "nexus-cli" | "nexus-bench" | "nexus-sandbox")
        {
            out.insert(name);
        }
    }
    out
}

#[test]
fn every_service_binary_has_a_compose_service_running_it() {
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    let bins = service_binaries();
    assert!(
        bins.contains("agent-core") && bins.contains("tool-runner") && bins.contains("memory-svc")
    );
    for bin in &bins {
        let svc = services
            .get(bin.as_str())
            .unwrap_or_else(|| panic!("no compose service for {bin}"));
        let cmd = svc["command"].as_sequence().unwrap();
        assert_eq!(
            cmd[0].as_str(),
            Some(bin.as_str()),
            "{bin} runs the wrong command"
        );
        assert_eq!(
            svc["build"]["dockerfile"].as_str(),
            Some("deploy/Dockerfile")
        );
        assert_eq!(
            svc["environment"]["NATS_URL"].as_str(),
            Some("nats://nats:4222")
        );
        assert!(
            svc["environment"]["DATABASE_URL"]
                .as_str()
                .unwrap()
                .starts_with("postgres://")
        );
    }
}

#[test]
fn nats_runs_jetstream_on_a_volume_and_postgres_keeps_its_data() {
    let c = compose();
    let nats = &c["services"]["nats"];
    let cmd: Vec<&str> = strs(&nats["command"]);
    // JetStream and its store come from the mounted deploy/nats/nats.conf.
    assert_eq!(
        cmd[..2],
        ["-c", "/etc/nats/nats.conf"],
        "nats runs deploy/nats/nats.conf"
    );
    let conf = std::fs::read_to_string(repo().join("deploy/nats/nats.conf")).unwrap();
    assert!(conf.contains("\njetstream {"), "JetStream must be on");
    let store = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("store_dir:"))
        .expect("a store dir")
        .trim();
    let vols: Vec<&str> = strs(&nats["volumes"]);
    assert!(
        vols.iter().any(|v| v.ends_with(&format!(":{store}"))),
        "store {store} not on a volume: {vols:?}"
    );
    assert!(nats["healthcheck"].is_mapping());

    let pg = &c["services"]["postgres"];
    let vols: Vec<&str> = strs(&pg["volumes"]);
    assert!(
        vols.iter()
            .any(|v| v.ends_with(":/var/lib/postgresql/data"))
    );
    let named = c["volumes"].as_mapping().unwrap();
    for v in ["nats-data", "postgres-data", "workspace"] {
        assert!(named.contains_key(v), "volume {v} not declared");
    }
}

#[test]
fn agent_core_can_be_scaled_because_nothing_pins_it() {
    let c = compose();
    let agent = &c["services"]["agent-core"];
    for key in ["container_name", "ports", "volumes", "hostname"] {
        assert!(
            agent.get(key).is_none(),
            "agent-core sets {key}, which breaks --scale"
        );
    }
    assert_eq!(
        agent["depends_on"]["nats"]["condition"].as_str(),
        Some("service_healthy")
    );
    assert!(agent["environment"]["OPENAI_API_KEY"].as_str().is_some());
}

#[test]
fn the_scheduler_keeps_its_jobs_in_postgres_and_can_be_scaled() {
    let c = compose();
    let scheduler = &c["services"]["scheduler"];
    for key in ["container_name", "ports", "volumes", "hostname"] {
        assert!(
            scheduler.get(key).is_none(),
            "scheduler sets {key}, which breaks --scale"
        );
    }
    assert_eq!(
        scheduler["depends_on"]["postgres"]["condition"].as_str(),
        Some("service_healthy")
    );
}

#[test]
fn the_image_builds_every_binary_and_runs_unprivileged() {
    let d = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    assert!(d.contains("cargo build --release --workspace --bins"));
    assert!(d.contains("USER nexus"));
    assert!(
        d.contains("tini"),
        "SIGTERM must reach the service for a graceful stop"
    );
}

#[test]
fn the_observability_profile_sends_every_services_traces_and_metrics_through_a_collector_to_jaeger()
{
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    let collector = &c["services"]["otel-collector"];
    let jaeger = &c["services"]["jaeger"];
    for (name, svc) in [("otel-collector", collector), ("jaeger", jaeger)] {
        let profiles: Vec<&str> = svc["profiles"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name} must be opt-in"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(profiles, ["observability"], "{name}");
    }
    assert!(
        jaeger["image"]
            .as_str()
            .unwrap()
            .starts_with("jaegertracing/"),
        "{jaeger:?}"
    );
    assert!(
        jaeger["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p.as_str() == Some("16686:16686")),
        "Jaeger's UI is published"
    );

    // The collector runs the config file in deploy/.
    let mount = strs(&collector["volumes"])
        .into_iter()
        .find(|v| v.starts_with("./deploy/otel-collector.yaml:"))
        .expect("deploy/otel-collector.yaml mounted");
    let target = mount.split(':').nth(1).unwrap();
    let cmd: Vec<&str> = strs(&collector["command"]);
    assert!(
        cmd.contains(&format!("--config={target}").as_str()),
        "{cmd:?}"
    );

    let text = std::fs::read_to_string(repo().join("deploy/otel-collector.yaml")).unwrap();
    let config: Value = serde_yaml::from_str(&text).unwrap();
    let http = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
        .as_str()
        .expect("an OTLP/HTTP receiver");
    assert!(http.ends_with(":4318"), "{http}");
    for signal in ["traces", "metrics"] {
        let pipeline = &config["service"]["pipelines"][signal];
        let listed = |key: &str| -> Vec<String> {
            pipeline[key]
                .as_sequence()
                .unwrap_or_else(|| panic!("{signal} pipeline has no {key}"))
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        assert!(listed("receivers").contains(&"otlp".to_owned()), "{signal}");
        for exporter in listed("exporters") {
            assert!(
                config["exporters"].get(exporter.as_str()).is_some(),
                "{signal} exports to {exporter}, which is not configured"
            );
        }
    }
    let to_jaeger = strs(&config["service"]["pipelines"]["traces"]["exporters"])
        .into_iter()
        .map(|e| config["exporters"][e]["endpoint"].as_str().unwrap_or(""))
        .any(|endpoint| endpoint.starts_with("jaeger:"));
    assert!(to_jaeger, "traces must reach the jaeger service");

    // Every service exports when OTEL_EXPORTER_OTLP_ENDPOINT is set, and the documented
    // value names the collector's service and port.
    for bin in service_binaries() {
        let env = &services.get(bin.as_str()).unwrap()["environment"];
        assert_eq!(
            env["OTEL_EXPORTER_OTLP_ENDPOINT"].as_str(),
            Some("${OTEL_EXPORTER_OTLP_ENDPOINT:-}"),
            "{bin}"
        );
        assert_eq!(
            env["OTEL_EXPORTER_OTLP_PROTOCOL"].as_str(),
            Some("http/protobuf"),
            "{bin}"
        );
    }
    let compose_text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let readme = std::fs::read_to_string(repo().join("deploy/README.md")).unwrap();
    for doc in [&compose_text, &readme] {
        assert!(doc.contains("OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4318"));
    }
}

/// The users of deploy/nats/authorization.conf and the variable each password
/// comes from: a light parse of `user: <name>` followed by `password: $<VAR>`.
fn nats_users() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("deploy/nats/authorization.conf")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    lines
        .windows(2)
        .filter_map(|w| {
            let user = w[0].strip_prefix("user:")?.trim();
            let var = w[1].strip_prefix("password:")?.trim().strip_prefix('$')?;
            Some((user.to_owned(), var.to_owned()))
        })
        .collect()
}

#[test]
fn every_service_logs_in_to_nats_as_its_own_user_of_the_shipped_configuration() {
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    let users = nats_users();
    let nats = &c["services"]["nats"];
    let mounted = strs(&nats["volumes"])
        .into_iter()
        .any(|v| v.starts_with("./deploy/nats:/etc/nats"));
    assert!(mounted, "deploy/nats must be mounted at /etc/nats");
    let image = nats["image"].as_str().unwrap();
    let version: Vec<u32> = image
        .trim_start_matches("nats:")
        .split(['-', '.'])
        .take(2)
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(
        version >= vec![2, 10],
        "nats-server 2.10+ is needed: {image}"
    );

    // The admin user for the CLI, and one user per binary, named after it.
    assert!(users.iter().any(|(u, _)| u == "admin"), "{users:?}");
    for bin in service_binaries() {
        let (_, var) = users
            .iter()
            .find(|(u, _)| *u == bin)
            .unwrap_or_else(|| panic!("no NATS user for {bin} in authorization.conf"));
        let env = &services.get(bin.as_str()).unwrap()["environment"];
        assert_eq!(env["NATS_USER"].as_str(), Some(bin.as_str()), "{bin}");
        let password = env["NATS_PASSWORD"].as_str().unwrap_or_default();
        assert!(
            password.starts_with(&format!("${{{var}:")),
            "{bin} must take NATS_PASSWORD from {var}: {password}"
        );
    }
    // The server gets every password the configuration refers to, and .env.example
    // documents them.
    let example = std::fs::read_to_string(repo().join(".env.example")).unwrap();
    for (user, var) in &users {
        assert!(
            nats["environment"][var.as_str()].as_str().is_some(),
            "the nats service lacks {var} ({user})"
        );
        assert!(
            example.contains(&format!("{var}=")),
            ".env.example lacks {var}"
        );
    }
}

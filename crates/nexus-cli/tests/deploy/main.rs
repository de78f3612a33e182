//! Docker and Kubernetes cannot run in CI, so the compose file, the Dockerfile and
//! deploy/k8s are checked by reading them: every binary has a service and a
//! Deployment, health checks ask the port each service serves, state has volumes,
//! agent-core scales, and compose and Kubernetes agree with each other and the code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use serde::Deserialize;
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

/// The strings of a YAML sequence (compose lists, collector pipelines).
fn strs(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// Service binaries of the workspace: every crate with a `src/main.rs`, except the CLI and benchmarks.
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
    assert!(
        d.contains("tini"),
        "SIGTERM must reach the service for a graceful stop"
    );
    // A numeric user, so Kubernetes' runAsNonRoot can check it; the one useradd makes.
    let uid = image_uid();
    assert_ne!(uid, 0, "the image must not run as root");
    assert!(
        d.contains(&format!("useradd --system --uid {uid} ")),
        "USER {uid} is not the user the image creates"
    );

    // The build image's Rust is at least the workspace's rust-version.
    let from = d
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .and_then(|l| l.split_whitespace().next())
        .expect("a rust build stage");
    let version = |v: &str| -> Vec<u32> {
        v.split(['-', ' '])
            .next()
            .unwrap()
            .split('.')
            .map(|p| p.parse().unwrap())
            .collect()
    };
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let wanted = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("a workspace rust-version")
        .trim_matches('"');
    assert!(
        version(from) >= version(wanted),
        "FROM rust:{from} is older than rust-version {wanted}"
    );

    // Only chosen paths are copied: every file outside crates/ that the code embeds
    // (include_str!) must be among them, or the image does not build.
    let copied: Vec<&str> = d
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            parts[..parts.len() - 1].to_vec()
        })
        .collect();
    for embedded in embedded_files() {
        assert!(
            copied
                .iter()
                .any(|c| embedded == *c || embedded.starts_with(&format!("{c}/"))),
            "{embedded} is embedded by the code but not copied into the build: {copied:?}"
        );
    }

    // A default health check (the instruction with its continuation lines) on the
    // port the services are told to serve.
    let check = d
        .split("\nHEALTHCHECK ")
        .nth(1)
        .expect("a HEALTHCHECK")
        .replace("\\\n", " ");
    let check = check.lines().next().unwrap();
    assert!(check.contains(r#"["nexus", "health""#), "{check}");
    for bin in service_binaries() {
        let key = env_key(&bin);
        let line = d
            .lines()
            .find(|l| l.contains(&format!("NEXUS__HEALTH__LISTEN__{key}=")))
            .unwrap_or_else(|| panic!("the image does not set the health address of {bin}"));
        let port = line
            .trim()
            .trim_end_matches('\\')
            .trim()
            .rsplit(':')
            .next()
            .unwrap();
        assert!(
            check.contains(&format!(":{port}/readyz")) && d.contains(&format!("EXPOSE {port}")),
            "{bin}: port {port} is not the one probed and exposed"
        );
    }
}

/// The uid of `USER <uid>:<gid>` in deploy/Dockerfile.
fn image_uid() -> u32 {
    let d = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    let user = d
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    user.split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("USER {user} must be numeric"))
}

/// Files outside crates/ that the services' code embeds: `include_str!("../../../<path>")`.
fn embedded_files() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut dirs = vec![repo().join("crates")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path
                    .file_name()
                    .is_some_and(|n| n != "tests" && n != "target")
                {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for part in text.split("include_str!(\"").skip(1) {
                    let rel = part.split('"').next().unwrap();
                    let full = path.parent().unwrap().join(rel);
                    let Ok(full) = full.canonicalize() else {
                        continue;
                    };
                    let root = repo().canonicalize().unwrap();
                    if let Ok(inside) = full.strip_prefix(&root)
                        && !inside.starts_with("crates")
                    {
                        out.insert(inside.to_string_lossy().into_owned());
                    }
                }
            }
        }
    }
    out
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

/// `agent-core` → `AGENT_CORE`, the service's key in `NEXUS__HEALTH__LISTEN__<KEY>`.
fn env_key(bin: &str) -> String {
    bin.replace('-', "_").to_ascii_uppercase()
}

/// The port of `host:port` or of a URL `scheme://host:port/path`.
fn port_of(addr: &str) -> u16 {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap();
    hostport
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no port in {addr}"))
}

/// Whether a crate's own sources mention `needle`.
fn crate_mentions(krate: &str, needle: &str) -> bool {
    let mut dirs = vec![repo().join("crates").join(krate).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if std::fs::read_to_string(&path).is_ok_and(|t| t.contains(needle)) {
                return true;
            }
        }
    }
    false
}

#[test]
fn every_compose_service_restarts_and_its_health_check_means_ready() {
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        let restart = svc["restart"].as_str().unwrap_or_default();
        assert!(
            ["always", "unless-stopped", "on-failure"]
                .iter()
                .any(|r| restart.starts_with(r)),
            "{name} has no restart policy"
        );
    }
    for bin in service_binaries() {
        let svc = services.get(bin.as_str()).unwrap();
        let test = strs(&svc["healthcheck"]["test"]);
        assert_eq!(test[..3], ["CMD", "nexus", "health"], "{bin}: {test:?}");
        // `nexus health` without a URL probes http://127.0.0.1:9090/readyz.
        let url = test
            .get(3)
            .copied()
            .unwrap_or("http://127.0.0.1:9090/readyz");
        assert!(
            url.ends_with("/readyz"),
            "{bin} must probe readiness: {url}"
        );
        let key = format!("NEXUS__HEALTH__LISTEN__{}", env_key(&bin));
        let listen = svc["environment"][key.as_str()]
            .as_str()
            .unwrap_or_else(|| panic!("{bin} does not set {key}"));
        assert_eq!(
            port_of(listen),
            port_of(url),
            "{bin} serves its probes on {listen} but the health check asks {url}"
        );
        assert!(
            listen.starts_with("0.0.0.0:"),
            "{bin}: {listen} must be reachable"
        );
    }
    // The bridge has its own check, on the port it is told to listen on.
    let bridge = &c["services"]["whatsapp-bridge"];
    let port = bridge["environment"]["BRIDGE_PORT"].as_str().unwrap();
    let test = strs(&bridge["healthcheck"]["test"]).join(" ");
    assert!(test.contains(&format!("127.0.0.1:{port}")), "{test}");
}

#[test]
fn compose_starts_each_service_after_what_it_needs_is_ready() {
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    for (name, svc) in services {
        let Some(deps) = svc["depends_on"].as_mapping() else {
            continue;
        };
        for (dep, how) in deps {
            let dep = dep.as_str().unwrap();
            let target = services
                .get(dep)
                .unwrap_or_else(|| panic!("{name:?} depends on unknown {dep}"));
            if how["condition"].as_str() == Some("service_healthy") {
                assert!(
                    target["healthcheck"].is_mapping(),
                    "{name:?} waits for {dep} to be healthy, which has no health check"
                );
            }
        }
    }
    // Streams are created by agent-core only (the others' NATS users may just look
    // them up): whoever else ensures them starts after agent-core is ready.
    assert!(crate_mentions("agent-core", "ensure_streams"));
    for bin in service_binaries() {
        if bin == "agent-core" {
            continue;
        }
        let ensures =
            crate_mentions(&bin, "ensure_streams") || crate_mentions(&bin, "Gateway::connect");
        let svc = services.get(bin.as_str()).unwrap();
        let waits =
            svc["depends_on"]["agent-core"]["condition"].as_str() == Some("service_healthy");
        assert_eq!(
            ensures, waits,
            "{bin}: looks the streams up at start = {ensures}, waits for agent-core = {waits}"
        );
        assert_eq!(
            svc["depends_on"]["nats"]["condition"].as_str(),
            Some("service_healthy"),
            "{bin}"
        );
        if crate_mentions(&bin, "database_url") {
            assert_eq!(
                svc["depends_on"]["postgres"]["condition"].as_str(),
                Some("service_healthy"),
                "{bin} opens the database"
            );
        }
    }
}

#[test]
fn every_variable_compose_reads_from_the_environment_is_documented() {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let example = std::fs::read_to_string(repo().join(".env.example")).unwrap();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap()
        + &std::fs::read_to_string(repo().join("deploy/README.md")).unwrap();
    let vars: BTreeSet<&str> = text
        .split("${")
        .skip(1)
        .map(|rest| {
            rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
                .unwrap()
        })
        .collect();
    assert!(vars.contains("OPENAI_API_KEY"), "{vars:?}");
    for var in vars {
        let in_example = example.lines().any(|l| {
            l.trim_start_matches(['#', ' '])
                .starts_with(&format!("{var}="))
        });
        assert!(
            in_example || readme.contains(var),
            "{var} is read by docker-compose.yml but documented neither in .env.example nor in a README"
        );
    }
}

// ---------------------------------------------------------------------------
// Kubernetes (deploy/k8s): kustomize base, channel components, NATS Helm values.

fn k8s() -> PathBuf {
    repo().join("deploy/k8s")
}

/// Every document of every manifest under deploy/k8s, with its file.
fn k8s_docs() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for file in manifest_files(&k8s(), true) {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap();
            if !v.is_null() {
                out.push((file.clone(), v));
            }
        }
    }
    out
}

/// The YAML files of `dir` that are Kubernetes objects (not kustomize's own file, not
/// the Helm values), and with `deep` those of its subfolders too.
fn manifest_files(dir: &Path, deep: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if deep {
                out.extend(manifest_files(&path, true));
            }
        } else if name.ends_with(".yaml")
            && name != "kustomization.yaml"
            && name != "nats-values.yaml"
        {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn kind<'a>(docs: &'a [(PathBuf, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|(_, v)| v["kind"].as_str() == Some(kind))
        .map(|(_, v)| v)
        .collect()
}

fn named<'a>(docs: &'a [(PathBuf, Value)], k: &str, name: &str) -> &'a Value {
    kind(docs, k)
        .into_iter()
        .find(|v| v["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {k} {name} in deploy/k8s"))
}

fn containers(deployment: &Value) -> &Vec<Value> {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap()
}

/// The names of the variables a container gets: its `env` and the keys of the
/// ConfigMaps it takes whole (`envFrom`).
fn k8s_env(docs: &[(PathBuf, Value)], container: &Value) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = container["env"]
        .as_sequence()
        .map(|env| {
            env.iter()
                .map(|e| e["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    for from in container["envFrom"].as_sequence().into_iter().flatten() {
        if let Some(map) = from["configMapRef"]["name"].as_str() {
            let cm = named(docs, "ConfigMap", map);
            for key in cm["data"].as_mapping().unwrap().keys() {
                out.insert(key.as_str().unwrap().to_owned());
            }
        }
    }
    out
}

/// The value a container's variable has: its `env` entry, or its ConfigMap's.
fn k8s_value<'a>(
    docs: &'a [(PathBuf, Value)],
    container: &'a Value,
    name: &str,
) -> Option<&'a Value> {
    let own = container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|e| e["name"].as_str() == Some(name));
    if let Some(e) = own {
        return Some(e);
    }
    for from in container["envFrom"].as_sequence().into_iter().flatten() {
        if let Some(map) = from["configMapRef"]["name"].as_str() {
            let v = &named(docs, "ConfigMap", map)["data"][name];
            if !v.is_null() {
                return Some(v);
            }
        }
    }
    None
}

#[test]
fn every_service_binary_has_a_deployment_that_logs_in_as_its_own_nats_user() {
    let docs = k8s_docs();
    let users = nats_users();
    for bin in service_binaries() {
        let d = named(&docs, "Deployment", &bin);
        let c = &containers(d)[0];
        assert_eq!(c["image"].as_str(), Some("nexus"), "{bin}");
        assert_eq!(
            strs(&c["args"])[..1],
            [bin.as_str()],
            "{bin} runs the wrong command"
        );
        let user = k8s_value(&docs, c, "NATS_USER").unwrap();
        assert_eq!(user["value"].as_str(), Some(bin.as_str()), "{bin}");
        let (_, var) = users.iter().find(|(u, _)| *u == bin).unwrap();
        let password = &k8s_value(&docs, c, "NATS_PASSWORD").unwrap()["valueFrom"]["secretKeyRef"];
        assert_eq!(password["name"].as_str(), Some("nexus-nats"), "{bin}");
        assert_eq!(password["key"].as_str(), Some(var.as_str()), "{bin}");
        // Every service sees the same settings, the replica count above all.
        let env = k8s_env(&docs, c);
        for shared in ["NATS_URL", "NEXUS_NAMESPACE", "NEXUS__NATS__REPLICAS"] {
            assert!(env.contains(shared), "{bin} lacks {shared}");
        }
    }
    // Every NATS user any pod logs in as is one the server knows.
    for d in kind(&docs, "Deployment") {
        for c in containers(d) {
            if let Some(user) = k8s_value(&docs, c, "NATS_USER") {
                let user = user["value"].as_str().unwrap();
                assert!(
                    users.iter().any(|(u, _)| u == user),
                    "NATS user {user} is not in deploy/nats/authorization.conf"
                );
            }
        }
    }
}

#[test]
fn gateway_apis_admin_console_logs_in_as_the_console_user_in_compose_and_kubernetes() {
    let users = nats_users();
    let (_, var) = users
        .iter()
        .find(|(u, _)| u == "console")
        .expect("no NATS user console in authorization.conf");
    let c = compose();
    let env = &c["services"]["gateway-api"]["environment"];
    assert_eq!(env["CONSOLE_NATS_USER"].as_str(), Some("console"));
    let password = env["CONSOLE_NATS_PASSWORD"].as_str().unwrap_or_default();
    assert!(
        password.starts_with(&format!("${{{var}:")),
        "the console must take CONSOLE_NATS_PASSWORD from {var}: {password}"
    );
    let docs = k8s_docs();
    let api = &containers(named(&docs, "Deployment", "gateway-api"))[0];
    let user = k8s_value(&docs, api, "CONSOLE_NATS_USER").unwrap();
    assert_eq!(user["value"].as_str(), Some("console"));
    let password =
        &k8s_value(&docs, api, "CONSOLE_NATS_PASSWORD").unwrap()["valueFrom"]["secretKeyRef"];
    assert_eq!(password["name"].as_str(), Some("nexus-nats"));
    assert_eq!(password["key"].as_str(), Some(var.as_str()));
    let example = std::fs::read_to_string(repo().join("deploy/k8s/nats.env.example")).unwrap();
    assert!(
        example.contains(&format!("{var}=")),
        "nats.env.example lacks {var}"
    );
}

#[test]
fn kubernetes_probes_ask_the_port_each_service_serves_them_on() {
    let docs = k8s_docs();
    for bin in service_binaries() {
        let d = named(&docs, "Deployment", &bin);
        let c = &containers(d)[0];
        let key = format!("NEXUS__HEALTH__LISTEN__{}", env_key(&bin));
        let listen = k8s_value(&docs, c, &key)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("{bin} does not set {key}"));
        let port = port_of(listen);
        let ports: Vec<u64> = c["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| p["containerPort"].as_u64().unwrap())
            .collect();
        assert!(
            ports.contains(&u64::from(port)),
            "{bin} does not declare {port}"
        );
        for (probe, path) in [
            ("startupProbe", "/readyz"),
            ("readinessProbe", "/readyz"),
            ("livenessProbe", "/healthz"),
        ] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"].as_str(), Some(path), "{bin} {probe}");
            let probed = match &get["port"] {
                Value::Number(n) => n.as_u64().unwrap(),
                Value::String(name) => c["ports"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"].as_str() == Some(name))
                    .and_then(|p| p["containerPort"].as_u64())
                    .unwrap_or_else(|| panic!("{bin}: no port named {name}")),
                other => panic!("{bin} {probe}: port {other:?}"),
            };
            assert_eq!(
                probed,
                u64::from(port),
                "{bin} {probe} asks {probed}, the service serves {listen}"
            );
        }
    }
}

#[test]
fn agent_core_scales_with_an_hpa_that_owns_its_replica_count() {
    let docs = k8s_docs();
    let hpa = named(&docs, "HorizontalPodAutoscaler", "agent-core");
    assert_eq!(hpa["apiVersion"].as_str(), Some("autoscaling/v2"));
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"].as_str(), Some("Deployment"));
    assert_eq!(target["name"].as_str(), Some("agent-core"));
    named(&docs, "Deployment", "agent-core");
    let metrics = hpa["spec"]["metrics"].as_sequence().unwrap();
    assert!(
        metrics
            .iter()
            .any(|m| m["resource"]["name"].as_str() == Some("cpu")),
        "{metrics:?}"
    );
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    // A `replicas` in the Deployment would reset the HPA's count on every apply.
    assert!(
        named(&docs, "Deployment", "agent-core")["spec"]["replicas"].is_null(),
        "agent-core's replicas belong to its HPA"
    );
}

#[test]
fn every_pod_runs_unprivileged_with_resources_set() {
    let docs = k8s_docs();
    let uid = image_uid();
    let bins = service_binaries();
    for d in kind(&docs, "Deployment") {
        let name = d["metadata"]["name"].as_str().unwrap();
        let pod = &d["spec"]["template"]["spec"];
        for c in containers(d) {
            let ctx = |key: &str| {
                let own = &c["securityContext"][key];
                if own.is_null() {
                    pod["securityContext"][key].clone()
                } else {
                    own.clone()
                }
            };
            assert_eq!(ctx("runAsNonRoot").as_bool(), Some(true), "{name}");
            let user = ctx("runAsUser").as_u64().expect("a numeric runAsUser");
            assert_ne!(user, 0, "{name}");
            if bins.contains(name) {
                assert_eq!(user, u64::from(uid), "{name} must run as the image's user");
            }
            assert_eq!(
                c["securityContext"]["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{name}"
            );
            for (what, key) in [
                ("requests", "cpu"),
                ("requests", "memory"),
                ("limits", "memory"),
            ] {
                assert!(
                    !c["resources"][what][key].is_null(),
                    "{name} has no {what}.{key}"
                );
            }
        }
    }
    // Only tool-runner and memory-svc share the workspace, and it must be shareable.
    let pvc = named(&docs, "PersistentVolumeClaim", "workspace");
    assert_eq!(strs(&pvc["spec"]["accessModes"]), ["ReadWriteMany"]);
    for d in kind(&docs, "Deployment") {
        let name = d["metadata"]["name"].as_str().unwrap();
        let claims: Vec<&str> = d["spec"]["template"]["spec"]["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
            .collect();
        assert_eq!(
            claims.contains(&"workspace"),
            ["tool-runner", "memory-svc"].contains(&name),
            "{name}: {claims:?}"
        );
    }
}

/// The parsed kustomization.yaml of a folder.
fn kustomization(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

#[test]
fn kustomize_lists_every_manifest_and_generates_secrets_only_from_ignored_files() {
    let base = k8s();
    let mut dirs = vec![base.clone()];
    let channels = base.join("channels");
    for entry in std::fs::read_dir(&channels).unwrap() {
        dirs.push(entry.unwrap().path());
    }
    let base_text = std::fs::read_to_string(base.join("kustomization.yaml")).unwrap();
    let ignored = std::fs::read_to_string(base.join(".gitignore")).unwrap();
    for dir in &dirs {
        let k = kustomization(dir);
        let listed: BTreeSet<&str> = strs(&k["resources"]).into_iter().collect();
        for r in &listed {
            assert!(
                dir.join(r).is_file(),
                "{}: {r} does not exist",
                dir.display()
            );
        }
        for file in manifest_files(dir, false) {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                listed.contains(name.as_str()),
                "{} is not listed in {}/kustomization.yaml",
                file.display(),
                dir.display()
            );
        }
        for generator in k["secretGenerator"].as_sequence().into_iter().flatten() {
            for env in strs(&generator["envs"]) {
                let rel = dir.join(env);
                let rel = rel
                    .strip_prefix(&base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                assert!(
                    ignored.lines().any(|l| l.trim() == rel),
                    "{rel} holds secrets and must be in deploy/k8s/.gitignore"
                );
                assert!(
                    base.join(format!("{rel}.example")).is_file(),
                    "{rel}.example documents it"
                );
            }
        }
        if dir != &base {
            assert_eq!(k["kind"].as_str(), Some("Component"), "{}", dir.display());
            let rel = dir
                .strip_prefix(&base)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            assert!(
                base_text.contains(&format!("- {rel}")),
                "the base kustomization does not offer {rel}"
            );
        }
    }
    // Gateways are opt-in components, like the compose profiles; the core is in the base.
    let c = compose();
    let base_kustomization = kustomization(&base);
    let base_files: BTreeSet<&str> = strs(&base_kustomization["resources"]).into_iter().collect();
    for bin in service_binaries() {
        let profiled = c["services"][bin.as_str()]["profiles"].is_sequence();
        let in_base = base_files.contains(format!("{bin}.yaml").as_str());
        assert_eq!(
            !profiled, in_base,
            "{bin}: in a compose profile = {profiled}, in the base = {in_base}"
        );
    }
    // The secrets referenced are documented in their example files.
    let docs = k8s_docs();
    let examples = std::fs::read_to_string(base.join("secrets.env.example")).unwrap()
        + &std::fs::read_to_string(base.join("nats.env.example")).unwrap();
    for d in kind(&docs, "Deployment") {
        for c in containers(d) {
            for e in c["env"].as_sequence().into_iter().flatten() {
                let key = &e["valueFrom"]["secretKeyRef"]["key"];
                if let Some(key) = key.as_str() {
                    assert!(
                        examples.contains(&format!("{key}=")),
                        "secret key {key} is not in secrets.env.example or nats.env.example"
                    );
                }
            }
        }
    }
}

#[test]
fn nats_runs_as_a_three_server_jetstream_cluster_with_the_shipped_users() {
    let text = std::fs::read_to_string(k8s().join("nats-values.yaml")).unwrap();
    let values: Value = serde_yaml::from_str(&text).unwrap();
    let config = &values["config"];
    assert_eq!(config["cluster"]["enabled"].as_bool(), Some(true));
    let servers = config["cluster"]["replicas"].as_u64().unwrap();
    assert_eq!(config["jetstream"]["enabled"].as_bool(), Some(true));
    assert_eq!(
        config["jetstream"]["fileStore"]["pvc"]["enabled"].as_bool(),
        Some(true)
    );
    // authorization.conf is included, put in the chart's ConfigMap by the documented
    // install command, and its passwords come from the generated Secret.
    let include = config["merge"]
        .as_mapping()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_str().is_some_and(|k| k.ends_with("$include")))
        .map(|(_, v)| v.as_str().unwrap())
        .expect("an $include of the users");
    let readme = std::fs::read_to_string(k8s().join("README.md")).unwrap();
    let escaped = include.replace('.', "\\.");
    assert!(
        readme.contains(&format!(
            "--set-file 'configMap.merge.data.{escaped}=deploy/nats/authorization.conf'"
        )),
        "the install command must add {include}"
    );
    let from: Vec<&str> = values["container"]["merge"]["envFrom"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| e["secretRef"]["name"].as_str())
        .collect();
    assert_eq!(from, ["nexus-nats"]);
    let example = std::fs::read_to_string(k8s().join("nats.env.example")).unwrap();
    for (user, var) in nats_users() {
        assert!(
            example.contains(&format!("{var}=")),
            "nats.env.example lacks {var} ({user})"
        );
    }
    // The services keep as many copies as there are servers, and reach the release's
    // Service, named after `helm install <release>`.
    let docs = k8s_docs();
    let cm = named(&docs, "ConfigMap", "nexus-config");
    let replicas: u64 = cm["data"]["NEXUS__NATS__REPLICAS"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(replicas, servers);
    let url = cm["data"]["NATS_URL"].as_str().unwrap();
    let host = url
        .trim_start_matches("nats://")
        .split([':', '.'])
        .next()
        .unwrap();
    assert!(
        readme.contains(&format!("helm install {host} nats/nats -n nexus")),
        "{url}"
    );
    assert_eq!(port_of(url), 4222);
    // Same nats-server as compose.
    let c = compose();
    let image = c["services"]["nats"]["image"].as_str().unwrap();
    assert_eq!(
        values["container"]["image"]["tag"].as_str(),
        image.strip_prefix("nats:"),
        "compose and Kubernetes run different nats-servers"
    );
}

#[test]
fn services_route_to_the_ports_the_containers_listen_on() {
    let docs = k8s_docs();
    for svc in kind(&docs, "Service") {
        let name = svc["metadata"]["name"].as_str().unwrap();
        let selector = svc["spec"]["selector"].as_mapping().unwrap();
        let pods: Vec<&Value> = kind(&docs, "Deployment")
            .into_iter()
            .filter(|d| {
                let labels = &d["spec"]["template"]["metadata"]["labels"];
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .collect();
        assert_eq!(
            pods.len(),
            1,
            "Service {name} selects {} Deployments",
            pods.len()
        );
        let c = &containers(pods[0])[0];
        for p in svc["spec"]["ports"].as_sequence().unwrap() {
            let target = p.get("targetPort").unwrap_or(&p["port"]);
            let found = c["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|cp| match target {
                    Value::Number(n) => cp["containerPort"].as_u64() == n.as_u64(),
                    Value::String(s) => cp["name"].as_str() == Some(s.as_str()),
                    _ => false,
                });
            assert!(
                found,
                "Service {name} targets {target:?}, which {name}'s container does not declare"
            );
        }
    }
    // The containers declare the ports the code listens on by default (or as told).
    let defaults = nexus_common::config::Config::default();
    let slack_default = nexus_common::channel_settings::slack::DEFAULT_LISTEN;
    let c = compose();
    for (bin, var, default) in [
        (
            "gateway-api",
            "NEXUS__API__LISTEN",
            defaults.api.listen.as_str(),
        ),
        (
            "gateway-api",
            "NEXUS__API__GRPC_LISTEN",
            defaults.api.grpc_listen.as_str(),
        ),
        (
            "gateway-slack",
            "NEXUS__CHANNELS__SLACK__LISTEN",
            slack_default,
        ),
    ] {
        let d = named(&docs, "Deployment", bin);
        let container = &containers(d)[0];
        let listen = k8s_value(&docs, container, var)
            .and_then(|e| e["value"].as_str())
            .unwrap_or(default);
        let port = u64::from(port_of(listen));
        let svc = named(&docs, "Service", bin);
        assert!(
            svc["spec"]["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|p| p["port"].as_u64() == Some(port)),
            "{bin} listens on {listen} ({var}), its Service does not offer {port}"
        );
        assert!(
            container["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|p| p["containerPort"].as_u64() == Some(port)),
            "{bin} listens on {listen}, its container does not declare it"
        );
        // compose publishes the same port.
        let published = strs(&c["services"][bin]["ports"]);
        assert!(
            published.iter().any(|p| p.ends_with(&format!(":{port}"))),
            "compose does not publish {bin}'s {port}: {published:?}"
        );
    }
    let bridge = &containers(named(&docs, "Deployment", "whatsapp-bridge"))[0];
    let port: u64 = k8s_value(&docs, bridge, "BRIDGE_PORT").unwrap()["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        named(&docs, "Service", "whatsapp-bridge")["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p["port"].as_u64() == Some(port))
    );
    let url = k8s_value(
        &docs,
        &containers(named(&docs, "Deployment", "gateway-whatsapp"))[0],
        "WHATSAPP_BRIDGE_URL",
    )
    .unwrap()["value"]
        .as_str()
        .unwrap();
    assert_eq!(url, format!("ws://whatsapp-bridge:{port}"));
}

/// Variables compose gives a service that its Kubernetes pod deliberately lacks, and why
/// (each is explained in deploy/k8s/README.md).
const COMPOSE_ONLY: &[(&str, &str)] = &[(
    "DATABASE_URL",
    "only services that open the database get its password in Kubernetes",
)];

#[test]
fn kubernetes_gives_each_service_the_variables_compose_does() {
    let c = compose();
    let docs = k8s_docs();
    let readme = std::fs::read_to_string(k8s().join("README.md")).unwrap();
    for bin in service_binaries() {
        let compose_env = c["services"][bin.as_str()]["environment"]
            .as_mapping()
            .unwrap();
        let k8s = k8s_env(&docs, &containers(named(&docs, "Deployment", &bin))[0]);
        for var in compose_env.keys().map(|k| k.as_str().unwrap()) {
            if k8s.contains(var) {
                continue;
            }
            let excused = COMPOSE_ONLY.iter().any(|(v, _)| *v == var)
                && !(var == "DATABASE_URL" && crate_mentions(&bin, "database_url"));
            assert!(
                excused,
                "compose gives {bin} {var}, its Kubernetes Deployment does not"
            );
        }
    }
    for (var, why) in COMPOSE_ONLY {
        assert!(
            readme.contains(var),
            "deploy/k8s/README.md must explain {var}: {why}"
        );
    }
    // The bridge too.
    let bridge_compose = c["services"]["whatsapp-bridge"]["environment"]
        .as_mapping()
        .unwrap();
    let bridge = k8s_env(
        &docs,
        &containers(named(&docs, "Deployment", "whatsapp-bridge"))[0],
    );
    for var in bridge_compose.keys().map(|k| k.as_str().unwrap()) {
        assert!(
            bridge.contains(var),
            "compose gives whatsapp-bridge {var}, Kubernetes does not"
        );
    }
}

#[test]
fn the_build_context_holds_what_the_image_copies_and_no_secrets() {
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        rules.first(),
        Some(&"*"),
        "everything is left out unless let in"
    );
    let let_in: Vec<&str> = rules
        .iter()
        .filter_map(|r| r.strip_prefix('!'))
        .map(|r| r.trim_end_matches('/'))
        .collect();
    let d = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    let sources: Vec<&str> = d
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            parts[..parts.len() - 1].to_vec()
        })
        .collect();
    assert!(!sources.is_empty());
    for source in sources {
        let source = source.trim_end_matches('/');
        assert!(
            let_in
                .iter()
                .any(|l| source == *l || source.starts_with(&format!("{l}/"))),
            "deploy/Dockerfile copies {source}, which .dockerignore leaves out"
        );
    }
    for secret in [".env", "target", ".git", "workspace/.nexus"] {
        assert!(
            !let_in
                .iter()
                .any(|l| secret == *l || secret.starts_with(&format!("{l}/"))),
            ".dockerignore lets {secret} into the build context"
        );
    }
}

#[test]
fn every_service_binary_answers_version_and_help_without_nats() {
    for bin in service_binaries() {
        for flag in ["--version", "--help"] {
            let out = std::process::Command::new(nexus_testkit::bin_path(&bin))
                .arg(flag)
                .env("NATS_URL", "nats://127.0.0.1:1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success()
                    && stdout.contains(if flag == "--version" { &bin } else { "Usage" }),
                "{bin} {flag}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Source files of `dir`, recursively.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// ARCHITECTURE.md's code map is where a newcomer looks first: every module of every
/// crate is named there (as `name.rs`), or its directory is (`name/`). Crate roots,
/// `mod.rs`, and the unit tests' `tests.rs` and `fuzz.rs` need no entry of their own.
#[test]
fn architecture_names_every_module() {
    let map = std::fs::read_to_string(repo().join("ARCHITECTURE.md")).unwrap();
    let mut files = Vec::new();
    sources(&repo().join("crates"), &mut files);
    let mut missing = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file
            .strip_prefix(repo())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        // Only what the crates build: not their integration tests, benches or build scripts.
        if rel.split('/').nth(2).is_none_or(|d| d != "src")
            || matches!(
                name.as_str(),
                "lib.rs" | "main.rs" | "mod.rs" | "tests.rs" | "fuzz.rs"
            )
        {
            continue;
        }
        checked += 1;
        let dir = file
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy();
        let in_named_dir = dir != "src" && map.contains(&format!("{dir}/"));
        if !map.contains(&format!("`{name}`"))
            && !map.contains(&format!("/{name}`"))
            && !map.contains(&format!("{name} "))
            && !in_named_dir
        {
            missing.push(rel);
        }
    }
    assert!(checked > 100, "only {checked} modules found");
    assert!(
        missing.is_empty(),
        "modules ARCHITECTURE.md's code map does not name:\n{}",
        missing.join("\n")
    );
}

//! Tools appear when their provider starts and disappear when it stops, dies or
//! loses NATS — with nothing restarted; replicas share the calls. The built
//! tool-runner binary runs as processes here, so SIGKILL is a real crash.

use std::{collections::BTreeMap, time::Duration};

use futures::StreamExt;
use nexus_bus::{Bus, TraceContext};
use nexus_common::domain::ToolName;
use nexus_proto::v1::{ToolCall, ToolResult, ToolSpec};
use nexus_testkit::{ServiceProcess, TcpProxy, TestEnv, eventually};
use nexus_tools::ToolDirectory;
use tokio_util::sync::CancellationToken;

/// Longer than an announcement's ttl (6 s) with room for a busy machine.
const WAIT: Duration = Duration::from_secs(30);

struct World {
    env: TestEnv,
    bus: Bus,
    tools: ToolDirectory,
    _stop: tokio_util::sync::DropGuard,
}

impl World {
    async fn new() -> Self {
        let env = TestEnv::new();
        let bus = env.bus("liveness-test").await;
        let stop = CancellationToken::new();
        let tools = ToolDirectory::start(&bus, stop.clone()).await.unwrap();
        Self {
            env,
            bus,
            tools,
            _stop: stop.drop_guard(),
        }
    }

    fn tool_runner(&self, extra: &[(&str, &str)]) -> ServiceProcess {
        let mut env = self.env.process_env();
        env.extend(extra.iter().map(|(k, v)| ((*k).into(), (*v).into())));
        ServiceProcess::spawn("tool-runner", &[], &env)
    }

    async fn live(&self, what: &str) -> BTreeMap<String, ToolSpec> {
        eventually(what, WAIT, || async {
            let specs = self.tools.specs();
            specs.contains_key("read_file").then_some(specs)
        })
        .await
    }

    async fn gone(&self, what: &str) {
        eventually(what, WAIT, || async {
            self.tools.specs().is_empty().then_some(())
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_providers_tools_appear_when_it_starts_and_go_at_once_when_it_stops() {
    let w = World::new().await;
    let runner = w.tool_runner(&[]);
    let specs = w.live("tool-runner's tools").await;
    for name in [
        "read_file",
        "write_file",
        "edit_file",
        "list_dir",
        "grep_search",
    ] {
        assert!(specs.contains_key(name), "{name}: {:?}", specs.keys());
    }
    let mut announcements = w
        .bus
        .client()
        .subscribe(w.bus.subjects().tools_announce())
        .await
        .unwrap();
    // Listening for sure once a periodic announcement came through.
    tokio::time::timeout(WAIT, announcements.next())
        .await
        .expect("no periodic announcement")
        .expect("the subscription ended");
    assert!(runner.terminate(Duration::from_secs(30)).await.success());
    // Withdrawn on the way out (not left to expire): the last word of the process.
    let withdrawn = tokio::time::timeout(WAIT, async {
        while let Some(m) = announcements.next().await {
            if let Ok(a) = nexus_tools::wire::decode_announcement(&m.payload, m.headers.as_ref())
                && a.withdrawn
            {
                return Some(a);
            }
        }
        None
    })
    .await
    .expect("no withdrawal was announced")
    .expect("the subscription ended");
    assert_eq!(withdrawn.provider, "tool-runner");
    assert!(withdrawn.specs.is_empty());
    w.gone("the stopped provider's tools").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tools_of_a_killed_provider_disappear_and_come_back_with_its_restart() {
    let w = World::new().await;
    let runner = w.tool_runner(&[]);
    w.live("tool-runner's tools").await;
    runner.kill().await;
    w.gone("the killed provider's tools to expire").await;
    let _again = w.tool_runner(&[]);
    w.live("the restarted provider's tools").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tools_of_a_provider_cut_off_from_nats_disappear_until_it_is_back() {
    let w = World::new().await;
    let proxy = TcpProxy::start(w.env.nats_url.trim_start_matches("nats://")).await;
    let _runner = w.tool_runner(&[("NATS_URL", &proxy.nats_url())]);
    w.live("tool-runner's tools").await;
    proxy.black_hole();
    w.gone("the cut-off provider's tools to expire").await;
    proxy.restore();
    w.live("the tools after the provider reconnected").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_the_calls_and_announce_one_set_of_tools() {
    let w = World::new().await;
    let _a = w.tool_runner(&[]);
    let _b = w.tool_runner(&[]);
    let tools = eventually("both replicas announcing", WAIT, || async {
        let p = w.tools.providers();
        (p.len() == 2 && p[0].tools == p[1].tools).then(|| p[0].tools.len())
    })
    .await;
    assert_eq!(w.tools.specs().len(), tools, "one spec per tool");

    // The queue group hands each call to one replica: with both serving, the
    // service API's per-instance stats show calls on each.
    w.env.write("x.md", "x");
    let subject = w
        .bus
        .subjects()
        .tool(&ToolName::parse("read_file").unwrap());
    for i in 0..40 {
        let result: ToolResult = w
            .bus
            .request(
                subject.clone(),
                &ToolCall {
                    call_id: format!("c{i}"),
                    name: "read_file".into(),
                    arguments_json: r#"{"path":"x.md"}"#.into(),
                    context: None,
                },
                &TraceContext::new_root(),
                None,
            )
            .await
            .unwrap();
        assert_eq!(result.call_id, format!("c{i}"));
    }
    let per_instance = served_per_instance(&w.bus, "tool-runner", "read_file").await;
    assert_eq!(per_instance.len(), 2, "{per_instance:?}");
    assert_eq!(
        per_instance.iter().sum::<u64>(),
        40,
        "each call served once"
    );
    assert!(per_instance.iter().all(|n| *n > 0), "{per_instance:?}");
}

/// Requests each live instance of `service` in this namespace served on
/// `endpoint` (NATS service API stats, asked of each instance by id).
async fn served_per_instance(bus: &Bus, service: &str, endpoint: &str) -> Vec<u64> {
    let instances = bus
        .discover_services(Duration::from_millis(300))
        .await
        .unwrap();
    let mut out = Vec::new();
    for instance in instances.iter().filter(|i| i.name == service) {
        let reply = bus
            .client()
            .request(format!("$SRV.STATS.{service}.{}", instance.id), "".into())
            .await
            .unwrap();
        let stats: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        let served = stats["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["name"] == endpoint)
            .map(|e| e["num_requests"].as_u64().unwrap_or(0))
            .sum();
        out.push(served);
    }
    out
}

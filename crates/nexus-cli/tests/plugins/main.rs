//! Plugins in any language, end to end: the Python example
//! (`examples/python-plugin/weather.py`) joins a running stack, the model calls its
//! tool in a real turn, and when the plugin is killed the tool leaves the model's
//! list. Nothing is restarted. The built binaries, real NATS, a real `python3`, and
//! a fake OpenAI server that records what the model was shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nexus_testkit::{
    Stack, TestEnv, eventually,
    fake_openai::{FakeOpenAi, Reply},
    nexus,
    plugins::python_weather,
};
use serde_json::{Value, json};

/// What the example says for Paris, every time.
const PARIS: &str = "Paris: 18 °C, light rain";

fn llm_env(fake: &FakeOpenAi) -> Vec<(String, String)> {
    [
        ("OPENAI_API_KEY", "sk-test-key-000000".to_owned()),
        ("OPENAI_BASE_URL", fake.base_url()),
        ("NEXUS__LLM__MODEL", "gpt-4.1-mini".to_owned()),
        ("NEXUS__LLM__RETRY_BASE_MS", "20".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The names of the tools a model request offered.
fn tools_offered(request: &Value) -> Vec<String> {
    request["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t["function"]["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs one turn and returns its reply (stdout); the turn must succeed.
async fn chat(stack: &Stack, session: &str, text: &str) -> (String, String) {
    let out = nexus(stack.env(), &["chat", "-m", text, "--session", session]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "chat failed: {stderr}");
    (stdout, stderr)
}

/// Runs turns the model answers in words until the model is offered tools for
/// which `wanted` holds; returns those tool names.
async fn poll_turns_until(
    stack: &Stack,
    fake: &FakeOpenAi,
    what: &str,
    wanted: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    eventually(what, Duration::from_secs(60), || async {
        chat(stack, "poll", "Anything new?").await;
        let offered = tools_offered(fake.requests().last()?);
        wanted(&offered).then_some(offered)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_plugin_joins_a_running_stack_serves_a_turn_and_its_tool_goes_when_it_is_killed() {
    let test = TestEnv::new();
    let fake = FakeOpenAi::start(Reply::Text("Nothing new.".into())).await;
    let env = llm_env(&fake);
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut stack = Stack::start(&test, &extra).await;

    // The stack runs; the plugin comes later, from outside, in its own language.
    let plugin = python_weather(stack.env());
    let offered = poll_turns_until(&stack, &fake, "the model to be offered weather", |t| {
        t.iter().any(|n| n == "weather")
    })
    .await;
    assert!(
        offered.iter().any(|n| n == "read_file"),
        "tool-runner's tools stay: {offered:?}"
    );

    // A real turn: the model calls the plugin's tool and answers from its result.
    let before = fake.requests().len();
    fake.push([
        Reply::ToolCalls(vec![("weather".into(), json!({"city": "Paris"}))]),
        Reply::EchoLastTool("The weather tool says: ".into()),
    ]);
    let (reply, activity) = chat(&stack, "s1", "What is the weather in Paris?").await;
    assert!(reply.contains(PARIS), "reply was: {reply}");
    assert!(
        activity.contains("[tool] weather"),
        "tool activity not shown: {activity}"
    );
    let requests = fake.requests();
    assert_eq!(
        requests.len(),
        before + 2,
        "one request to choose the tool, one to answer"
    );
    let weather = requests[before]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == "weather")
        .expect("weather offered");
    assert_eq!(
        weather["function"]["parameters"]["required"],
        json!(["city"]),
        "the plugin's JSON Schema reaches the model: {weather}"
    );
    let tool_message = requests[before + 1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .expect("the tool result goes back to the model");
    let content = tool_message["content"].as_str().unwrap();
    assert!(
        content.starts_with("<untrusted-data") && content.contains(PARIS),
        "{content}"
    );

    // Killed: no withdrawal, so the tool goes when its last announcement expires,
    // and the model is no longer offered it. The other tools stay.
    plugin.kill().await;
    let offered = poll_turns_until(&stack, &fake, "weather to leave the model's tools", |t| {
        !t.iter().any(|n| n == "weather")
    })
    .await;
    assert!(offered.iter().any(|n| n == "read_file"), "{offered:?}");

    // A model that still asks for it is told, and the turn ends well.
    fake.push([
        Reply::ToolCalls(vec![("weather".into(), json!({"city": "Paris"}))]),
        Reply::EchoLastTool("The weather tool says: ".into()),
    ]);
    let (reply, _) = chat(&stack, "s1", "And now?").await;
    assert!(reply.contains("no tool named"), "reply was: {reply}");

    for p in [&mut stack.memory, &mut stack.tools, &mut stack.agent]
        .into_iter()
        .flatten()
    {
        assert!(p.try_status().is_none(), "{} kept running", p.name());
    }
}

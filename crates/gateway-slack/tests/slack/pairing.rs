//! `dm_policy = "pairing"` on Slack: the code goes to the stranger's DM through
//! `N_OUTBOUND`, their messages start no turn, and approval lets the next one through.

use nexus_testkit::{eventually, fake_openai::Reply, nexus};
use serde_json::Value;

use super::{WAIT, World, dm};

fn texts(posts: &[Value], needle: &str) -> Vec<String> {
    posts
        .iter()
        .filter_map(|p| p["text"].as_str())
        .filter(|t| t.contains(needle))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stranger_on_slack_gets_a_pairing_code_and_is_answered_after_approval() {
    let w = World::with_stack(Reply::Text("hello, paired".into())).await;
    let _gw = w
        .gateway(&[("NEXUS__CHANNELS__SLACK__DM_POLICY", "pairing")])
        .await;
    for (id, ts) in [
        ("EvStranger1", "1700000020.000100"),
        ("EvStranger2", "1700000021.000100"),
    ] {
        let (status, _) = w.post_event(&dm(id, "USTRANGER", "hi?", ts), None).await;
        assert_eq!(status, 200);
    }

    let posts = w.barrier(2).await;
    let codes = texts(&posts, "pairing code is");
    assert_eq!(codes.len(), 1, "one code for two messages: {posts:?}");
    let code = codes[0]
        .split("pairing code is ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert_eq!(w.llm.requests().len(), 1, "only the barrier started a turn");
    assert_eq!(w.inbound_count().await, 1);

    let env = w.gateway_env(&[]);
    let out = nexus(&env, &["pair", "approve", &code]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("the stranger to be told they are in", WAIT, || async {
        (!texts(&w.slack.posts(), "You're in").is_empty()).then_some(())
    })
    .await;

    let (status, _) = w
        .post_event(
            &dm("EvStranger3", "USTRANGER", "now?", "1700000022.000100"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    eventually("the approved sender's answer", WAIT, || async {
        (texts(&w.slack.posts(), "hello, paired").len() == 2).then_some(())
    })
    .await;
    assert_eq!(w.llm.requests().len(), 2);
    assert_eq!(w.inbound_count().await, 2);
}

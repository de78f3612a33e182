//! A Telegram message is one trace, from the gateway's intake to its delivery.

use nexus_testkit::{
    Stack, TestEnv,
    fake_openai::{FakeOpenAi, Reply},
    otlp::{OtlpCollector, connected_trace, parent_of},
};

use super::{ADA, FakeTelegram, TOKEN, WAIT, World};

#[tokio::test(flavor = "multi_thread")]
async fn a_telegram_message_and_its_delivery_are_one_trace() {
    let (collector, otlp) = OtlpCollector::start().await;
    let test = TestEnv::new();
    let llm = FakeOpenAi::start(Reply::Text("Hello Ada".into())).await;
    let mut env = llm.env();
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", otlp));
    let env: Vec<_> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let stack = Stack::start(&test, &env).await;
    let tg = FakeTelegram::start(TOKEN).await;
    let mut w = World {
        test,
        llm,
        tg,
        stack: Some(stack),
        allow_from: ADA.to_string(),
    };
    let gw = w.gateway(&[]).await;
    w.tg.push_text(ADA, "ada", "Hi there");
    w.replies(ADA, 1).await;

    // Read after every process exited: what they batched was flushed on the way out.
    assert!(gw.terminate(WAIT).await.success());
    let stack = w.stack.take().unwrap();
    for p in [stack.agent, stack.tools, stack.memory]
        .into_iter()
        .flatten()
    {
        assert!(p.terminate(WAIT).await.success());
    }
    let spans = collector.spans();
    let root = spans
        .iter()
        .find(|s| s.span.name == "intake telegram")
        .unwrap_or_else(|| panic!("no intake span: {spans:#?}"));
    assert_eq!(root.service, "gateway-telegram");
    let trace = connected_trace(&spans, root);
    let delivery = trace
        .iter()
        .find(|s| s.span.name == "deliver telegram")
        .expect("the delivery span in the message's trace");
    assert_eq!(delivery.service, "gateway-telegram");
    // Its parent is agent-core's, the span that published the reply.
    let parent = parent_of(&trace, delivery).unwrap();
    assert_eq!(parent.service, "agent-core");
}

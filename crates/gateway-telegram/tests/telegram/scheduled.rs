//! Scheduled jobs through Telegram: the user asks for reminders in the chat, the
//! model makes jobs with the `cron` tool (served by the scheduler binary), and a
//! fire comes back into the same chat, once.

use nexus_testkit::{ServiceProcess, eventually, fake_openai::Reply, nexus};
use serde_json::{Value, json};

use super::{ADA, WAIT, World, settle};

/// `ms` since the epoch as RFC 3339 in UTC (days to civil date after H. Hinnant).
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn cron_list(env: &[(String, String)]) -> Value {
    let out = nexus(env, &["cron", "list", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reminder_asked_for_in_the_chat_becomes_a_job_and_fires_back_into_it_once() {
    assert_eq!(rfc3339(1_772_438_400_000), "2026-03-02T08:00:00Z");
    let w = World::new(Reply::Text("unused".into()), true).await;
    let env = w.env(&[]);
    let _scheduler = ServiceProcess::spawn("scheduler", &[], &env);
    eventually("agent-core to be offered the cron tool", WAIT, || async {
        let out = nexus(&env, &["status", "--json", "--wait-ms", "300"]).await;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["tool_providers"]
            .as_array()?
            .iter()
            .any(|p| p["provider"] == "scheduler" && p["tools"].to_string().contains("\"cron\""))
            .then_some(())
    })
    .await;
    let _gw = w.gateway(&[]).await;

    let weekly = |expr: &str| {
        Reply::ToolCalls(vec![(
            "cron".into(),
            json!({"action": "add", "message": "Remind the user to send the weekly report",
                   "cron_expr": expr, "tz": "Europe/Berlin"}),
        )])
    };
    // The model gets a field wrong first, reads why, and fixes its call.
    w.llm.push([
        weekly("0 9 * *"),
        weekly("0 9 * * 1"),
        Reply::EchoLastTool("Scheduled. ".into()),
    ]);
    w.tg.push_text(
        ADA,
        "ada",
        "Remind me every Monday at 9 AM to send the report",
    );
    let first = w.replies(ADA, 1).await;
    let refused = w.llm.requests()[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "tool")
        .unwrap()["content"]
        .to_string();
    assert!(
        refused.contains("invalid_args") && refused.contains("has 4 field(s)"),
        "{refused}"
    );
    // The gateway sends HTML: quotes arrive as &quot;.
    assert!(
        first[0].text.contains("0 9 * * 1")
            && first[0].text.contains("(Europe/Berlin); next fire Mon "),
        "{}",
        first[0].text
    );

    let soon = rfc3339(nexus_common::now_ms() + 4_000);
    w.llm.push([
        Reply::ToolCalls(vec![(
            "cron".into(),
            json!({"action": "add", "message": "Remind the user to stretch", "at": soon}),
        )]),
        Reply::EchoLastTool("Scheduled. ".into()),
        // The fire's turn.
        Reply::Text("Time to stretch, Ada!".into()),
    ]);
    w.tg.push_text(ADA, "ada", "In a few seconds, remind me to stretch");
    w.replies(ADA, 2).await;
    let sent = w.replies(ADA, 3).await;
    assert_eq!(sent[2].text, "Time to stretch, Ada!");

    let jobs = eventually("the one-shot job to be done", WAIT, || async {
        let v = cron_list(&env).await;
        let jobs = v["jobs"].as_array()?.clone();
        jobs.iter()
            .any(|j| j["message"] == "Remind the user to stretch" && j["last_outcome"] == "fired")
            .then_some(jobs)
    })
    .await;
    let weekly = jobs
        .iter()
        .find(|j| j["message"] == "Remind the user to send the weekly report")
        .unwrap();
    assert_eq!(weekly["cron"], "0 9 * * 1");
    assert_eq!(weekly["timezone"], "Europe/Berlin");
    assert_eq!(weekly["owner"], format!("telegram_{ADA}"));
    assert_eq!(weekly["channel"], "telegram");
    assert_eq!(weekly["chat_id"], ADA.to_string());
    let once = jobs
        .iter()
        .find(|j| j["message"] == "Remind the user to stretch")
        .unwrap();
    assert!(once["next_run_ms"].is_null(), "{once}");

    // Every reply is delivered and acked, and the one-shot fires no more: what
    // reached the chat is all that ever will.
    settle(&w.bus().await).await;
    let stretch =
        w.tg.sent_to(ADA)
            .iter()
            .filter(|s| s.text.contains("Time to stretch"))
            .count();
    assert_eq!(stretch, 1);

    // The fire's turn knew it was a job, and saw the chat's earlier exchanges.
    let requests = w.llm.requests();
    let fire = requests
        .iter()
        .find(|r| r.to_string().contains("[scheduled job job-"))
        .expect("the fire's model call");
    let system = fire["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("## Scheduled job"), "{system}");
    assert!(
        fire.to_string().contains("Remind me every Monday at 9 AM"),
        "the chat's history reaches the fire's turn"
    );
}

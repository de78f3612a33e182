//! The `cron` tool as the model meets it, and `nexus cron` as operators do: the
//! built scheduler binary on real NATS, called on `N.tool.cron` with a caller
//! context the way agent-core calls it.

use std::time::Duration;

use nexus_bus::{Bus, TraceContext};
use nexus_common::domain::ToolName;
use nexus_proto::v1::{ToolCall, ToolContext, ToolErrorKind, ToolResult, tool_result::Outcome};
use nexus_testkit::{ServiceProcess, TestEnv, eventually, nexus};
use serde_json::{Value, json};

/// Starts the scheduler binary with the test's environment plus `extra`; returns
/// it and its environment (for `nexus`).
pub async fn spawn_scheduler(
    test: &TestEnv,
    extra: &[(&str, &str)],
) -> (ServiceProcess, Vec<(String, String)>) {
    let mut env = test.process_env();
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let process = ServiceProcess::spawn("scheduler", &[], &env);
    let bus = test.bus("probe").await;
    eventually("the scheduler to serve", Duration::from_secs(30), || {
        let bus = bus.clone();
        async move {
            bus.is_served("scheduler", Duration::from_millis(200))
                .await
                .ok()?
                .then_some(())
        }
    })
    .await;
    (process, env)
}

/// One `cron` call as `user` in Telegram chat `chat`.
pub async fn cron(
    bus: &Bus,
    user: &str,
    chat: &str,
    args: Value,
) -> Result<String, (ToolErrorKind, String)> {
    cron_in(bus, user, chat, "", args).await
}

/// [`cron`] by a user whose profile names the time zone `timezone`.
pub async fn cron_in(
    bus: &Bus,
    user: &str,
    chat: &str,
    timezone: &str,
    args: Value,
) -> Result<String, (ToolErrorKind, String)> {
    let call = ToolCall {
        call_id: "call-1".into(),
        name: "cron".into(),
        arguments_json: args.to_string(),
        context: Some(ToolContext {
            session_id: format!("telegram:{chat}"),
            user_id: user.into(),
            channel: "telegram".into(),
            chat_id: chat.into(),
            turn_id: "telegram:1".into(),
            approved: false,
            timezone: timezone.into(),
        }),
    };
    let result: ToolResult = bus
        .request(
            bus.subjects().tool(&ToolName::parse("cron").unwrap()),
            &call,
            &TraceContext::new_root(),
            None,
        )
        .await
        .unwrap();
    match result.outcome {
        Some(Outcome::Output(text)) => Ok(text),
        Some(Outcome::Error(e)) => Err((e.kind(), e.message)),
        None => panic!("a result without an outcome"),
    }
}

/// The id in the text of an `add` result.
pub fn job_id(added: &str) -> String {
    let start = added.find("job-").expect("a job id");
    added[start..start + 14].to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_failure_that_says_what_to_fix() {
    let test = TestEnv::new();
    let (_scheduler, _) = spawn_scheduler(
        &test,
        &[
            ("NEXUS__SCHEDULER__MIN_INTERVAL_SECS", "300"),
            ("NEXUS__SCHEDULER__MAX_JOBS_PER_USER", "2"),
        ],
    )
    .await;
    let bus = test.bus("test").await;
    let add = |extra: Value| {
        let mut args = json!({"action": "add", "message": "Remind the user to stretch"});
        for (k, v) in extra.as_object().unwrap() {
            args[k] = v.clone();
        }
        args
    };
    for (args, kind, says) in [
        (
            add(json!({"cron_expr": "0 9 * *"})),
            ToolErrorKind::InvalidArgs,
            "has 4 field(s)",
        ),
        (
            add(json!({"cron_expr": "0 25 * * 1"})),
            ToolErrorKind::InvalidArgs,
            "hour field \"25\": 25 is out of range 0-23",
        ),
        (
            add(json!({"cron_expr": "0 9 * * 1", "tz": "Mars/Olympus"})),
            ToolErrorKind::InvalidArgs,
            "unknown timezone \"Mars/Olympus\"",
        ),
        (
            add(json!({"at": "2020-01-01T09:00", "tz": "Europe/Berlin"})),
            ToolErrorKind::InvalidArgs,
            "is in the past",
        ),
        (
            add(json!({"at": "next tuesday"})),
            ToolErrorKind::InvalidArgs,
            "not an ISO 8601",
        ),
        (
            add(json!({"every_seconds": 60})),
            ToolErrorKind::InvalidArgs,
            "below the shortest interval allowed, 300 s",
        ),
        (
            add(json!({"cron_expr": "* * * * *"})),
            ToolErrorKind::InvalidArgs,
            "fires every 1 min; the shortest interval allowed is 5 min",
        ),
        (
            add(json!({"cron_expr": "0 9 * * 1", "every_seconds": 3600})),
            ToolErrorKind::InvalidArgs,
            "exactly one of cron_expr, every_seconds or at",
        ),
        (
            json!({"action": "add", "cron_expr": "0 9 * * 1"}),
            ToolErrorKind::InvalidArgs,
            "message is empty",
        ),
        (
            json!({"action": "remove"}),
            ToolErrorKind::InvalidArgs,
            "job_id is missing",
        ),
        (
            json!({"action": "snooze"}),
            ToolErrorKind::InvalidArgs,
            "unknown variant `snooze`",
        ),
        (
            add(json!({"every_seconds": 3600, "owner": "mallory"})),
            ToolErrorKind::InvalidArgs,
            "unknown field `owner`",
        ),
    ] {
        let (got, message) = cron(&bus, "ada", "42", args.clone()).await.unwrap_err();
        assert_eq!(got, kind, "{args}: {message}");
        assert!(message.contains(says), "{args}: {message}");
    }
    // Nothing above was stored; two good jobs are, and a third is over the limit.
    cron(&bus, "ada", "42", add(json!({"every_seconds": 300})))
        .await
        .unwrap();
    cron(&bus, "ada", "42", add(json!({"cron_expr": "*/5 * * * *"})))
        .await
        .unwrap();
    let (kind, message) = cron(&bus, "ada", "42", add(json!({"every_seconds": 600})))
        .await
        .unwrap_err();
    assert_eq!(kind, ToolErrorKind::Denied);
    assert!(message.contains("max_jobs_per_user = 2"), "{message}");
    let list = cron(&bus, "ada", "42", json!({"action": "list"}))
        .await
        .unwrap();
    assert!(
        list.starts_with("2 job(s), 2 waiting to fire, 0 paused"),
        "{list}"
    );
    // Another user's limit is their own.
    cron(&bus, "bob", "43", add(json!({"every_seconds": 600})))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_cannot_see_or_change_another_users_job() {
    let test = TestEnv::new();
    let (_scheduler, env) = spawn_scheduler(&test, &[]).await;
    let bus = test.bus("test").await;
    let added = cron(
        &bus,
        "ada",
        "42",
        json!({"action": "add", "message": "Remind Ada of the report", "cron_expr": "0 9 * * 1", "tz": "Europe/Berlin"}),
    )
    .await
    .unwrap();
    assert!(
        added.contains("cron \"0 9 * * 1\" (Europe/Berlin); next fire Mon "),
        "{added}"
    );
    let id = job_id(&added);

    let bobs = cron(&bus, "bob", "43", json!({"action": "list"}))
        .await
        .unwrap();
    assert_eq!(bobs, "The user has no scheduled jobs.");
    // Someone else's job and no job at all get the same answer: ids reveal nothing.
    let (_, missing) = cron(
        &bus,
        "bob",
        "43",
        json!({"action": "remove", "job_id": "job-0000000000"}),
    )
    .await
    .unwrap_err();
    for action in ["remove", "pause", "resume"] {
        let (kind, message) = cron(&bus, "bob", "43", json!({"action": action, "job_id": id}))
            .await
            .unwrap_err();
        assert_eq!(kind, ToolErrorKind::NotFound, "{action}");
        assert_eq!(message, missing.replace("job-0000000000", &id), "{action}");
    }
    let adas = cron(&bus, "ada", "42", json!({"action": "list"}))
        .await
        .unwrap();
    assert!(
        adas.contains(&id) && adas.contains("Remind Ada of the report"),
        "{adas}"
    );

    // Operators see every job with its owner.
    let out = nexus(&env, &["cron", "list", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["jobs"][0]["id"], id.as_str());
    assert_eq!(v["jobs"][0]["owner"], "ada");
    assert_eq!(v["jobs"][0]["chat_id"], "42");

    let removed = cron(&bus, "ada", "42", json!({"action": "remove", "job_id": id}))
        .await
        .unwrap();
    assert!(removed.starts_with(&format!("Removed {id}")), "{removed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_manage_every_job_with_nexus_cron_and_status_counts_them() {
    let test = TestEnv::new();
    let (_scheduler, env) = spawn_scheduler(&test, &[]).await;
    let run = |args: &[&str]| {
        let env = env.clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = nexus(&env, &args).await;
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (code, hourly, err) = run(&[
        "cron",
        "add",
        "--user",
        "ada",
        "--channel",
        "telegram",
        "--chat",
        "42",
        "--every",
        "3600",
        "-m",
        "Check the build",
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        hourly.starts_with("added job-") && hourly.contains("for ada: every 1 h"),
        "{hourly}"
    );
    let (code, weekly, err) = run(&[
        "cron",
        "add",
        "--user",
        "bob",
        "--channel",
        "slack",
        "--chat",
        "C1",
        "--cron",
        "0 9 * * 1",
        "--tz",
        "America/New_York",
        "--missed",
        "skip",
        "-m",
        "Weekly report",
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    let (hourly, weekly) = (job_id(&hourly), job_id(&weekly));
    let (code, _, err) = run(&[
        "cron",
        "add",
        "--user",
        "bob",
        "--channel",
        "slack",
        "--chat",
        "C1",
        "--cron",
        "0 9 * *",
        "-m",
        "x",
    ])
    .await;
    assert_eq!(code, Some(1));
    assert!(err.contains("has 4 field(s)"), "{err}");

    let (_, table, _) = run(&["cron", "list"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ID")
            && lines[0].contains("OWNER")
            && lines[0].contains("LAST OUTCOME")
    );
    // The hourly job is due first.
    assert!(
        lines[1].starts_with(&hourly) && lines[1].contains("ada"),
        "{table}"
    );
    assert!(
        lines[2].starts_with(&weekly) && lines[2].contains("bob"),
        "{table}"
    );
    assert!(
        lines[2].contains("cron \"0 9 * * 1\" (America/New_York)"),
        "{table}"
    );

    let (code, out, err) = run(&["cron", "pause", &hourly]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with(&format!("paused {hourly}")), "{out}");
    let out = nexus(&env, &["status", "--json"]).await;
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["scheduler"]["jobs"], 2);
    assert_eq!(status["scheduler"]["paused"], 1);
    assert_eq!(status["scheduler"]["next_fire"]["job"], weekly.as_str());
    assert!(
        status["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "scheduler"),
        "{status}"
    );
    let (_, text, _) = run(&["status"]).await;
    assert!(
        text.contains("scheduler: 2 job(s), 1 waiting to fire, 1 paused; next fire ")
            && text.contains(&weekly),
        "{text}"
    );

    let (code, out, _) = run(&["cron", "resume", &hourly]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("next fire"), "{out}");
    let (code, _, _) = run(&["cron", "remove", &weekly]).await;
    assert_eq!(code, Some(0));
    let (code, _, err) = run(&["cron", "remove", &weekly]).await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("there is no job \"{weekly}\"")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_without_tz_runs_in_the_users_own_time_zone_and_tz_wins_over_it() {
    let test = TestEnv::new();
    let (_scheduler, _env) = spawn_scheduler(&test, &[]).await;
    let bus = test.bus("test").await;
    let theirs = cron_in(
        &bus,
        "ada",
        "42",
        "America/New_York",
        json!({"action": "add", "message": "standup", "cron_expr": "0 9 * * 1"}),
    )
    .await
    .unwrap();
    assert!(theirs.contains("(America/New_York)"), "{theirs}");
    let given = cron_in(
        &bus,
        "ada",
        "42",
        "America/New_York",
        json!({"action": "add", "message": "call", "cron_expr": "0 9 * * 1", "tz": "Asia/Tokyo"}),
    )
    .await
    .unwrap();
    assert!(given.contains("(Asia/Tokyo)"), "{given}");
    let default = cron(
        &bus,
        "bob",
        "43",
        json!({"action": "add", "message": "x", "cron_expr": "0 9 * * 1"}),
    )
    .await
    .unwrap();
    assert!(
        default.contains("(UTC)"),
        "[memory] timezone when the profile names none: {default}"
    );
}

//! `nexus users limit` and `nexus usage`: an admin's limits are stored, reported
//! against the user's consumption, and bad values are refused clearly.

use std::time::Duration;

use nexus_testkit::{
    Stack, TestEnv, eventually,
    fake_openai::{FakeOpenAi, Reply},
    nexus,
};

use super::{llm_env, refs, text};

#[tokio::test(flavor = "multi_thread")]
async fn a_limit_set_with_users_limit_shows_in_usage_against_the_users_consumption() {
    let test = TestEnv::new();
    std::fs::write(
        test.config_path(),
        "[limits]\nuser_tokens_per_month = 777\n",
    )
    .unwrap();
    let fake = FakeOpenAi::start(Reply::Text("hi".into())).await;
    let env = llm_env(&fake, false);
    let stack = Stack::start(&test, &refs(&env)).await;
    let out = nexus(stack.env(), &["chat", "-m", "hello", "--session", "a"]).await;
    assert!(out.status.success(), "{}", text(&out).1);
    // Whoever the CLI user is, the ledger names them.
    let user = eventually(
        "the call in the ledger",
        Duration::from_secs(30),
        || async {
            let out = nexus(stack.env(), &["usage", "--json"]).await;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["total"]["calls"] == 1).then(|| v["lines"][0]["key"].as_str().unwrap().to_owned())
        },
    )
    .await;

    let out = nexus(
        stack.env(),
        &[
            "users",
            "limit",
            &user,
            "--tokens-per-day",
            "1000",
            "--messages-per-minute",
            "5",
        ],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(&format!("limits of {user}")), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "tokens_per_day       1000           (set for {user})"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("tokens_per_month     777            ([limits])"),
        "{stdout}"
    );
    let out = nexus(
        stack.env(),
        &["users", "limit", "ada", "--cost-per-day", "0.5"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out).1);

    let out = nexus(stack.env(), &["usage", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let users = v["limits"]["users"].as_array().unwrap();
    let me = users.iter().find(|u| u["user"] == user.as_str()).unwrap();
    assert_eq!(me["tokens_per_day"], 1000);
    assert_eq!(me["messages_per_minute"], 5);
    assert_eq!(me["tokens_per_month"], 777);
    assert_eq!(me["today"]["tokens"], 49);
    assert_eq!(me["this_month"]["tokens"], 49);
    let ada = users.iter().find(|u| u["user"] == "ada").unwrap();
    assert_eq!(ada["cost_per_day"], 0.5);
    assert_eq!(ada["today"]["tokens"], 0);

    let out = nexus(stack.env(), &["usage"]).await;
    let (stdout, _) = text(&out);
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{user} ")) && l.contains(" / "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.contains("49 / 1000") && line.contains("49 / 777"),
        "{line}"
    );
    assert!(stdout.contains("limits, used / limit"), "{stdout}");

    // Back to the setting, and bad values said clearly.
    let out = nexus(
        stack.env(),
        &["users", "limit", &user, "--tokens-per-day", "default"],
    )
    .await;
    assert!(
        text(&out)
            .0
            .contains("tokens_per_day       0              ([limits])"),
        "{}",
        text(&out).0
    );
    let out = nexus(
        stack.env(),
        &["users", "limit", &user, "--cost-per-day", "-1"],
    )
    .await;
    assert!(!out.status.success());
    assert!(text(&out).1.contains("0 or more"), "{}", text(&out).1);
    let out = nexus(
        stack.env(),
        &["users", "limit", &user, "--tokens-per-day", "lots"],
    )
    .await;
    assert!(!out.status.success());
    assert!(text(&out).1.contains("not a limit"), "{}", text(&out).1);
}

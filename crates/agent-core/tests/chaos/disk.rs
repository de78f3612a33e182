//! The workspace's disk full: memory-svc and tool-runner run in a user and mount
//! namespace of the test's own (`unshare`, `nsenter`; no root needed) where the
//! workspace is a small tmpfs (the host's mounts are never touched), and the test
//! fills it. A write the model asks for fails with a
//! message the model reads, a turn that cannot be stored is not acked (it waits for
//! space, it is not lost), and once space returns everything goes on: the waiting turn
//! answered once, the history whole, and no half-written file.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use nexus_testkit::{bin_path, fake_openai::Reply};
use serde_json::json;

use super::*;

/// A tmpfs of `size` on `path`, seen only by the processes started through it.
struct SmallDisk {
    /// Holds the namespace open until its stdin closes.
    holder: Child,
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let mut holder = Command::new("unshare")
            // A user namespace of its own, so no root is needed to mount the tmpfs.
            .args([
                "--user",
                "--map-root-user",
                "--mount",
                "--propagation",
                "private",
            ])
            .args(["sh", "-c"])
            .arg("mount -t tmpfs -o size=\"$1\" tmpfs \"$2\" && echo mounted && exec cat")
            .args(["sh", size])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare (util-linux) on PATH");
        let mut line = String::new();
        let _ = BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line);
        assert_eq!(
            line.trim(),
            "mounted",
            "a tmpfs in a private mount namespace needs user namespaces (unshare --user): {:?}",
            holder.wait_with_output().map(|o| o.stderr)
        );
        Self {
            holder,
            path: path.to_owned(),
        }
    }

    /// nsenter's arguments to enter the namespaces.
    fn namespace(&self) -> [String; 2] {
        let pid = self.holder.id();
        [
            format!("--user=/proc/{pid}/ns/user"),
            format!("--mount=/proc/{pid}/ns/mnt"),
        ]
    }

    /// Starts workspace binary `name` inside the namespace.
    fn spawn(&self, name: &str, env: &[(String, String)]) -> ServiceProcess {
        let bin = bin_path(name);
        let ns = self.namespace();
        ServiceProcess::spawn_program(
            name,
            std::ffi::OsStr::new("nsenter"),
            &[&ns[0], &ns[1], "--", bin.to_str().unwrap()],
            env,
        )
    }

    /// Runs a shell command inside the namespace, in the disk's directory.
    fn sh(&self, script: &str) -> std::process::Output {
        Command::new("nsenter")
            .args(self.namespace())
            .args(["--", "sh", "-c", script, "sh"])
            .arg(&self.path)
            .output()
            .unwrap()
    }

    /// Fills the disk to the last byte.
    fn fill(&self) {
        let out = self.sh("cat /dev/zero > \"$1/filler\"");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("No space left"),
            "{out:?}"
        );
    }

    fn free(&self) {
        assert!(self.sh("rm \"$1/filler\"").status.success());
    }

    fn read(&self, rel: &str) -> Vec<u8> {
        self.sh(&format!("cat \"$1/{rel}\"")).stdout
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_fails_writes_clearly_loses_no_turn_and_the_stack_recovers() {
    let test = TestEnv::new();
    let disk = SmallDisk::mount(&test.workspace_path().join("disk"), "16m");
    let content = "0123456789abcdef".repeat(16 * 1024);
    let fake = FakeOpenAi::start(Reply::ToolThenEchoLastUser {
        tool: "write_file".into(),
        args: json!({"path": "report.txt", "content": content}),
        prefix: "re: ".into(),
    })
    .await;
    let mut env = test.process_env();
    env.extend(llm_env(&fake));
    env.push(("NEXUS_WORKSPACE".into(), disk.path.display().to_string()));
    let mut memory = disk.spawn("memory-svc", &env);
    let mut tools = disk.spawn("tool-runner", &env);
    let mut agent = ServiceProcess::spawn("agent-core", &[], &env);
    wait_registered(
        &test,
        &mut [&mut memory, &mut tools, &mut agent],
        &["memory-svc", "tool-runner", "agent-core"],
    )
    .await;
    let bus = test.bus("test").await;

    send(&bus, "d", 0, "before").await;
    wait_outbound(&bus, 1, within(60)).await;
    assert_eq!(disk.read("report.txt"), content.as_bytes());

    disk.fill();
    let asked = fake.requests().len();
    send(&bus, "d", 1, "while full").await;
    // The write fails and the model is told why; the turn cannot be stored, so it
    // is not acked but tried again.
    let tool_said = eventually("the model told of the failed write", within(60), || async {
        fake.requests()[asked..].iter().find_map(|r| {
            let last = r["messages"].as_array()?.last()?;
            (last["role"] == "tool").then(|| last["content"].to_string())
        })
    })
    .await;
    assert!(
        tool_said.contains("space") || tool_said.contains("full"),
        "{tool_said}"
    );
    eventually("the turn tried again", within(60), || async {
        let redone = fake.requests()[asked..]
            .iter()
            .filter(|r| {
                r["messages"]
                    .as_array()
                    .and_then(|m| m.last())
                    .is_some_and(|m| m["role"] == "user")
            })
            .count();
        (redone >= 2).then_some(())
    })
    .await;
    assert_eq!(
        outbound_count(&bus).await,
        1,
        "answered without being stored"
    );

    disk.free();
    send(&bus, "d", 2, "after").await;
    wait_outbound(&bus, 3, within(90)).await;
    settled(&bus, within(60)).await;
    let all = replies(&bus, within(30)).await;
    let by_chat = assert_once_and_in_order(&all, &BTreeMap::from([("d".to_owned(), 3)]));
    let texts: Vec<&str> = by_chat["d"].iter().map(|r| r.text.as_str()).collect();
    assert_eq!(texts, ["re: before", "re: while full", "re: after"]);
    // Nothing corrupted: the file whole, the history of all three turns stored.
    assert_eq!(disk.read("report.txt"), content.as_bytes());
    let last = fake.requests().pop().unwrap();
    let users: Vec<String> = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(users, ["before", "while full", "after"]);
    for p in [&mut memory, &mut tools, &mut agent] {
        assert!(p.try_status().is_none(), "{} exited", p.name());
    }
}

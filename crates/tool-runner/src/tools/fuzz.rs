//! Property tests of tool arguments as a model writes them: every tool's arguments
//! parse from any JSON into its `Args` or fail as `invalid_args`, and the file tools,
//! run with any arguments (hostile paths above all: `..`, absolute, NUL, `~`, very long,
//! Unicode, `.nexus`, planted links) in a real workspace, give a result or a failure,
//! never a panic, and never touch what lies outside. `PROPTEST_CASES` sets the count.

use nexus_testkit::fuzz::{self, config};
use nexus_tools::{Caller, parse_args};
use proptest::prelude::*;
use serde_json::Value;

use super::{testing::world, *};
use crate::error::ToolErrorKind;

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    fuzz::json_value(hostile_path(), 2, 4)
}

/// Paths a model (or a prompt injection) may write.
fn hostile_path() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "(\\.\\./|\\./|a/|\\.nexus/|\\.NEXUS/|link-dir/|link-file|hard|/|//|~/?)*[a-z.é]{0,8}",
        "/(etc|tmp|proc/self)/[a-z]{0,8}",
        "[a-z/]{0,8}\u{0}[a-z]{0,4}",
        "(a/){100,2100}",
        "[a-z]{256,300}",
        Just(".".to_owned()),
        Just(String::new()),
    ]
}

/// An arguments object with the tools' own field names and any values.
fn arguments() -> impl Strategy<Value = Value> {
    let field = prop::sample::select(vec![
        "path",
        "old_text",
        "new_text",
        "content",
        "pattern",
        "glob",
        "case_insensitive",
        "max_results",
        "recursive",
        "max_entries",
        "offset_line",
        "limit_lines",
        "append",
    ]);
    let value = prop_oneof![
        3 => hostile_path().prop_map(Value::from),
        2 => json_value(),
        1 => prop_oneof![Just(0u64), Just(1), Just(u64::MAX), Just(u64::MAX / 2)].prop_map(Value::from),
        1 => "[a-z.*?\\[\\](){}|\\\\+^$]{0,12}".prop_map(Value::from),
    ];
    prop_oneof![
        4 => prop::collection::btree_map(field, value, 0..5).prop_map(|m| {
            Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
        }),
        1 => json_value(),
    ]
}

/// The tools that work on files only (no network, no commands).
const FILE_TOOLS: &[&str] = &[
    read_file::NAME,
    write_file::NAME,
    edit_file::NAME,
    list_dir::NAME,
    grep_search::NAME,
    delete_file::NAME,
];

#[tokio::test]
async fn a_file_name_too_long_is_an_invalid_argument() {
    // Found by fuzz_file_tools_with_any_arguments_stay_in_the_workspace: ENAMETOOLONG
    // came back as an `internal` failure (a bug, by its kind) rather than invalid_args.
    let (_world, env) = world();
    let long = "a".repeat(300);
    for (tool, args) in [
        (delete_file::NAME, serde_json::json!({ "path": long })),
        (read_file::NAME, serde_json::json!({ "path": long })),
        (
            write_file::NAME,
            serde_json::json!({ "path": long, "content": "x" }),
        ),
    ] {
        let tool = ALL.iter().find(|(n, _)| *n == tool).unwrap().1(&env);
        let caller = Caller {
            approved: true,
            ..Caller::default()
        };
        let failure = tool.call_json(&caller, args).await.unwrap_err();
        assert_eq!(
            failure.kind,
            ToolErrorKind::InvalidArgs,
            "{}",
            failure.message
        );
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_every_tools_arguments_parse_or_are_invalid(args in arguments()) {
        // Each `Args` on its own, including the tools that reach out (exec, fetch_url,
        // web_search), which are not run here.
        let kinds = [
            parse_args::<read_file::Args>(args.clone()).err(),
            parse_args::<write_file::Args>(args.clone()).err(),
            parse_args::<edit_file::Args>(args.clone()).err(),
            parse_args::<list_dir::Args>(args.clone()).err(),
            parse_args::<grep_search::Args>(args.clone()).err(),
            parse_args::<delete_file::Args>(args.clone()).err(),
            parse_args::<exec::Args>(args.clone()).err(),
            parse_args::<fetch_url::Args>(args.clone()).err(),
            parse_args::<web_search::Args>(args).err(),
        ];
        for failure in kinds.into_iter().flatten() {
            prop_assert_eq!(failure.kind, ToolErrorKind::InvalidArgs);
            prop_assert!(failure.message.starts_with("invalid arguments: "));
        }
    }

    #[test]
    fn fuzz_file_tools_with_any_arguments_stay_in_the_workspace(
        tool in prop::sample::select(FILE_TOOLS),
        args in arguments(),
    ) {
        let (world, env) = world();
        world.write("a/b.txt", "one\ntwo\nthree\n");
        world.write("notes.md", "# Notes\n- x\n");
        world.plant_escapes();
        let build = ALL.iter().find(|(n, _)| *n == tool).unwrap().1;
        let tool = build(&env);
        let caller = Caller { approved: true, ..Caller::default() };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let result = runtime.block_on(tool.call_json(&caller, args));
        if let Err(failure) = result {
            prop_assert!(!failure.message.is_empty());
            prop_assert_ne!(failure.kind, ToolErrorKind::Internal, "{}", failure.message);
        }
        world.assert_secret_untouched();
    }

    #[test]
    fn fuzz_hostile_paths_resolve_inside_the_workspace_or_are_refused(raw in hostile_path()) {
        let (world, env) = world();
        world.write("a/b.txt", "x");
        world.plant_escapes();
        let ws = &env.workspace;
        match ws.resolve(&raw) {
            Ok(path) => {
                prop_assert!(!raw.contains('\0'));
                let rel = path.rel();
                prop_assert!(rel.components().all(|c| matches!(c, std::path::Component::Normal(_))), "{rel:?}");
                prop_assert!(!rel.iter().next().is_some_and(|c| c.eq_ignore_ascii_case(crate::sandbox::INTERNAL_DIR)));
                let _ = (path.shown(), path.exists(), path.is_root());
                if path.exists() {
                    let _ = ws.kind(&path);
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        world.assert_secret_untouched();
    }
}

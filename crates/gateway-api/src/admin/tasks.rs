//! `/admin/tasks`: sub-agent tasks from agent-core's `N_tasks` bucket, the store
//! its `/tasks` and `/cancel` read, with Cancel for those still queued or running.
//! Cancelling is what `/cancel` does: the record is marked cancelled (only if
//! nobody changed it since it was read), and the replica running it stops at its
//! next step and sends no result. The task's text and result are not shown.

use std::sync::Arc;

use axum::{Form, extract::State, http::StatusCode, response::Response};
use futures::StreamExt as _;
use nexus_bus::{async_nats::jetstream::kv, kv_key};
use nexus_common::{now_ms, tasks::Task};
use serde::Deserialize;

use super::{
    Admin, AdminState,
    page::{Notice, button, esc, page, table, utc},
};

/// Finished tasks shown below the active ones, newest first.
const FINISHED: usize = 20;

/// `GET /admin/tasks`.
pub async fn tasks(State(state): State<Arc<AdminState>>, admin: Admin) -> Response {
    tasks_page(&state, &admin, StatusCode::OK, Notice::None).await
}

/// The bucket, or `None` while agent-core has not made it (no task was ever started).
async fn bucket(state: &AdminState) -> Result<Option<kv::Store>, String> {
    let bus = &state.bus;
    bus.existing_kv_bucket(&bus.subjects().tasks_bucket())
        .await
        .map_err(|e| format!("opening the tasks bucket: {e}"))
}

async fn all_tasks(kv: &kv::Store) -> Result<Vec<Task>, String> {
    let mut keys = kv
        .keys()
        .await
        .map_err(|e| format!("listing the tasks: {e}"))?;
    let mut out = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| format!("listing the tasks: {e}"))?;
        if let Ok(Some(bytes)) = kv.get(&key).await
            && let Ok(task) = serde_json::from_slice::<Task>(&bytes)
        {
            out.push(task);
        }
    }
    out.sort_by_key(|t| std::cmp::Reverse(t.created_ms));
    Ok(out)
}

async fn tasks_page(
    state: &AdminState,
    admin: &Admin,
    status: StatusCode,
    notice: Notice,
) -> Response {
    let title = "Sub-agent tasks";
    let listed = match bucket(state).await {
        Ok(Some(kv)) => all_tasks(&kv).await,
        Ok(None) => Ok(Vec::new()),
        Err(e) => Err(e),
    };
    let all = match listed {
        Ok(all) => all,
        Err(e) => {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                title,
                "/admin/tasks",
                Some(&admin.csrf),
                &Notice::Failed(e),
                "",
            );
        }
    };
    let (active, finished): (Vec<&Task>, Vec<&Task>) =
        all.iter().partition(|t| t.state.is_active());
    let row = |t: &Task, action: String| {
        vec![
            format!("<span id=\"task-{0}\">{0}</span>", esc(&t.id)),
            esc(&t.label),
            format!(
                "<span id=\"task-state-{}\">{}</span>",
                esc(&t.id),
                t.state.name()
            ),
            esc(&t.origin.user_id),
            esc(&format!("{} {}", t.origin.channel, t.origin.chat_id)),
            utc(t.created_ms),
            if t.started_ms > 0 {
                utc(t.started_ms)
            } else {
                "-".to_owned()
            },
            t.attempts.to_string(),
            action,
        ]
    };
    let active_rows: Vec<Vec<String>> = active
        .iter()
        .map(|t| {
            row(
                t,
                button(
                    "/admin/tasks/cancel",
                    &admin.csrf,
                    &[("id", &t.id)],
                    &format!("cancel-{}", t.id),
                    "Cancel",
                ),
            )
        })
        .collect();
    let finished_rows: Vec<Vec<String>> = finished
        .iter()
        .take(FINISHED)
        .map(|t| row(t, utc(t.finished_ms)))
        .collect();
    let mut body = String::from(
        "<p>Background tasks the <code>spawn</code> tool started, from agent-core's task store \
         (kept 7 days). Cancelling one is what <code>/cancel</code> does in its chat: it stops at \
         its next step and sends no result.</p>",
    );
    if active_rows.is_empty() {
        body.push_str("<p id=\"no-tasks\">No task is queued or running.</p>");
    }
    let header = [
        "Task", "Label", "State", "User", "Chat", "Created", "Started", "Attempts",
    ];
    let mut with_action = header.to_vec();
    with_action.push("Action");
    body.push_str(&table(
        "tasks",
        "Queued and running",
        &with_action,
        &active_rows,
    ));
    body.push_str("<h2>Finished</h2>");
    let mut with_end = header.to_vec();
    with_end.push("Ended");
    body.push_str(&table(
        "tasks-finished",
        &format!("The last {FINISHED} that ended, newest first"),
        &with_end,
        &finished_rows,
    ));
    page(
        status,
        title,
        "/admin/tasks",
        Some(&admin.csrf),
        &notice,
        &body,
    )
}

#[derive(Deserialize)]
pub struct CancelForm {
    csrf: Option<String>,
    #[serde(default)]
    id: String,
}

/// `POST /admin/tasks/cancel`: `/cancel <id>`, for any chat's task.
pub async fn cancel(
    State(state): State<Arc<AdminState>>,
    admin: Admin,
    Form(form): Form<CancelForm>,
) -> Response {
    if let Some(refused) = admin.refused(&state, form.csrf.as_deref()) {
        return refused;
    }
    match cancel_task(&state, form.id.trim()).await {
        Ok(done) => {
            tracing::info!(task = %form.id.trim(), "admin console: task cancelled");
            tasks_page(&state, &admin, StatusCode::OK, Notice::Done(done)).await
        }
        Err(e) => tasks_page(&state, &admin, StatusCode::CONFLICT, Notice::Failed(e)).await,
    }
}

async fn cancel_task(state: &AdminState, id: &str) -> Result<String, String> {
    if id.is_empty() {
        return Err("no task id given".into());
    }
    let Some(kv) = bucket(state).await? else {
        return Err(format!("there is no task {id}"));
    };
    // A conflict means the task moved on meanwhile (agent-core took it): look again.
    for _ in 0..3 {
        let entry = kv
            .entry(kv_key(id))
            .await
            .map_err(|e| format!("reading task {id}: {e}"))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Err(format!("there is no task {id}"));
        };
        let mut task: Task = serde_json::from_slice(&entry.value)
            .map_err(|e| format!("task {id} is not a task record: {e}"))?;
        if let Err(ended) = task.cancel(now_ms()) {
            return Err(format!("task {id} is already {}", ended.name()));
        }
        let bytes = serde_json::to_vec(&task).map_err(|e| e.to_string())?;
        if kv
            .update(kv_key(id), bytes.into(), entry.revision)
            .await
            .is_ok()
        {
            return Ok(format!(
                "cancelled task {id} (\"{}\", of {}): it stops at its next step and sends no result",
                task.label, task.origin.user_id
            ));
        }
    }
    Err(format!("task {id} kept changing; try again"))
}

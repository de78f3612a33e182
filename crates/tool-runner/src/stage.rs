//! `N.files.stage`: copies a workspace file into the media object store so a
//! message can carry it — agent-core touches no disk. The file sandbox's rules
//! apply (the path is a `WorkspacePath`; `.nexus/` and links out are refused).

use std::io::Read as _;

use async_nats::service::{Request, endpoint::Endpoint};
use futures::StreamExt as _;
use nexus_bus::{Bus, reply_bytes};
use nexus_proto::Message as _;
use nexus_proto::v1::{StageFileRequest, StageFileResponse, media_ref::Kind};
use tokio_util::sync::CancellationToken;

use crate::sandbox::{SandboxError, Workspace};

/// Largest file staged when the caller does not say.
const DEFAULT_MAX_BYTES: u64 = 20 * 1024 * 1024;

/// Answers stage requests until `stop`.
pub async fn serve(
    mut endpoint: Endpoint,
    bus: Bus,
    workspace: std::sync::Arc<Workspace>,
    stop: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            () = stop.cancelled() => break,
            r = endpoint.next() => match r { Some(r) => r, None => break },
        };
        let answer = stage(&bus, &workspace, &request).await;
        if let Err(error) = request.respond(reply_bytes(answer)).await {
            tracing::warn!(%error, "stage reply not sent");
        }
    }
    let _ = endpoint.stop().await;
}

async fn stage(
    bus: &Bus,
    workspace: &std::sync::Arc<Workspace>,
    request: &Request,
) -> Result<StageFileResponse, (u16, String)> {
    let req = StageFileRequest::decode(request.message.payload.clone())
        .map_err(|e| (400, format!("not a StageFileRequest: {e}")))?;
    if req.key.is_empty() {
        return Err((400, "the object key is empty".into()));
    }
    let max = if req.max_bytes == 0 {
        DEFAULT_MAX_BYTES
    } else {
        req.max_bytes
    };
    let ws = workspace.clone();
    let path = req.path.clone();
    let read = tokio::task::spawn_blocking(move || -> Result<(String, Vec<u8>), (u16, String)> {
        let p = ws.resolve(&path).map_err(refusal)?;
        let opened = ws.open_file(&p).map_err(refusal)?;
        let shown = p.shown();
        if opened.len > max {
            return Err((
                413,
                format!(
                    "'{shown}' is {} bytes; at most {max} can be sent",
                    opened.len
                ),
            ));
        }
        let mut bytes = Vec::with_capacity(opened.len as usize);
        opened
            .file
            .take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| (500, format!("cannot read '{shown}': {e}")))?;
        if bytes.len() as u64 > max {
            return Err((413, format!("'{shown}' grew beyond {max} bytes while read")));
        }
        Ok((shown, bytes))
    })
    .await
    .map_err(|e| (500, format!("staging stopped unexpectedly: {e}")))??;
    let (shown, bytes) = read;
    let name = shown.rsplit('/').next().unwrap_or(&shown).to_owned();
    let (kind, mime) = kind_of(&name);
    let media = bus
        .put_media(&req.key, kind, mime, &name, "", &bytes)
        .await
        .map_err(|e| (503, format!("the media store did not take the file: {e}")))?;
    tracing::info!(
        path = shown,
        bytes = bytes.len(),
        "file staged for a message"
    );
    Ok(StageFileResponse { media: Some(media) })
}

fn refusal(e: SandboxError) -> (u16, String) {
    let code = match &e {
        SandboxError::Denied(_) => 403,
        SandboxError::NotFound(_) => 404,
        SandboxError::Invalid(_) => 400,
        SandboxError::Io(_) => 500,
    };
    (code, e.to_string())
}

/// What a file is, by its extension: channels send images as pictures, the rest as documents.
fn kind_of(name: &str) -> (Kind, &'static str) {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => (Kind::Image, "image/png"),
        Some("jpg" | "jpeg") => (Kind::Image, "image/jpeg"),
        Some("gif") => (Kind::Image, "image/gif"),
        Some("webp") => (Kind::Image, "image/webp"),
        Some("pdf") => (Kind::Document, "application/pdf"),
        Some("md") => (Kind::Document, "text/markdown"),
        Some("txt" | "log") => (Kind::Document, "text/plain"),
        Some("csv") => (Kind::Document, "text/csv"),
        Some("json") => (Kind::Document, "application/json"),
        Some("html" | "htm") => (Kind::Document, "text/html"),
        _ => (Kind::Document, "application/octet-stream"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_go_as_pictures_and_the_rest_as_documents() {
        assert_eq!(kind_of("chart.PNG"), (Kind::Image, "image/png"));
        assert_eq!(kind_of("report.md"), (Kind::Document, "text/markdown"));
        assert_eq!(
            kind_of("noext"),
            (Kind::Document, "application/octet-stream")
        );
    }
}

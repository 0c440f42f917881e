//! Firmware updates: the running release, the A/B slots, a trial in progress and the last
//! update's outcome (a rollback's reason); uploading a signed bundle, which the daemon checks
//! and hands to the installer agent (the daemon cannot write the slots itself), the agent's
//! progress (refreshing by itself) and the reboot into the armed slot.

use axum::extract::{DefaultBodyLimit, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use maud::{html, Markup};
use sha2::{Digest, Sha256};

use crate::admin::proto::{Command, FirmwareInfo, Reply};
use crate::admin::update::{AgentState, SpoolStatus, UpdateCommand, CHUNK, MAX_BUNDLE};

use crate::web::api::{unexpected, Api};
use crate::web::app::{AppState, Authed, CsrfOnly, Posted, PostedMultipart};
use crate::web::layout::{button_form, csrf_field, page, time_utc, Ctx};

/// The upload route's body limit: the largest bundle and the form around it.
const MAX_UPLOAD_BODY: u64 = MAX_BUNDLE + 64 * 1024;

/// The updates page's routes.
pub fn routes() -> Router<AppState> {
    let limit = usize::try_from(MAX_UPLOAD_BODY).unwrap_or(usize::MAX);
    Router::new()
        .route("/updates", get(show))
        .route("/live/updates", get(live))
        .route(
            "/updates/upload",
            post(upload).layer(DefaultBodyLimit::max(limit)),
        )
        .route("/updates/reboot", post(reboot))
}

async fn show(State(state): State<AppState>, authed: Authed) -> Response {
    let system = state.api().call(Command::System).await;
    let ctx = authed.ctx(&state, "/updates");
    let body = html! {
        @match system {
            Reply::System(s) => @match &s.firmware {
                Some(f) => (slots(f)),
                None => p.muted { "Not running from an Outpost image: " (s.firmware_error.as_deref().unwrap_or("")) }
            },
            other => p.bad { (unexpected(other)) }
        }
        h2 { "Installing an update" }
        div #installer data-refresh="/live/updates" data-every="2" aria-live="polite" {
            (installer(&ctx, state.api()).await)
        }
        noscript { p.muted { "Reload the page to follow the installer." } }
        (upload_form(&ctx))
    };
    Html(page(&ctx, "Updates", body).into_string()).into_response()
}

async fn live(State(state): State<AppState>, authed: Authed) -> Html<String> {
    let ctx = authed.ctx(&state, "/updates");
    Html(installer(&ctx, state.api()).await.into_string())
}

fn slots(f: &FirmwareInfo) -> Markup {
    html! {
        dl.facts #slots {
            dt { "Running" } dd { "Outpost " (f.version) ", built " (time_utc(f.build.saturating_mul(1000))) }
            dt { "Booted from slot" } dd { (f.booted_slot) }
            dt { "Committed slot" } dd { (f.committed_slot.as_deref().unwrap_or("-")) }
            dt { "Trial" } dd {
                @if f.trial { span.warn { "this boot is an update's trial: its health check commits it or the box rolls back" } }
                @else { "none" }
            }
            dt { "Armed for the next boot (at boot)" } dd { (f.armed_slot.as_deref().unwrap_or("nothing")) }
            dt { "Last update" } dd #last-update {
                @match &f.last_update {
                    Some(u) if u.starts_with("rolled-back") => span.bad { (u) },
                    Some(u) => (u),
                    None => "none",
                }
            }
        }
    }
}

/// What the installer agent reports, with the reboot button once a slot is armed.
async fn installer(ctx: &Ctx, api: &Api) -> Markup {
    match api.call(Command::Update(UpdateCommand::State)).await {
        Reply::UpdateState(s) => installer_state(ctx, &s),
        other => html! { p.bad { (unexpected(other)) } },
    }
}

fn installer_state(ctx: &Ctx, s: &SpoolStatus) -> Markup {
    html! {
        div #installer-state data-state=(state_name(&s.agent)) {
            @if let Some(u) = &s.upload {
                p { "Receiving a bundle: " (u.received) " bytes so far." }
            }
            @if let Some(p) = &s.pending {
                p.warn { "Waiting for the installer (" (p) ")." }
            }
            @match &s.agent {
                AgentState::Idle => p.muted { "No update installed since the box started." },
                AgentState::Installing { percent, slot, .. } => {
                    p { "Installing into slot " (slot.as_deref().unwrap_or("?")) ": " (percent) " %" }
                    progress max="100" value=(percent) aria-label="Install progress" { (percent) " %" }
                },
                AgentState::Installed { slot, booted, release, key_id, forced, .. } => {
                    p.ok { "Outpost " (release) " is installed in slot " (slot) " and armed: the next boot tries it." }
                    p { "Signed by key " code { (key_id) } "." @if *forced { " Installed with force (not newer than the running release)." } }
                    p.muted { "After the reboot it commits itself when it passes its health check; otherwise the box returns to slot " (booted) "." }
                    (button_form(&ctx.csrf, "/updates/reboot", &[], "Reboot into the new firmware", "primary", Some("Reboot the box now? Calls in progress are cut.")))
                },
                AgentState::Failed { reason, .. } => p.bad { "The last update was not installed: " (reason) },
                AgentState::Rebooting { slot, .. } => p.warn { "Rebooting into slot " (slot) "…" },
            }
            @if let Some(e) = &s.agent_error {
                p.bad { "The installer's state cannot be read: " (e) }
            }
        }
    }
}

/// The state's wire name (`data-state`, for scripts and tests).
fn state_name(s: &AgentState) -> &'static str {
    match s {
        AgentState::Idle => "idle",
        AgentState::Installing { .. } => "installing",
        AgentState::Installed { .. } => "installed",
        AgentState::Failed { .. } => "failed",
        AgentState::Rebooting { .. } => "rebooting",
    }
}

fn upload_form(ctx: &Ctx) -> Markup {
    html! {
        form.card method="post" action="/updates/upload" enctype="multipart/form-data" {
            // The token first: the daemon checks it before it reads the file.
            (csrf_field(&ctx.csrf))
            h2 { "Upload a signed bundle" }
            p.muted { "An " code { ".bundle" } " file of an Outpost release (at most " (MAX_BUNDLE >> 20) " MiB). The box checks its signature against its trusted keys, its board and its release before anything is written; the installer writes it to the slot not running now." }
            label { input type="checkbox" name="force" value="1"; " Allow an older release or the running one again (force)" }
            label for="bundle" { "Bundle file" }
            input #bundle type="file" name="bundle" accept=".bundle,application/octet-stream" required;
            div.actions { button.primary type="submit" { "Upload and install" } }
        }
    }
}

/// Streams the form's file into the upload commands, a piece of at most [`CHUNK`] at a
/// time; the whole bundle is never in memory.
async fn upload(State(state): State<AppState>, posted: PostedMultipart) -> Response {
    let sid = posted.authed.sid.clone();
    let outcome = receive(state.api(), posted).await;
    state.after(&sid, outcome, "/updates")
}

async fn receive(api: &Api, posted: PostedMultipart) -> Result<String, String> {
    let mut multipart = posted.multipart;
    let size = posted.content_length.unwrap_or(MAX_BUNDLE).min(MAX_BUNDLE);
    let mut force = false;
    loop {
        let field = multipart
            .next_field()
            .await
            .map_err(|e| format!("the form did not arrive whole: {}", e.body_text()))?;
        let Some(mut field) = field else {
            return Err("choose a bundle file to upload".to_owned());
        };
        match field.name() {
            Some("force") => {
                force = true;
                continue;
            }
            Some("bundle") => {}
            _ => continue,
        }
        let id = match api
            .call(Command::Update(UpdateCommand::UploadBegin { size }))
            .await
        {
            Reply::UpdateUpload(u) => u.id,
            other => return Err(unexpected(other)),
        };
        let mut hasher = Sha256::new();
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
        let mut offset = 0u64;
        let streamed: Result<(), String> = async {
            loop {
                let piece = field
                    .chunk()
                    .await
                    .map_err(|e| format!("the upload broke off: {}", e.body_text()))?;
                let last = piece.is_none();
                if let Some(p) = &piece {
                    hasher.update(p);
                    buf.extend_from_slice(p);
                }
                while buf.len() >= CHUNK || (last && !buf.is_empty()) {
                    let n = buf.len().min(CHUNK);
                    let data = base64::engine::general_purpose::STANDARD.encode(&buf[..n]);
                    buf.drain(..n);
                    let cmd = UpdateCommand::UploadChunk {
                        id: id.clone(),
                        offset,
                        data,
                    };
                    match api.call(Command::Update(cmd)).await {
                        Reply::UpdateUpload(u) => offset = u.received,
                        other => return Err(unexpected(other)),
                    }
                }
                if last {
                    return Ok(());
                }
            }
        }
        .await;
        if let Err(e) = streamed.and_then(|()| {
            if offset == 0 {
                Err("the bundle file is empty (or none was chosen)".to_owned())
            } else {
                Ok(())
            }
        }) {
            let _ = api
                .call(Command::Update(UpdateCommand::UploadAbort { id }))
                .await;
            return Err(e);
        }
        let finish = UpdateCommand::UploadFinish {
            id,
            sha256: hex::encode(hasher.finalize()),
            force,
        };
        return match api.call(Command::Update(finish)).await {
            Reply::UpdateUpload(u) => Ok(match u.checked {
                Some(c) => format!(
                    "the bundle ({} bytes) holds Outpost {}, signed by key {}: handed to the installer",
                    u.received, c.release, c.key_id
                ),
                None => format!("{} bytes received", u.received),
            }),
            other => Err(unexpected(other)),
        };
    }
}

async fn reboot(State(state): State<AppState>, posted: Posted<CsrfOnly>) -> Response {
    let outcome = state
        .api()
        .change(Command::Update(UpdateCommand::Reboot))
        .await;
    state.after(&posted.authed.sid, outcome, "/updates")
}

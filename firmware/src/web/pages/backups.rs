//! Backups: the list with the schedule and the off-site targets, making one now,
//! verifying one, downloading one.

use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use serde::Deserialize;

use crate::admin::proto::{Command, Reply};
use crate::backup::api::BackupCommand;
use crate::backup::BackupList;

use crate::web::api::unexpected;
use crate::web::app::{AppState, Authed, CsrfOnly, Posted};
use crate::web::download;
use crate::web::layout::{button_form, duration, page, time_utc, Ctx};

/// The backups' routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/backups", get(list))
        .route("/backups/now", post(now))
        .route("/backups/verify", post(verify))
        .route("/backups/file/{name}", get(file))
}

async fn list(State(state): State<AppState>, authed: Authed) -> Response {
    let reply = state.api().call(Command::Backup(BackupCommand::List)).await;
    let ctx = authed.ctx(&state, "/backups");
    let body = html! {
        div.actions {
            (button_form(&ctx.csrf, "/backups/now", &[], "Make a backup now", "primary", None))
        }
        @match reply {
            Reply::Backups(list) => (listing(&ctx, &list)),
            other => p.bad { (unexpected(other)) }
        }
    };
    Html(page(&ctx, "Backups", body).into_string()).into_response()
}

fn size(bytes: u64) -> String {
    match bytes {
        0..=9_999 => format!("{bytes} B"),
        10_000..=9_999_999 => format!("{} KB", bytes / 1000),
        _ => format!("{} MB", bytes / 1_000_000),
    }
}

fn listing(ctx: &Ctx, l: &BackupList) -> Markup {
    html! {
        dl.facts {
            dt { "Directory" } dd { (l.dir) }
            dt { "Newest" } dd { @match l.newest_age_secs { Some(a) => { (duration(a)) " ago" }, None => span.warn { "none" } } }
            dt { "Schedule" } dd { (l.schedule) }
            dt { "Next run" } dd { @match l.next_run_ms { Some(t) => (time_utc(t)), None => "-" } }
            dt { "Encrypted to" } dd { (l.key) }
            @if l.incomplete > 0 { dt { "Incomplete files" } dd.warn { (l.incomplete) } }
        }
        @if !l.targets.is_empty() {
            h2 { "Off-site targets" }
            ul { @for t in &l.targets {
                li {
                    strong { (t.name) } ": "
                    @match (&t.last_ok_ms, &t.last_ok_file) {
                        (Some(at), Some(f)) => { "last upload " (f) " at " (time_utc(*at)) }
                        _ => span.warn { "nothing uploaded yet" }
                    }
                    @if let Some(e) = &t.last_upload_error { " · " span.bad { (e) } }
                    @if t.uploading { " · uploading" }
                }
            } }
        }
        h2 { "On the box" }
        @if l.backups.is_empty() {
            p.muted { "No backup on the box." }
        } @else {
            div.table-wrap { table #backup-table {
                thead { tr { th scope="col" { "File" } th scope="col" { "Made" } th.num scope="col" { "Size" } th scope="col" { "State" } th scope="col" { "" } } }
                tbody { @for b in &l.backups {
                    tr {
                        td { (b.name) }
                        td { (time_utc(b.created_ms)) }
                        td.num { (size(b.size)) }
                        td { @match &b.damaged { Some(d) => span.bad { "damaged: " (d) }, None => @if b.verified { span.ok { "verified" } } @else { "not verified" } } }
                        td {
                            a.button href={ "/backups/file/" (b.name) } download { "Download" } " "
                            (button_form(&ctx.csrf, "/backups/verify", &[("file", &b.name)], "Verify", "", None))
                        }
                    }
                } }
            } }
        }
    }
}

async fn now(State(state): State<AppState>, posted: Posted<CsrfOnly>) -> Response {
    let outcome = match state.api().call(Command::Backup(BackupCommand::Now)).await {
        Reply::BackupCreated(e) => Ok(format!("backup {} made ({})", e.name, size(e.size))),
        other => Err(unexpected(other)),
    };
    state.after(&posted.authed.sid, outcome, "/backups")
}

#[derive(Deserialize)]
struct FileForm {
    file: String,
}

async fn verify(State(state): State<AppState>, posted: Posted<FileForm>) -> Response {
    let file = posted.form.file;
    let cmd = Command::Backup(BackupCommand::Verify {
        file: file.clone(),
        key: None,
        signer: None,
        trust_unsigned: false,
    });
    let outcome = match state.api().call(cmd).await {
        Reply::BackupVerified(c) => Ok(format!(
            "{file} is complete: made {} on {} (Outpost {}), {} extensions, {} call records, {} voicemail messages, {} configuration revisions, {} desk phones",
            time_utc(c.created_ms),
            c.hostname,
            c.outpost_version,
            c.extensions,
            c.cdrs,
            c.voicemail,
            c.config_revisions,
            c.phones
        )),
        other => Err(unexpected(other)),
    };
    state.after(&posted.authed.sid, outcome, "/backups")
}

async fn file(
    State(state): State<AppState>,
    _authed: Authed,
    Path(name): Path<String>,
) -> Response {
    let file = name.clone();
    download::stream(
        state.api(),
        move |offset, len| {
            Command::Backup(BackupCommand::Read {
                file: file.clone(),
                offset,
                len,
            })
        },
        &name,
        "application/octet-stream",
        false,
    )
    .await
}

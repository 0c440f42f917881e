//! Voicemail: the messages of every mailbox (or one), and the call recordings, played in
//! the browser, downloaded, deleted.

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::html;
use serde::Deserialize;

use crate::admin::proto::{Command, Reply};

use crate::web::api::unexpected;
use crate::web::app::{AppState, Authed, CsrfOnly, Posted};
use crate::web::download;
use crate::web::layout::{button_form, page, seconds_1, time_utc};

/// The voicemail routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/voicemail", get(list))
        .route("/voicemail/{id}/audio", get(audio))
        .route("/voicemail/{id}/delete", post(delete))
        .route("/recordings/{id}/audio", get(recording_audio))
        .route("/recordings/{id}/delete", post(recording_delete))
}

#[derive(Deserialize)]
struct MailboxQuery {
    mailbox: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    authed: Authed,
    Query(q): Query<MailboxQuery>,
) -> Response {
    let mailbox = q
        .mailbox
        .map(|m| m.trim().to_owned())
        .filter(|m| !m.is_empty());
    let reply = state
        .api()
        .call(Command::VmList {
            mailbox: mailbox.clone(),
        })
        .await;
    let recordings = state
        .api()
        .call(Command::RecList {
            ext: mailbox.clone(),
        })
        .await;
    let ctx = authed.ctx(&state, "/voicemail");
    let body = html! {
        form method="get" action="/voicemail" aria-label="Mailbox" {
            label for="mailbox" { "Mailbox (empty: all)" }
            input #mailbox type="text" name="mailbox" value=(mailbox.as_deref().unwrap_or("")) inputmode="numeric";
            div.actions { button type="submit" { "Show" } }
        }
        @match reply {
            Reply::Voicemail(list) if list.is_empty() => p.muted { "No messages." },
            Reply::Voicemail(list) => {
                div.table-wrap { table #messages {
                    thead { tr {
                        th scope="col" { "Mailbox" } th scope="col" { "From" } th scope="col" { "Left at" }
                        th.num scope="col" { "Length" } th scope="col" { "" } th scope="col" { "Listen" } th scope="col" { "" }
                    } }
                    tbody { @for m in &list {
                        tr {
                            td { (m.mailbox) }
                            td { (m.caller) }
                            td { (time_utc(m.at)) }
                            td.num { (seconds_1(u64::from(m.duration_ms))) }
                            td { @if m.new { strong { "new" } } }
                            td {
                                audio controls preload="none" src={ "/voicemail/" (m.id) "/audio" } aria-label={ "Message from " (m.caller) } {
                                    a href={ "/voicemail/" (m.id) "/audio" } { "Download" }
                                }
                            }
                            td { (button_form(&ctx.csrf, &format!("/voicemail/{}/delete", m.id), &[], "Delete", "danger", Some("Delete this message?"))) }
                        }
                    } }
                } }
            }
            other => p.bad { (unexpected(other)) }
        }
        h2 #recordings-title { "Call recordings" }
        @match recordings {
            Reply::Recordings(list) if list.is_empty() => p.muted { "No call recordings." },
            Reply::Recordings(list) => {
                div.table-wrap { table #recordings aria-labelledby="recordings-title" {
                    thead { tr {
                        th scope="col" { "Caller" } th scope="col" { "Callee" } th scope="col" { "Recorded by" }
                        th scope="col" { "Started" } th.num scope="col" { "Length" } th scope="col" { "Listen" } th scope="col" { "" }
                    } }
                    tbody { @for r in &list {
                        tr {
                            td { (r.caller) }
                            td { (r.callee) }
                            td { (r.by) }
                            td { (time_utc(r.started)) }
                            td.num { (seconds_1(u64::from(r.duration_ms))) }
                            td {
                                audio controls preload="none" src={ "/recordings/" (r.id) "/audio" } aria-label={ "Recording of " (r.caller) " with " (r.callee) } {
                                    a href={ "/recordings/" (r.id) "/audio" } { "Download" }
                                }
                            }
                            td { (button_form(&ctx.csrf, &format!("/recordings/{}/delete", r.id), &[], "Delete", "danger", Some("Delete this recording?"))) }
                        }
                    } }
                } }
            }
            other => p.bad { (unexpected(other)) }
        }
    };
    Html(page(&ctx, "Voicemail", body).into_string()).into_response()
}

async fn recording_audio(
    State(state): State<AppState>,
    _authed: Authed,
    Path(id): Path<u64>,
) -> Response {
    download::stream(
        state.api(),
        move |offset, len| Command::RecAudio { id, offset, len },
        &format!("recording-{id}.wav"),
        "audio/wav",
        true,
    )
    .await
}

async fn recording_delete(
    State(state): State<AppState>,
    Path(id): Path<u64>,
    posted: Posted<CsrfOnly>,
) -> Response {
    let outcome = state.api().change(Command::RecDel { id }).await;
    state.after(&posted.authed.sid, outcome, "/voicemail")
}

async fn audio(State(state): State<AppState>, _authed: Authed, Path(id): Path<u64>) -> Response {
    download::stream(
        state.api(),
        move |offset, len| Command::VmAudio {
            id,
            offset,
            len: Some(len),
        },
        &format!("voicemail-{id}.wav"),
        "audio/wav",
        true,
    )
    .await
}

async fn delete(
    State(state): State<AppState>,
    Path(id): Path<u64>,
    posted: Posted<CsrfOnly>,
) -> Response {
    let outcome = state.api().change(Command::VmDel { id }).await;
    state.after(&posted.authed.sid, outcome, "/voicemail")
}

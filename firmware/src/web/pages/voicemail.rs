//! Voicemail: the messages of every mailbox (or one), played in the browser, deleted.

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
    };
    Html(page(&ctx, "Voicemail", body).into_string()).into_response()
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

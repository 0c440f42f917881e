//! Firmware updates: the running release, the A/B slots, a trial in progress and the last
//! update's outcome (a rollback's reason).

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup};

use crate::admin::proto::{Command, FirmwareInfo, Reply};

use crate::web::api::unexpected;
use crate::web::app::{AppState, Authed};
use crate::web::layout::{page, time_utc};

/// The updates page's routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/updates", get(show))
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
    };
    Html(page(&ctx, "Updates", body).into_string()).into_response()
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
            dt { "Armed for the next boot" } dd { (f.armed_slot.as_deref().unwrap_or("nothing")) }
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

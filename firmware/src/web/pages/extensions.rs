//! Extensions: the list, adding, and each extension's page (password, forwarding,
//! caller-ID, voicemail PIN, digest, delete).

use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use serde::Deserialize;

use crate::admin::proto::{Command, ExtensionDetail, ExtensionInfo, Reply};

use crate::web::api::unexpected;
use crate::web::app::{AppState, Authed, CsrfOnly, Posted};
use crate::web::layout::{button_form, csrf_field, page, Ctx};

/// The extensions' routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/extensions", get(list).post(add))
        .route("/extensions/{ext}", get(show))
        .route("/extensions/{ext}/name", post(rename))
        .route("/extensions/{ext}/password", post(password))
        .route("/extensions/{ext}/forwarding", post(forwarding))
        .route("/extensions/{ext}/caller-id", post(caller_id))
        .route("/extensions/{ext}/pin", post(pin))
        .route("/extensions/{ext}/digest", post(digest))
        .route("/extensions/{ext}/delete", post(delete))
}

async fn list(State(state): State<AppState>, authed: Authed) -> Response {
    let reply = state.api().call(Command::ExtList).await;
    let ctx = authed.ctx(&state, "/extensions");
    let body = match reply {
        Reply::Extensions(list) => list_body(&ctx, &list),
        other => html! { p.bad { (unexpected(other)) } },
    };
    Html(page(&ctx, "Extensions", body).into_string()).into_response()
}

/// The list and the add form (public for the rendering benchmark).
pub fn list_body(ctx: &Ctx, list: &[ExtensionInfo]) -> Markup {
    html! {
        section.card aria-labelledby="h-add" {
            h2 #h-add { "Add an extension" }
            form method="post" action="/extensions" {
                (csrf_field(&ctx.csrf))
                label for="new-ext" { "Number" }
                input #new-ext type="text" name="ext" required pattern="[A-Za-z0-9]{1,16}" inputmode="numeric" autocomplete="off";
                label for="new-name" { "Name (optional)" }
                input #new-name type="text" name="name" maxlength="64" autocomplete="off";
                label for="new-password" { "SIP password (8–128 characters)" }
                input #new-password type="password" name="password" required minlength="8" maxlength="128" autocomplete="new-password";
                div.actions { button.primary type="submit" { "Add extension" } }
            }
        }
        p { (list.len()) " extensions, " (list.iter().filter(|e| e.registered > 0).count()) " with a phone registered." }
        div.table-wrap { table #extensions {
            thead { tr { th scope="col" { "Extension" } th scope="col" { "Name" } th.num scope="col" { "Phones" } } }
            tbody {
                @for e in list {
                    tr {
                        td { a href={ "/extensions/" (e.ext) } { (e.ext) } }
                        td { (e.name.as_deref().unwrap_or("")) }
                        td.num { (e.registered) }
                    }
                }
            }
        } }
    }
}

#[derive(Deserialize)]
struct AddForm {
    ext: String,
    name: Option<String>,
    password: String,
}

async fn add(State(state): State<AppState>, posted: Posted<AddForm>) -> Response {
    let f = posted.form;
    let ext = f.ext.trim().to_owned();
    let outcome = state
        .api()
        .change(Command::ExtAdd {
            ext: ext.clone(),
            name: f.name.filter(|n| !n.trim().is_empty()),
            password: f.password,
        })
        .await;
    let to = if outcome.is_ok() {
        ext_page(&ext)
    } else {
        "/extensions".to_owned()
    };
    state.after(&posted.authed.sid, outcome, &to)
}

async fn show(State(state): State<AppState>, authed: Authed, Path(ext): Path<String>) -> Response {
    let reply = state
        .api()
        .call(Command::ExtShow { ext: ext.clone() })
        .await;
    let ctx = authed.ctx(&state, "/extensions");
    match reply {
        Reply::Extension(d) => {
            let title = format!("Extension {}", d.ext);
            Html(page(&ctx, &title, detail(&ctx, &d)).into_string()).into_response()
        }
        other => Html(
            page(&ctx, "Extension", html! { p.bad { (unexpected(other)) } p { a href="/extensions" { "All extensions" } } })
                .into_string(),
        )
        .into_response(),
    }
}

fn detail(ctx: &Ctx, d: &ExtensionDetail) -> Markup {
    let base = format!("/extensions/{}", d.ext);
    let fw = &d.forwarding;
    html! {
        p { a href="/extensions" { "← All extensions" } }
        dl.facts {
            dt { "Name" } dd { (d.name.as_deref().unwrap_or("-")) }
            dt { "Voicemail PIN" } dd { @if d.vm_pin_set { "set" } @else { "not set" } }
            dt { "Digest" } dd { (d.digest) }
        }
        h2 { "Phones" }
        @if d.registrations.is_empty() {
            p.muted { "No phone is registered." }
        } @else {
            div.table-wrap { table {
                thead { tr { th scope="col" { "Contact" } th scope="col" { "From" } th scope="col" { "Phone" } th.num scope="col" { "Expires in" } } }
                tbody { @for r in &d.registrations {
                    tr { td { (r.contact) } td { (r.source) } td { (r.user_agent.as_deref().unwrap_or("-")) } td.num { (r.expires_in_secs) " s" } }
                } }
            } }
        }
        div.grid {
            form.card method="post" action={ (base) "/name" } {
                h2 { "Name" }
                (csrf_field(&ctx.csrf))
                label for="name" { "Display name (empty: none)" }
                input #name type="text" name="name" maxlength="64" value=(d.name.as_deref().unwrap_or("")) autocomplete="off";
                div.actions { button type="submit" { "Save name" } }
            }
            form.card method="post" action={ (base) "/password" } {
                h2 { "SIP password" }
                (csrf_field(&ctx.csrf))
                label for="password" { "New password" }
                input #password type="password" name="password" required minlength="8" maxlength="128" autocomplete="new-password";
                div.actions { button type="submit" { "Change password" } }
            }
            form.card method="post" action={ (base) "/forwarding" } {
                h2 { "Call forwarding" }
                (csrf_field(&ctx.csrf))
                label for="fw-always" { "Always to" }
                input #fw-always type="text" name="always" value=(fw.always.as_deref().unwrap_or("")) inputmode="tel";
                label for="fw-busy" { "When busy to" }
                input #fw-busy type="text" name="busy" value=(fw.busy.as_deref().unwrap_or("")) inputmode="tel";
                label for="fw-no-answer" { "On no answer to (up to 4, comma-separated, tried in turn)" }
                input #fw-no-answer type="text" name="no_answer" value=(fw.no_answer_list().join(",")) inputmode="tel";
                label for="fw-after" { "No answer after (seconds)" }
                input #fw-after type="number" name="no_answer_secs" min="1" max="600" value=(if fw.no_answer_ms == 0 { 20 } else { fw.no_answer_ms.div_ceil(1000) });
                div.actions { button type="submit" { "Save forwarding" } }
            }
            form.card method="post" action={ (base) "/caller-id" } {
                h2 { "Caller-ID on outside calls" }
                (csrf_field(&ctx.csrf))
                label for="caller-id" { "Number (empty: the route's or trunk's)" }
                input #caller-id type="text" name="number" value=(d.caller_id.as_deref().unwrap_or("")) inputmode="tel";
                div.actions { button type="submit" { "Save caller-ID" } }
            }
            form.card method="post" action={ (base) "/pin" } {
                h2 { "Voicemail PIN" }
                (csrf_field(&ctx.csrf))
                label for="pin" { "New PIN (4–12 digits)" }
                input #pin type="password" name="pin" required pattern="[0-9]{4,12}" inputmode="numeric" autocomplete="off";
                div.actions { button type="submit" { "Set PIN" } }
            }
            form.card method="post" action={ (base) "/digest" } {
                h2 { "Digest algorithms" }
                (csrf_field(&ctx.csrf))
                label for="digest" { "Offer to this extension's phones" }
                select #digest name="digest" {
                    @for (v, label) in [("default", "the box's default"), ("md5", "MD5"), ("sha256", "SHA-256"), ("both", "SHA-256 and MD5")] {
                        option value=(v) selected[d.digest == v] { (label) }
                    }
                }
                div.actions { button type="submit" { "Save" } }
            }
        }
        h2 { "Delete" }
        (button_form(&ctx.csrf, &format!("{base}/delete"), &[], &format!("Delete extension {}", d.ext), "danger",
            Some("Delete this extension, its phones' registrations and its settings?")))
    }
}

/// The page of extension `ext`; a number that is not an extension number (it came from
/// the URL) leads to the list.
fn ext_page(ext: &str) -> String {
    match crate::names::validate_ext(ext) {
        Ok(()) => format!("/extensions/{ext}"),
        Err(_) => "/extensions".to_owned(),
    }
}

/// Runs a change of extension `ext` and goes back to its page with the outcome.
async fn ext_change(state: &AppState, sid: &str, ext: &str, cmd: Command) -> Response {
    let outcome = state.api().change(cmd).await;
    state.after(sid, outcome, &ext_page(ext))
}

#[derive(Deserialize)]
struct NameForm {
    name: Option<String>,
}

async fn rename(
    State(state): State<AppState>,
    Path(ext): Path<String>,
    posted: Posted<NameForm>,
) -> Response {
    let name = blank_none(posted.form.name);
    let cmd = Command::ExtName {
        ext: ext.clone(),
        name,
    };
    ext_change(&state, &posted.authed.sid, &ext, cmd).await
}

#[derive(Deserialize)]
struct PasswordForm {
    password: String,
}

async fn password(
    State(state): State<AppState>,
    Path(ext): Path<String>,
    posted: Posted<PasswordForm>,
) -> Response {
    let password = posted.form.password;
    let cmd = Command::ExtPasswd {
        ext: ext.clone(),
        password,
    };
    ext_change(&state, &posted.authed.sid, &ext, cmd).await
}

#[derive(Deserialize)]
struct ForwardForm {
    always: Option<String>,
    busy: Option<String>,
    no_answer: Option<String>,
    no_answer_secs: Option<String>,
}

fn blank_none(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

async fn forwarding(
    State(state): State<AppState>,
    Path(ext): Path<String>,
    posted: Posted<ForwardForm>,
) -> Response {
    let f = posted.form;
    let secs = match blank_none(f.no_answer_secs).map(|s| s.parse::<u64>()) {
        None => 20,
        Some(Ok(s)) => s,
        Some(Err(_)) => {
            let why = "the no-answer time is not a number of seconds".to_owned();
            return state.after(&posted.authed.sid, Err(why), &ext_page(&ext));
        }
    };
    let mut forwarding = pbx_core::endpoint::Forwarding {
        always: blank_none(f.always),
        busy: blank_none(f.busy),
        no_answer_ms: secs.saturating_mul(1000),
        ..pbx_core::endpoint::Forwarding::default()
    };
    // A comma-separated follow-me list, as `outpostctl ext forward --no-answer A,B`.
    forwarding.set_no_answer_list(blank_none(f.no_answer).as_deref());
    let cmd = Command::ExtForward {
        ext: ext.clone(),
        forwarding,
    };
    ext_change(&state, &posted.authed.sid, &ext, cmd).await
}

#[derive(Deserialize)]
struct NumberForm {
    number: Option<String>,
}

async fn caller_id(
    State(state): State<AppState>,
    Path(ext): Path<String>,
    posted: Posted<NumberForm>,
) -> Response {
    let number = blank_none(posted.form.number);
    let cmd = Command::ExtCallerId {
        ext: ext.clone(),
        number,
    };
    ext_change(&state, &posted.authed.sid, &ext, cmd).await
}

#[derive(Deserialize)]
struct PinForm {
    pin: String,
}

async fn pin(
    State(state): State<AppState>,
    Path(ext): Path<String>,
    posted: Posted<PinForm>,
) -> Response {
    let pin = posted.form.pin;
    let cmd = Command::VmPin {
        ext: ext.clone(),
        pin,
    };
    ext_change(&state, &posted.authed.sid, &ext, cmd).await
}

#[derive(Deserialize)]
struct DigestForm {
    digest: String,
}

async fn digest(
    State(state): State<AppState>,
    Path(ext): Path<String>,
    posted: Posted<DigestForm>,
) -> Response {
    let digest = posted.form.digest;
    let cmd = Command::ExtDigest {
        ext: ext.clone(),
        digest,
    };
    ext_change(&state, &posted.authed.sid, &ext, cmd).await
}

async fn delete(
    State(state): State<AppState>,
    Path(ext): Path<String>,
    posted: Posted<CsrfOnly>,
) -> Response {
    let outcome = state
        .api()
        .change(Command::ExtDel { ext: ext.clone() })
        .await;
    let to = if outcome.is_ok() {
        "/extensions".to_owned()
    } else {
        ext_page(&ext)
    };
    state.after(&posted.authed.sid, outcome, &to)
}

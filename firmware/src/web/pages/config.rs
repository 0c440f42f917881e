//! The configuration: the running revision in an editor, validation errors at their line,
//! the diff against the running revision, apply with a trial countdown, confirm, rollback,
//! and the revision history.

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use serde::Deserialize;

use crate::admin::proto::{Command, ConfigCommand, Reply};
use crate::revisions::{Revision, RevisionState};

use crate::web::api::unexpected;
use crate::web::app::{AppState, Authed, CsrfOnly, Posted};
use crate::web::layout::{button_form, csrf_field, page, time_utc, Ctx};

/// The configuration's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/config", get(show))
        .route("/config/apply", post(apply))
        .route("/config/preview", post(preview))
        .route("/config/confirm", post(confirm))
        .route("/config/rollback", post(rollback))
        .route("/config/rev/{rev}", get(revision))
        .route("/config/diff", get(diff))
}

/// What the editor shows besides the text.
#[derive(Debug, Default)]
struct Editor {
    /// The text in the editor.
    text: String,
    comment: String,
    confirm_secs: u64,
    /// A refusal and the line it names.
    error: Option<(String, Option<usize>)>,
    /// The diff against the running revision.
    diff: Option<String>,
}

async fn running(state: &AppState) -> Result<(u32, String), String> {
    match state
        .api()
        .call(Command::Config(ConfigCommand::Show { rev: None }))
        .await
    {
        Reply::ConfigText { rev, text } => Ok((rev, text)),
        other => Err(unexpected(other)),
    }
}

async fn revisions(state: &AppState) -> Result<Vec<Revision>, String> {
    match state.api().call(Command::Config(ConfigCommand::List)).await {
        Reply::ConfigRevisions(list) => Ok(list),
        other => Err(unexpected(other)),
    }
}

async fn show(State(state): State<AppState>, authed: Authed) -> Response {
    let editor = match running(&state).await {
        Ok((_, text)) => Editor {
            text,
            confirm_secs: 120,
            ..Editor::default()
        },
        Err(e) => Editor {
            error: Some((e, None)),
            ..Editor::default()
        },
    };
    render(&state, &authed, editor).await
}

async fn render(state: &AppState, authed: &Authed, editor: Editor) -> Response {
    let list = revisions(state).await;
    let running_rev = running(state).await.map(|(rev, _)| rev).ok();
    let ctx = authed.ctx(state, "/config");
    let body = html! {
        @match &list {
            Ok(list) => {
                @if let Some(p) = list.iter().find(|r| r.state == RevisionState::Pending) {
                    (trial(&ctx, p))
                }
            }
            Err(e) => p.bad { (e) }
        }
        @if let Some(rev) = running_rev { p { "Running: revision " (rev) "." } }
        (editor_form(&ctx, &editor))
        @if let Some(d) = &editor.diff {
            h2 #diff { "Changes against the running revision" }
            @if d.is_empty() { p.muted { "No changes." } } @else { (diff_listing(d)) }
        }
        h2 #history { "Revisions" }
        @if let Ok(list) = &list { (history(&ctx, list, running_rev)) }
    };
    Html(page(&ctx, "Configuration", body).into_string()).into_response()
}

fn trial(ctx: &Ctx, p: &Revision) -> Markup {
    let by = p.confirm_by.unwrap_or_default();
    html! {
        div.flash.error role="alert" #trial {
            p {
                strong { "Revision " (p.rev) " is on trial." }
                " Unless confirmed by " (time_utc(by)) ", the previous revision is applied back: "
                strong data-deadline=(by) { "confirm before " (time_utc(by)) }
            }
            div.actions {
                (button_form(&ctx.csrf, "/config/confirm", &[], "Confirm", "primary", None))
                (button_form(&ctx.csrf, "/config/rollback", &[], "Roll back now", "danger", None))
            }
        }
    }
}

fn editor_form(ctx: &Ctx, e: &Editor) -> Markup {
    let line = e.error.as_ref().and_then(|(_, l)| *l);
    html! {
        @if let Some((message, line)) = &e.error {
            div.flash.error role="alert" #config-error {
                @if let Some(l) = line { strong { "Line " (l) ": " } }
                (message)
            }
            @if let Some(l) = line { (listing(&e.text, *l)) }
        }
        form method="post" action="/config/apply" {
            (csrf_field(&ctx.csrf))
            label for="config-text" { "Configuration (TOML, as in docs/configuration.md)" }
            textarea #config-text name="text" rows="28" spellcheck="false" data-error-line=[line] { (e.text) }
            label for="config-comment" { "Comment (shown in the history)" }
            input #config-comment type="text" name="comment" maxlength="200" value=(e.comment);
            label for="config-trial" { "Trial" }
            select #config-trial name="confirm_secs" {
                @for (secs, label) in [(60, "roll back unless confirmed within 1 minute"), (120, "within 2 minutes"), (300, "within 5 minutes"), (0, "no trial: keep it")] {
                    option value=(secs) selected[e.confirm_secs == secs] { (label) }
                }
            }
            div.actions {
                button.primary type="submit" { "Apply" }
                button type="submit" formaction="/config/preview" { "Show changes" }
                a href="/config" { "Discard edits" }
            }
        }
    }
}

/// The text with its lines numbered and line `error` marked.
fn listing(text: &str, error: usize) -> Markup {
    let first = error.saturating_sub(5).max(1);
    html! {
        ol.listing start=(first) aria-label="The lines around the error" {
            @for (i, l) in text.lines().enumerate().skip(first - 1).take(11) {
                @if i + 1 == error { li.error { code { (l) } } } @else { li { code { (l) } } }
            }
        }
    }
}

fn diff_listing(d: &str) -> Markup {
    html! {
        pre.diff { @for l in d.lines() {
            @if l.starts_with('+') && !l.starts_with("+++") { span.add { (l) } "\n" }
            @else if l.starts_with('-') && !l.starts_with("---") { span.del { (l) } "\n" }
            @else { (l) "\n" }
        } }
    }
}

fn state_name(s: RevisionState) -> &'static str {
    match s {
        RevisionState::Applied => "running",
        RevisionState::Pending => "on trial",
        RevisionState::Superseded => "superseded",
        RevisionState::RolledBack => "rolled back",
    }
}

fn history(ctx: &Ctx, list: &[Revision], running: Option<u32>) -> Markup {
    html! {
        div.table-wrap { table #revisions {
            thead { tr { th.num scope="col" { "Revision" } th scope="col" { "Stored" } th scope="col" { "State" } th scope="col" { "Comment" } th scope="col" { "" } } }
            tbody { @for r in list.iter().rev().take(50) {
                tr {
                    td.num { (r.rev) }
                    td { (time_utc(r.at)) }
                    td { (state_name(r.state)) }
                    td { (r.comment) }
                    td {
                        a href={ "/config/rev/" (r.rev) } { "View" } " · "
                        a href={ "/config/diff?to=" (r.rev) } { "Changes" }
                        @if Some(r.rev) != running {
                            " " (button_form(&ctx.csrf, "/config/rollback", &[("rev", &r.rev.to_string())], &format!("Apply revision {} again", r.rev), "", Some("Apply this revision again?")))
                        }
                    }
                }
            } }
        } }
    }
}

/// The line a refusal names: `line N` in a parse error, else the line of the key it names
/// (`` invalid `section.key` ``).
pub fn error_line(text: &str, message: &str) -> Option<usize> {
    if let Some(i) = message.find("line ") {
        let digits: String = message[i + 5..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = digits.parse::<usize>() {
            return Some(n);
        }
    }
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    key_line(text, &message[start..start + len])
}

/// The line of `section.key` (or of `[section]` when the key is not written).
fn key_line(text: &str, key: &str) -> Option<usize> {
    let (section, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    let mut current = String::new();
    let mut header = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[') {
            current = h.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
            if current == section || (section.is_empty() && current == leaf) {
                header.get_or_insert(i + 1);
            }
            continue;
        }
        if current == section {
            if let Some(rest) = t.strip_prefix(leaf) {
                if rest.trim_start().starts_with('=') {
                    return Some(i + 1);
                }
            }
        }
    }
    header
}

#[derive(Deserialize)]
struct ApplyForm {
    text: String,
    comment: Option<String>,
    confirm_secs: Option<u64>,
}

async fn apply(State(state): State<AppState>, posted: Posted<ApplyForm>) -> Response {
    let ApplyForm {
        text,
        comment,
        confirm_secs,
    } = posted.form;
    let text = text.replace("\r\n", "\n");
    let confirm = confirm_secs.filter(|s| *s > 0);
    let comment = comment
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty());
    let reply = state
        .api()
        .call(Command::Config(ConfigCommand::Apply {
            text: text.clone(),
            confirm_secs: confirm,
            comment: comment.clone(),
        }))
        .await;
    match reply {
        Reply::Done { message } => state.after(&posted.authed.sid, Ok(message), "/config"),
        other => {
            let message = unexpected(other);
            let line = error_line(&text, &message);
            let editor = Editor {
                text,
                comment: comment.unwrap_or_default(),
                confirm_secs: confirm.unwrap_or(0),
                error: Some((message, line)),
                diff: None,
            };
            render(&state, &posted.authed, editor).await
        }
    }
}

async fn preview(State(state): State<AppState>, posted: Posted<ApplyForm>) -> Response {
    let text = posted.form.text.replace("\r\n", "\n");
    let editor = match running(&state).await {
        Ok((rev, old)) => Editor {
            diff: Some(crate::revisions::diff(
                &old,
                &text,
                &format!("revision {rev} (running)"),
                "edited",
            )),
            text,
            comment: posted.form.comment.unwrap_or_default(),
            confirm_secs: posted.form.confirm_secs.unwrap_or(120),
            error: None,
        },
        Err(e) => Editor {
            text,
            error: Some((e, None)),
            ..Editor::default()
        },
    };
    render(&state, &posted.authed, editor).await
}

async fn confirm(State(state): State<AppState>, posted: Posted<CsrfOnly>) -> Response {
    let outcome = state
        .api()
        .change(Command::Config(ConfigCommand::Confirm))
        .await;
    state.after(&posted.authed.sid, outcome, "/config")
}

#[derive(Deserialize)]
struct RollbackForm {
    rev: Option<u32>,
}

async fn rollback(State(state): State<AppState>, posted: Posted<RollbackForm>) -> Response {
    let rev = posted.form.rev;
    let outcome = state
        .api()
        .change(Command::Config(ConfigCommand::Rollback { rev }))
        .await;
    state.after(&posted.authed.sid, outcome, "/config")
}

async fn revision(State(state): State<AppState>, authed: Authed, Path(rev): Path<u32>) -> Response {
    let reply = state
        .api()
        .call(Command::Config(ConfigCommand::Show { rev: Some(rev) }))
        .await;
    let ctx = authed.ctx(&state, "/config");
    let body = html! {
        p { a href="/config" { "← Configuration" } " · " a href={ "/config/diff?to=" (rev) } { "Changes from the revision before" } }
        @match reply {
            Reply::ConfigText { text, .. } => pre { (text) },
            other => p.bad { (unexpected(other)) }
        }
    };
    Html(page(&ctx, &format!("Revision {rev}"), body).into_string()).into_response()
}

#[derive(Deserialize)]
struct DiffQuery {
    from: Option<u32>,
    to: Option<u32>,
}

async fn diff(
    State(state): State<AppState>,
    authed: Authed,
    Query(q): Query<DiffQuery>,
) -> Response {
    let reply = state
        .api()
        .call(Command::Config(ConfigCommand::Diff {
            from: q.from,
            to: q.to,
        }))
        .await;
    let ctx = authed.ctx(&state, "/config");
    let body = html! {
        p { a href="/config" { "← Configuration" } }
        @match reply {
            Reply::ConfigText { text, .. } if text.is_empty() => p.muted { "No changes." },
            Reply::ConfigText { text, .. } => (diff_listing(&text)),
            other => p.bad { (unexpected(other)) }
        }
    };
    Html(page(&ctx, "Changes", body).into_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# c\n[sip]\nlisten = []\n\n[registrar]\nmin_expires = \"x\"\n\n[web]\nlisten = []\nidle_timeout_secs = 5\n";

    #[test]
    fn errors_point_at_their_line() {
        assert_eq!(
            error_line(
                TEXT,
                "the new configuration: line 6, column 15: invalid type"
            ),
            Some(6)
        );
        assert_eq!(
            error_line(TEXT, "invalid `sip.listen`: at least one address is needed"),
            Some(3)
        );
        assert_eq!(
            error_line(
                TEXT,
                "invalid `web.idle_timeout_secs`: must be between 60 and 86400"
            ),
            Some(10)
        );
        assert_eq!(
            error_line(TEXT, "invalid `web.key`: web.cert is set"),
            Some(8),
            "a key not written: its section"
        );
        assert_eq!(error_line(TEXT, "invalid `media.port_first`"), None);
        assert_eq!(error_line(TEXT, "something else"), None);
    }
}

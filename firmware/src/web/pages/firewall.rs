//! The firewall: bans (unban), account locks (unlock), the allow list, rules with their
//! hit counters, the kernel's counters, alerts, and ban lists in and out.

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use serde::Deserialize;

use crate::admin::proto::{Command, FwBansInfo, FwCommand, FwRuleInfo, FwStatusInfo, Reply};

use crate::web::api::unexpected;
use crate::web::app::{AppState, Authed, Posted};
use crate::web::layout::{button_form, csrf_field, duration, page, Ctx};
use crate::web::pages::dashboard::alert_list;

/// Alerts listed.
const ALERTS: usize = 100;

/// The firewall's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/firewall", get(show))
        .route("/firewall/unban", post(unban))
        .route("/firewall/unlock", post(unlock))
        .route("/firewall/allow", post(allow))
        .route("/firewall/import", post(import))
        .route("/firewall/export", get(export))
}

async fn show(State(state): State<AppState>, authed: Authed) -> Response {
    let api = state.api();
    let status = api
        .call(Command::Fw(FwCommand::Status { cached: true }))
        .await;
    let bans = api.call(Command::Fw(FwCommand::Bans)).await;
    let rules = api.call(Command::Fw(FwCommand::Rules)).await;
    let alerts = api
        .call(Command::Fw(FwCommand::Alerts { limit: ALERTS }))
        .await;
    let ctx = authed.ctx(&state, "/firewall");
    let body = html! {
        @match bans {
            Reply::FwBans(b) => (bans_part(&ctx, &b)),
            other => p.bad { (unexpected(other)) }
        }
        @match status {
            Reply::FwStatus(s) => (status_part(&ctx, &s)),
            other => p.bad { (unexpected(other)) }
        }
        h2 #rules { "Rules" }
        @match rules {
            Reply::FwRules(r) => (rules_part(&r)),
            other => p.bad { (unexpected(other)) }
        }
        h2 #alerts { "Alerts" }
        @match alerts {
            Reply::FwAlerts(a) if a.is_empty() => p.muted { "No alerts." }
            Reply::FwAlerts(a) => (alert_list(&a)),
            other => p.bad { (unexpected(other)) }
        }
        h2 #lists { "Ban lists" }
        div.grid {
            form.card method="post" action="/firewall/import" {
                h3 { "Import" }
                (csrf_field(&ctx.csrf))
                label for="import-text" { "Addresses, one per line (or another box's export)" }
                textarea #import-text name="text" rows="6" required {}
                label for="import-secs" { "Ban for (seconds)" }
                input #import-secs type="number" name="ban_secs" min="60" max="31536000" value="86400";
                div.actions { button type="submit" { "Import bans" } }
            }
            div.card {
                h3 { "Export" }
                p { "The bans in force, in the exchange format other boxes import (or read as a feed)." }
                a.button href="/firewall/export" download { "Download ban list" }
            }
        }
    };
    Html(page(&ctx, "Firewall", body).into_string()).into_response()
}

fn bans_part(ctx: &Ctx, b: &FwBansInfo) -> Markup {
    html! {
        h2 #bans { "Bans (" (b.total_bans) ")" }
        @if b.bans.is_empty() {
            p.muted { "No address is banned." }
        } @else {
            div.table-wrap { table #ban-table {
                thead { tr {
                    th scope="col" { "Address" } th.num scope="col" { "Time left" } th scope="col" { "Rule" }
                    th scope="col" { "Reason" } th.num scope="col" { "Today" } th scope="col" { "" }
                } }
                tbody { @for ban in &b.bans {
                    tr {
                        td { (ban.addr) @if !ban.enforced { " " span.muted { "(monitor)" } } }
                        td.num { (duration(ban.remaining_secs)) }
                        td { (ban.rule) }
                        td { (ban.reason) }
                        td.num { (ban.count_today) }
                        td { (button_form(&ctx.csrf, "/firewall/unban", &[("addr", &ban.addr)], &format!("Unban {}", ban.addr), "", None)) }
                    }
                } }
            } }
        }
        h2 #locks { "Locked accounts (" (b.total_locks) ")" }
        @if b.locks.is_empty() {
            p.muted { "No account is locked." }
        } @else {
            div.table-wrap { table #lock-table {
                thead { tr {
                    th scope="col" { "Account" } th.num scope="col" { "Time left" } th scope="col" { "Rule" }
                    th scope="col" { "Refuses" } th scope="col" { "" }
                } }
                tbody { @for lock in &b.locks {
                    tr {
                        td { (lock.user) }
                        td.num { (duration(lock.remaining_secs)) }
                        td { (lock.rule) }
                        td { (lock.blocks) }
                        td { (button_form(&ctx.csrf, "/firewall/unlock", &[("user", &lock.user)], &format!("Unlock {}", lock.user), "", None)) }
                    }
                } }
            } }
        }
    }
}

fn status_part(ctx: &Ctx, s: &FwStatusInfo) -> Markup {
    html! {
        h2 #state { "State" }
        dl.facts {
            dt { "Mode" } dd { (s.mode) @if let Some(r) = &s.reason { " (" (r) ")" } }
            dt { "Messages inspected" } dd { (s.inspected) }
            dt { "Dropped (banned sources)" } dd { (s.dropped_banned) }
            dt { "Dropped (rules)" } dd { (s.dropped_rule) }
            @if let Some(k) = &s.kernel {
                dt { "Kernel table" } dd { (k.table) @if k.installed { " (installed)" } @else { span.bad { " (missing)" } } }
                @if let Some(c) = &k.counters {
                    dt { "Kernel: packets from banned sources" } dd { (c.banned_packets) }
                    dt { "Kernel: flood meter drops" } dd { (c.meter_drops) }
                    dt { "Kernel: closed RTP ports" } dd { (c.rtp_drops) }
                    dt { "Kernel: connection-cap drops" } dd { (c.conn_drops) }
                    dt { "Kernel: management-zone drops" } dd { (c.mgmt_drops) }
                }
            }
        }
        h2 #allow { "Allow list" }
        p { "Sources on the allow list are never banned. Networks added here last until the next restart; put lasting ones in the configuration (" code { "[firewall.detect] allow" } ")." }
        @if !s.runtime_allow.is_empty() {
            ul { @for n in &s.runtime_allow { li { (n) } } }
        }
        form method="post" action="/firewall/allow" {
            (csrf_field(&ctx.csrf))
            label for="allow-cidr" { "Network or address" }
            input #allow-cidr type="text" name="cidr" required placeholder="192.0.2.0/24";
            div.actions { button type="submit" { "Allow" } }
        }
    }
}

fn rules_part(rules: &[FwRuleInfo]) -> Markup {
    html! {
        div.table-wrap { table #rule-table {
            thead { tr { th scope="col" { "Rule" } th scope="col" { "Threshold" } th scope="col" { "Action" } th.num scope="col" { "Hits" } } }
            tbody { @for r in rules {
                tr { td { (r.rule) } td { (r.threshold) } td { (r.action) } td.num { (r.hits) } }
            } }
        } }
    }
}

#[derive(Deserialize)]
struct AddrForm {
    addr: String,
}

async fn unban(State(state): State<AppState>, posted: Posted<AddrForm>) -> Response {
    let addr = posted.form.addr;
    let outcome = state
        .api()
        .change(Command::Fw(FwCommand::Unban { addr }))
        .await;
    state.after(&posted.authed.sid, outcome, "/firewall#bans")
}

#[derive(Deserialize)]
struct UserForm {
    user: String,
}

async fn unlock(State(state): State<AppState>, posted: Posted<UserForm>) -> Response {
    let user = posted.form.user;
    let outcome = state
        .api()
        .change(Command::Fw(FwCommand::Unlock { user }))
        .await;
    state.after(&posted.authed.sid, outcome, "/firewall#locks")
}

#[derive(Deserialize)]
struct CidrForm {
    cidr: String,
}

async fn allow(State(state): State<AppState>, posted: Posted<CidrForm>) -> Response {
    let cidr = posted.form.cidr.trim().to_owned();
    let outcome = state
        .api()
        .change(Command::Fw(FwCommand::Allow { cidr }))
        .await;
    state.after(&posted.authed.sid, outcome, "/firewall#allow")
}

#[derive(Deserialize)]
struct ImportForm {
    text: String,
    ban_secs: u64,
}

async fn import(State(state): State<AppState>, posted: Posted<ImportForm>) -> Response {
    let ImportForm { text, ban_secs } = posted.form;
    let outcome = state
        .api()
        .change(Command::Fw(FwCommand::Import { text, ban_secs }))
        .await;
    state.after(&posted.authed.sid, outcome, "/firewall#bans")
}

async fn export(State(state): State<AppState>, _authed: Authed) -> Response {
    match state.api().call(Command::Fw(FwCommand::Export)).await {
        Reply::FwExport(doc) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"outpost-bans.json\"",
                ),
            ],
            serde_json::to_string_pretty(&doc).unwrap_or_default(),
        )
            .into_response(),
        other => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            unexpected(other),
        )
            .into_response(),
    }
}

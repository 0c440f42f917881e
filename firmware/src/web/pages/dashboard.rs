//! The dashboard: the box at a glance, refreshing by itself (every 3 s with the script; a
//! plain reload without it).

use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use maud::{html, Markup};

use crate::admin::proto::{CallInfo, Command, FwAlertInfo, FwCommand, Reply};

use crate::web::app::{AppState, Authed};
use crate::web::layout::{duration, page, time_utc};

/// The dashboard's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(show))
        .route("/live/dashboard", get(live))
}

async fn show(State(state): State<AppState>, authed: Authed) -> Html<String> {
    let ctx = authed.ctx(&state, "/");
    let body = html! {
        div #live data-refresh="/live/dashboard" data-every="3" aria-live="polite" {
            (fragment(&state).await)
        }
        noscript { p.muted { "Reload the page to refresh it." } }
    };
    Html(page(&ctx, "Dashboard", body).into_string())
}

async fn live(State(state): State<AppState>, _authed: Authed) -> Html<String> {
    Html(fragment(&state).await.into_string())
}

/// Everything the dashboard shows, each part from its own command.
async fn fragment(state: &AppState) -> Markup {
    let api = state.api();
    let status = api.call(Command::Status).await;
    let regs = api.call(Command::RegList).await;
    let calls = api.call(Command::Calls).await;
    let trunks = api.call(Command::Trunks).await;
    let fw = api
        .call(Command::Fw(FwCommand::Status { cached: true }))
        .await;
    let alerts = api.call(Command::Fw(FwCommand::Alerts { limit: 5 })).await;
    let system = api.call(Command::System).await;
    let firmware = match &system {
        Reply::System(s) => s.firmware.clone(),
        _ => None,
    };
    html! {
        div.grid {
            section.card aria-labelledby="h-box" {
                h2 #h-box { "The box" }
                @match &status {
                    Reply::Status(s) => {
                        dl.facts {
                            dt { "Name" } dd { (s.hostname) }
                            dt { "Firmware" } dd {
                                (s.version)
                                @if let Some(f) = &firmware {
                                    ", slot " (f.booted_slot)
                                    @if f.trial { " " span.warn { "(trial boot)" } }
                                    @if let Some(armed) = &f.armed_slot { " · slot " (armed) " armed for the next boot" }
                                }
                            }
                            @if let Some(u) = firmware.as_ref().and_then(|f| f.last_update.as_ref()) {
                                dt { "Last update" } dd {
                                    @if u.starts_with("rolled-back") { span.bad { (u) } } @else { (u) }
                                }
                            }
                            dt { "Up for" } dd { (duration(s.uptime_secs)) }
                            dt { "Extensions" } dd #stat-extensions { (s.extensions) }
                            dt { "Registered phones" } dd #stat-registrations { (s.registrations) }
                            dt { "Calls now" } dd #stat-calls { (s.active_calls) }
                            dt { "Time" } dd {
                                @match &s.time {
                                    Some(t) if t.synchronised => span.ok { "synchronised" }
                                    Some(t) => span.warn title=[t.last_error.as_deref()] { "not synchronised" }
                                    None => span.muted { "unknown" }
                                }
                            }
                            dt { "Last backup" } dd {
                                @match s.last_backup_age_secs {
                                    Some(age) if age > 8 * 86_400 => span.warn { (duration(age)) " ago" }
                                    Some(age) => { (duration(age)) " ago" }
                                    None => span.warn { "none on the box" }
                                }
                            }
                        }
                    }
                    other => p.bad { (crate::web::api::unexpected(other.clone())) }
                }
            }
            section.card aria-labelledby="h-trunks" {
                h2 #h-trunks { "Trunks" }
                @if let Reply::Status(s) = &status {
                    @if s.survival {
                        p.bad { "Survival mode: every provider is down; local calls, voicemail and the auto attendant work." }
                    }
                }
                @match &trunks {
                    Reply::Trunks(list) if list.is_empty() => p.muted { "No trunks configured." }
                    Reply::Trunks(list) => {
                        ul {
                            @for t in list {
                                li {
                                    strong { (t.name) } ": "
                                    @if t.health == pbx_core::trunk::Health::Up { span.ok { "up" } } @else { span.bad { "down" } }
                                    @if let Some(r) = t.registered { " · " @if r { "registered" } @else { "not registered" } }
                                    @if let Some(rtt) = t.last_rtt_ms { " · " (rtt) " ms" }
                                    @if !t.reason.is_empty() { " · " span.muted { (t.reason) } }
                                }
                            }
                        }
                    }
                    other => p.bad { (crate::web::api::unexpected(other.clone())) }
                }
            }
            section.card aria-labelledby="h-fw" {
                h2 #h-fw { "Firewall" }
                @match &fw {
                    Reply::FwStatus(f) => {
                        dl.facts {
                            dt { "Mode" } dd { (f.mode) @if let Some(r) = &f.reason { " (" (r) ")" } }
                            dt { "Bans" } dd #stat-bans { (f.bans) }
                            dt { "Locked accounts" } dd { (f.locks) }
                            dt { "Inspected" } dd { (f.inspected) }
                            dt { "Dropped" } dd { (f.dropped_banned + f.dropped_rule) }
                            @if let Some(k) = f.kernel.as_ref().and_then(|k| k.counters.as_ref()) {
                                dt { "Kernel drops" } dd { (kernel_drops(k)) }
                            }
                        }
                    }
                    other => p.bad { (crate::web::api::unexpected(other.clone())) }
                }
                @if let Reply::FwAlerts(list) = &alerts {
                    @if !list.is_empty() {
                        h2 { "Newest alerts" }
                        (alert_list(list))
                    }
                }
            }
        }
        section aria-labelledby="h-calls" {
            h2 #h-calls { "Calls in progress" }
            @match &calls {
                Reply::Calls(list) if list.is_empty() => p.muted { "No calls." }
                Reply::Calls(list) => (call_table(list)),
                other => p.bad { (crate::web::api::unexpected(other.clone())) }
            }
        }
        section aria-labelledby="h-regs" {
            h2 #h-regs { "Registered phones" }
            @match &regs {
                Reply::Registrations(list) if list.is_empty() => p.muted { "No phone is registered." }
                Reply::Registrations(list) => {
                    div.table-wrap { table #registrations {
                        thead { tr { th scope="col" { "Extension" } th scope="col" { "From" } th scope="col" { "Transport" } th scope="col" { "Phone" } th.num scope="col" { "Expires in" } } }
                        tbody {
                            @for r in list {
                                tr {
                                    td { a href={ "/extensions/" (r.ext) } { (r.ext) } }
                                    td { (r.source) }
                                    td { (r.transport) }
                                    td { (r.user_agent.as_deref().unwrap_or("-")) }
                                    td.num { (r.expires_in_secs) " s" }
                                }
                            }
                        }
                    } }
                }
                other => p.bad { (crate::web::api::unexpected(other.clone())) }
            }
        }
    }
}

fn kernel_drops(k: &firewall::nft::Counters) -> String {
    let packets = k.banned_packets
        + k.meter_drops
        + k.rtp_drops
        + k.trunk_meter_drops
        + k.conn_drops
        + k.mgmt_drops;
    format!(
        "{packets} packets ({} from banned sources)",
        k.banned_packets
    )
}

/// Alerts, newest first.
pub fn alert_list(list: &[FwAlertInfo]) -> Markup {
    html! {
        ul.alerts {
            @for a in list {
                li {
                    span.muted { (time_utc(a.at)) } " "
                    strong { (a.rule) } ": " (a.message)
                    @if !a.enforced { " " span.muted { "(monitor: not enforced)" } }
                }
            }
        }
    }
}

/// Calls in progress with each leg's codec, loss and jitter.
pub fn call_table(list: &[CallInfo]) -> Markup {
    html! {
        div.table-wrap { table #calls {
            thead { tr {
                th scope="col" { "From" } th scope="col" { "To" } th scope="col" { "State" }
                th.num scope="col" { "For" } th scope="col" { "Codecs" }
                th.num scope="col" { "Lost (A / B)" } th.num scope="col" { "Jitter (A / B)" }
            } }
            tbody {
                @for c in list {
                    tr {
                        td { (c.caller) } td { (c.callee) } td { (c.state) }
                        td.num { (duration(c.duration_secs)) }
                        @match &c.media {
                            Some(m) => {
                                td { (m.codec_a) @if m.codec_b != m.codec_a { " → " (m.codec_b) } }
                                td.num { (m.a.lost) " / " (m.b.lost) }
                                td.num { (m.a.jitter_us / 1000) " / " (m.b.jitter_us / 1000) " ms" }
                            }
                            None => { td.muted { "-" } td.num { "-" } td.num { "-" } }
                        }
                    }
                }
            }
        } }
    }
}

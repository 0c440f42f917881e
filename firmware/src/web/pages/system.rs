//! The system: network, time, firmware, SSH keys (list, add, remove), the SBOM summary and
//! its download.

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use serde::Deserialize;

use crate::admin::proto::{Command, Reply, SystemInfo};
use crate::ssh::api::SshCommand;

use crate::web::api::unexpected;
use crate::web::app::{AppState, Authed, Posted};
use crate::web::download;
use crate::web::layout::{button_form, csrf_field, duration, page, time_utc, Ctx};

/// The system page's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/system", get(show))
        .route("/system/ssh-keys", post(key_add))
        .route("/system/ssh-keys/delete", post(key_del))
        .route("/system/sbom.json", get(sbom))
}

async fn show(State(state): State<AppState>, authed: Authed) -> Response {
    let system = state.api().call(Command::System).await;
    let keys = state.api().call(Command::Ssh(SshCommand::KeysList)).await;
    let ctx = authed.ctx(&state, "/system");
    let body = html! {
        @match system {
            Reply::System(s) => (facts(&s)),
            other => p.bad { (unexpected(other)) }
        }
        h2 #ssh { "SSH keys" }
        @match keys {
            Reply::SshKeys(list) => {
                @if list.is_empty() { p.muted { "No SSH key is authorised." } }
                @else {
                    div.table-wrap { table #ssh-keys {
                        thead { tr { th scope="col" { "Comment" } th scope="col" { "Type" } th scope="col" { "Fingerprint" } th scope="col" { "" } } }
                        tbody { @for k in &list {
                            tr {
                                td { (k.comment.as_deref().unwrap_or("-")) }
                                td { (k.key_type) " " (k.bits) }
                                td { code { (k.fingerprint) } }
                                td { (button_form(&ctx.csrf, "/system/ssh-keys/delete", &[("key", &k.fingerprint)], "Remove", "danger", Some("Remove this key? Its holder can no longer log in over SSH."))) }
                            }
                        } }
                    } }
                }
            }
            other => p.bad { (unexpected(other)) }
        }
        (key_form(&ctx))
    };
    Html(page(&ctx, "System", body).into_string()).into_response()
}

fn facts(s: &SystemInfo) -> Markup {
    html! {
        div.grid {
            section.card aria-labelledby="h-net" {
                h2 #h-net { "Network" }
                dl.facts {
                    dt { "Name" } dd { (s.hostname) }
                    dt { "Uplink" } dd { (s.uplink.mode) " " (s.uplink.address) }
                    dt { "Gateway" } dd { (if s.uplink.gateway.is_empty() { "-" } else { &s.uplink.gateway }) }
                    dt { "DNS" } dd { (s.uplink.dns.join(", ")) }
                }
                ul { @for i in &s.interfaces {
                    li { strong { (i.name) } @if !i.up { " (down)" } ": " (i.addrs.join(", ")) }
                } }
            }
            section.card aria-labelledby="h-time" {
                h2 #h-time { "Time" }
                dl.facts {
                    dt { "State" } dd { @if s.time.synchronised { span.ok { "synchronised" } } @else { span.warn { "not synchronised" } } }
                    @if let Some(at) = s.time.last_sync_ms { dt { "Last synchronised" } dd { (time_utc(at)) } }
                    @if let Some(server) = &s.time.server { dt { "Server" } dd { (server) } }
                    @if let Some(off) = s.time.offset_ms { dt { "Last offset" } dd { (off) " ms" } }
                    @if let Some(e) = &s.time.last_error { dt { "Last error" } dd { (e) } }
                    dt { "Daemon up for" } dd { (duration(s.uptime_secs)) }
                    @if let Some(up) = s.host_uptime_secs { dt { "System up for" } dd { (duration(up)) } }
                }
            }
            section.card aria-labelledby="h-fw" {
                h2 #h-fw { "Firmware" }
                @match &s.firmware {
                    Some(f) => dl.facts {
                        dt { "Version" } dd { (f.version) }
                        dt { "Built" } dd { (time_utc(f.build.saturating_mul(1000))) }
                        @if let Some(p) = &f.profile { dt { "Board" } dd { (p) } }
                        dt { "Running slot" } dd { (f.booted_slot) @if f.trial { " " span.warn { "(trial boot)" } } }
                    },
                    None => p.muted { "Not on an Outpost image: " (s.firmware_error.as_deref().unwrap_or("")) }
                }
                p { a href="/updates" { "Updates" } }
            }
            section.card aria-labelledby="h-sbom" {
                h2 #h-sbom { "Software bill of materials" }
                @match &s.sbom {
                    Some(b) => {
                        p { (b.components) " components: " (b.crates) " Rust crates, " (b.debian_packages) " Debian packages." }
                        ul { @for (licence, n) in b.licences.iter().take(8) { li { (licence) ": " (n) } } }
                        a.button href="/system/sbom.json" download { "Download the SBOM (CycloneDX)" }
                    }
                    None => p.muted { (s.sbom_error.as_deref().unwrap_or("no SBOM")) }
                }
            }
        }
    }
}

fn key_form(ctx: &Ctx) -> Markup {
    html! {
        form method="post" action="/system/ssh-keys" {
            (csrf_field(&ctx.csrf))
            label for="ssh-key" { "Add a key (one OpenSSH public key line: ed25519, ECDSA P-256 or RSA ≥ 2048 bits)" }
            textarea #ssh-key name="line" rows="3" required spellcheck="false" {}
            div.actions { button type="submit" { "Authorise key" } }
        }
    }
}

#[derive(Deserialize)]
struct KeyLine {
    line: String,
}

async fn key_add(State(state): State<AppState>, posted: Posted<KeyLine>) -> Response {
    let line = posted.form.line.trim().to_owned();
    let outcome = state
        .api()
        .change(Command::Ssh(SshCommand::KeysAdd { line }))
        .await;
    state.after(&posted.authed.sid, outcome, "/system#ssh")
}

#[derive(Deserialize)]
struct KeyRef {
    key: String,
}

async fn key_del(State(state): State<AppState>, posted: Posted<KeyRef>) -> Response {
    let key = posted.form.key;
    let outcome = state
        .api()
        .change(Command::Ssh(SshCommand::KeysDel { key }))
        .await;
    state.after(&posted.authed.sid, outcome, "/system#ssh")
}

async fn sbom(State(state): State<AppState>, _authed: Authed) -> Response {
    download::stream(
        state.api(),
        |offset, len| Command::SbomRead { offset, len },
        "outpost-sbom.json",
        "application/json",
        false,
    )
    .await
}

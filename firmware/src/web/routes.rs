//! The router: the login and logout, the security headers of every response, the static
//! assets, and every page's routes.

use std::net::IpAddr;

use axum::extract::{Path, State};
use axum::http::header::{self, HeaderValue};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use maud::html;
use serde::Deserialize;

use crate::admin::proto::{AdminCommand, Command, LoginOutcome, Reply};
use crate::console::api::LoginService;

use super::api::unexpected;
use super::app::{AppState, CsrfOnly, Peer, Posted, COOKIE, MAX_FORM};
use super::layout;
use super::pages;

/// The whole web page, without the per-connection [`Peer`] (added by the server).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/static/{name}", get(asset))
        .merge(pages::routes())
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM))
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn(server_timing))
        .with_state(state)
}

/// `Server-Timing: app;dur=<ms>`: the time the box spent on the request (handler and the
/// admin commands it sent; a streamed body's later pieces not included), for the browser's
/// developer tools and the benchmark.
async fn server_timing(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let start = std::time::Instant::now();
    let mut res = next.run(req).await;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = HeaderValue::from_str(&format!("app;dur={ms:.2}")) {
        res.headers_mut().insert("server-timing", v);
    }
    res
}

/// Every response's security headers. The pages use no inline script or style.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   media-src 'self'; connect-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

async fn asset(Path(name): Path<String>) -> Response {
    match super::assets::get(&name) {
        Some((kind, body)) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "private, max-age=300"),
            ],
            body,
        )
            .into_response(),
        None => not_found().await,
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Html(
            layout::bare(
                "Not found",
                html! { h1 { "Not found" } p { a href="/" { "Dashboard" } } },
            )
            .into_string(),
        ),
    )
        .into_response()
}

fn login_page(message: Option<&str>) -> Html<String> {
    Html(
        layout::bare(
            "Log in",
            html! {
                div.login {
                    h1 { "Log in" }
                    @if let Some(m) = message {
                        div.flash.error role="alert" { (m) }
                    }
                    form method="post" action="/login" {
                        label for="password" { "Admin password" }
                        input #password type="password" name="password" autocomplete="current-password" required autofocus;
                        div.actions { button.primary type="submit" { "Log in" } }
                    }
                    p.muted { "The admin password is the console's (set with " code { "outpostctl admin passwd" } ")." }
                }
            },
        )
        .into_string(),
    )
}

async fn login_form() -> Html<String> {
    login_page(None)
}

#[derive(Deserialize)]
struct LoginForm {
    password: String,
}

/// A login through the API: a refusal counts as a failed login of `source` for the
/// firewall (rule `auth_failures`, as SSH guessing), and a banned source is refused unchecked.
fn login_command(password: String, source: IpAddr) -> Command {
    Command::Admin(AdminCommand::Login {
        password,
        source: Some(source),
        service: Some(LoginService::Web),
    })
}

async fn login(
    State(state): State<AppState>,
    Extension(Peer(peer)): Extension<Peer>,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let Ok(_slot) = state.0.logins.acquire().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping").into_response();
    };
    let reply = state
        .api()
        .call(login_command(form.password, peer.ip()))
        .await;
    match reply {
        Reply::Login(LoginOutcome::Accepted) => {
            let now = state.now();
            let sid = state.sessions().create(now, peer.ip());
            tracing::info!(source = %peer.ip(), "web: admin logged in");
            (
                [(
                    header::SET_COOKIE,
                    format!("{COOKIE}={sid}; Path=/; Secure; HttpOnly; SameSite=Strict"),
                )],
                Redirect::to("/"),
            )
                .into_response()
        }
        Reply::Login(LoginOutcome::Refused) => {
            tracing::warn!(source = %peer.ip(), "web: wrong admin password");
            (StatusCode::UNAUTHORIZED, login_page(Some("Wrong password."))).into_response()
        }
        Reply::Login(LoginOutcome::NoPassword) => (
            StatusCode::UNAUTHORIZED,
            login_page(Some(
                "No admin password is set yet: set one at the console or over SSH (outpostctl admin passwd).",
            )),
        )
            .into_response(),
        other => (
            StatusCode::INTERNAL_SERVER_ERROR,
            login_page(Some(&unexpected(other))),
        )
            .into_response(),
    }
}

async fn logout(State(state): State<AppState>, posted: Posted<CsrfOnly>) -> Response {
    if let Some(s) = state.sessions().remove(&posted.authed.sid) {
        tracing::info!(source = %s.source, "web: admin logged out");
    }
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Redirect::to("/login"),
    )
        .into_response()
}

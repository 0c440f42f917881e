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
        .merge(super::provision::routes())
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use rand::{Rng, SeedableRng};
    use tokio::sync::mpsc;
    use tower::ServiceExt;

    use crate::admin::proto::{Command, LoginOutcome, Reply};
    use crate::admin::server::AdminRequest;
    use crate::console::api::AdminCommand;
    use crate::web::api::Api;
    use crate::web::app::{AppState, Peer, COOKIE, MAX_FORM};

    use super::router;

    const RIGHT: &str = "the-right-password";

    /// A stand-in for the daemon: the admin password is [`RIGHT`]; lists are empty; every
    /// change is done.
    fn fake_daemon() -> mpsc::Sender<AdminRequest> {
        let (tx, mut rx) = mpsc::channel::<AdminRequest>(8);
        tokio::spawn(async move {
            while let Some((cmd, reply)) = rx.recv().await {
                let answer = match cmd {
                    Command::Admin(AdminCommand::Login { password, .. }) => {
                        Reply::Login(if password == RIGHT {
                            LoginOutcome::Accepted
                        } else {
                            LoginOutcome::Refused
                        })
                    }
                    Command::ExtList => Reply::Extensions(vec![]),
                    Command::ExtShow { ext } => {
                        Reply::error(format!("extension {ext} does not exist"))
                    }
                    Command::CdrExport { .. } => Reply::CdrPage {
                        cdrs: vec![],
                        next: None,
                    },
                    other => Reply::done(other.name()),
                };
                let _ = reply.send(answer);
            }
        });
        tx
    }

    fn app() -> axum::Router {
        let state = AppState::new(
            Api::new(fake_daemon()),
            Duration::from_secs(900),
            Duration::from_secs(3600),
        );
        let peer: SocketAddr = "192.0.2.10:40000".parse().unwrap();
        router(state).layer(axum::Extension(Peer(peer)))
    }

    async fn send(
        app: &axum::Router,
        req: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        let res = app.clone().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let bytes = axum::body::to_bytes(body, 4 * MAX_FORM).await.unwrap();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    fn form(path: &str, cookie: Option<&str>, body: impl Into<Body>) -> Request<Body> {
        let mut b = Request::post(path).header("content-type", "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            b = b.header("cookie", c);
        }
        b.body(body.into()).unwrap()
    }

    /// Logs in; returns the cookie header value and the session's CSRF token.
    async fn session(app: &axum::Router) -> (String, String) {
        let (status, headers, _) =
            send(app, form("/login", None, format!("password={RIGHT}"))).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let set = headers
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(set.starts_with(&format!("{COOKIE}=")), "{set}");
        assert!(set.contains("; Secure; HttpOnly; SameSite=Strict"), "{set}");
        let cookie = set.split(';').next().unwrap().to_owned();
        let (_, _, page) = send(
            app,
            Request::get("/extensions")
                .header("cookie", &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        let csrf = page.split("name=\"csrf\" value=\"").nth(1).unwrap()[..64].to_owned();
        (cookie, csrf)
    }

    #[tokio::test]
    async fn logins_sessions_and_csrf() {
        let app = app();
        let (status, headers, _) = send(&app, Request::get("/").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers.get("location").unwrap(), "/login");
        assert!(headers.get("content-security-policy").is_some());
        let (status, _, page) = send(&app, form("/login", None, "password=wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(page.contains("Wrong password."));
        let (cookie, csrf) = session(&app).await;
        // With the token: done; without or with another: refused.
        let (status, headers, _) = send(
            &app,
            form(
                "/extensions/100/pin",
                Some(&cookie),
                format!("csrf={csrf}&pin=1234"),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers.get("location").unwrap(), "/extensions/100");
        for body in [
            "pin=1234".to_owned(),
            format!("csrf={}&pin=1234", &csrf[..63]),
            "csrf=&pin=1".to_owned(),
        ] {
            let (status, _, _) = send(&app, form("/extensions/100/pin", Some(&cookie), body)).await;
            assert_eq!(status, StatusCode::FORBIDDEN);
        }
        // Logout ends the session.
        let (status, headers, _) =
            send(&app, form("/logout", Some(&cookie), format!("csrf={csrf}"))).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert!(headers
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Max-Age=0"));
        let (status, headers, _) = send(
            &app,
            Request::get("/extensions")
                .header("cookie", &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers.get("location").unwrap(), "/login");
    }

    /// A corpus of hostile requests, then random bytes in the cookie, the path and the form:
    /// each gets a precise answer (never a 500, never a panic).
    #[tokio::test]
    async fn hostile_requests_get_precise_answers() {
        let app = app();
        let (cookie, csrf) = session(&app).await;
        let corpus: Vec<(&str, Vec<u8>)> = vec![
            ("/extensions", b"csrf=%zz&ext=1".to_vec()),
            ("/extensions", vec![0xff, 0xfe, b'=', 0x00]),
            ("/extensions", b"&&&===&&".to_vec()),
            (
                "/extensions/%0d%0aX/pin",
                format!("csrf={csrf}&pin=1").into_bytes(),
            ),
            (
                "/extensions/..%2f..%2fetc/delete",
                format!("csrf={csrf}").into_bytes(),
            ),
            ("/config/apply", format!("csrf={csrf}").into_bytes()),
            (
                "/config/apply",
                format!("csrf={csrf}&text=%5B%5B%5B&confirm_secs=-1").into_bytes(),
            ),
            (
                "/config/rollback",
                format!("csrf={csrf}&rev=99999999999999").into_bytes(),
            ),
            (
                "/firewall/import",
                format!("csrf={csrf}&text=x&ban_secs=abc").into_bytes(),
            ),
            (
                "/voicemail/18446744073709551616/delete",
                format!("csrf={csrf}").into_bytes(),
            ),
            ("/nowhere", Vec::new()),
        ];
        for (path, body) in corpus {
            let (status, _, _) = send(&app, form(path, Some(&cookie), body)).await;
            assert!(!status.is_server_error(), "{path}: {status}");
        }
        // A form larger than the limit: refused before it is read whole.
        let big = vec![b'a'; MAX_FORM + 10];
        let (status, _, _) = send(&app, form("/extensions", Some(&cookie), big)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let mut rng = rand::rngs::StdRng::seed_from_u64(19);
        for _ in 0..2_000 {
            let len = rng.gen_range(0..200);
            let junk: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let printable: String = junk.iter().map(|b| char::from(b' ' + b % 95)).collect();
            let path = format!(
                "/extensions/{}",
                printable.replace(['/', '?', '#', ' ', '%'], "x")
            );
            let cookie_line = format!("{COOKIE}={printable}; a=b");
            for req in [
                Request::get("/")
                    .header("cookie", cookie_line.as_bytes())
                    .body(Body::empty()),
                Request::get(path.as_str())
                    .header("cookie", &cookie)
                    .body(Body::empty()),
                Request::post("/extensions")
                    .header("cookie", &cookie)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(Body::from(junk.clone())),
            ] {
                let Ok(req) = req else { continue };
                let (status, _, _) = send(&app, req).await;
                assert!(!status.is_server_error(), "{status} for {junk:?}");
            }
        }
    }
}

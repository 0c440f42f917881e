//! What every handler shares: the state (API handle, sessions), the session check
//! ([`Authed`]) and the CSRF check of every state-changing form ([`Posted`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::multipart::Multipart;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{self, HeaderMap};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::api::Api;
use super::layout::{self, Ctx};
use super::session::{same_token, Flash, Sessions};

/// The session cookie. `__Host-`: the browser keeps it only if it is `Secure`, has
/// `Path=/` and no `Domain`.
pub const COOKIE: &str = "__Host-outpost";

/// Largest form body (the configuration editor's text is at most 1 MiB).
pub const MAX_FORM: usize = 1_100_000;

/// Logins checked at once: each is one Argon2id run (19 MiB, tens to hundreds of ms).
const CONCURRENT_LOGINS: usize = 2;

/// The address of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// The box's address a request's connection came to.
#[derive(Debug, Clone, Copy)]
pub struct Local(pub SocketAddr);

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState(pub Arc<Shared>);

/// The sessions and the API handle behind [`AppState`].
#[derive(Debug)]
pub struct Shared {
    /// The control-plane API.
    pub api: Api,
    sessions: Mutex<Sessions>,
    /// Admits [`CONCURRENT_LOGINS`] password checks at once.
    pub logins: Semaphore,
    epoch: Instant,
}

impl AppState {
    /// State for pages reaching the daemon through `api`, sessions ending after `idle` or
    /// `max`.
    pub fn new(api: Api, idle: Duration, max: Duration) -> AppState {
        AppState(Arc::new(Shared {
            api,
            sessions: Mutex::new(Sessions::new(ms(idle), ms(max))),
            logins: Semaphore::new(CONCURRENT_LOGINS),
            epoch: Instant::now(),
        }))
    }

    /// The control-plane API.
    pub fn api(&self) -> &Api {
        &self.0.api
    }

    /// Milliseconds since the web page started (the sessions' clock).
    pub fn now(&self) -> u64 {
        ms(self.0.epoch.elapsed())
    }

    /// The sessions, locked (never held across an await).
    pub fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.0
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Leaves `flash` for the next page of session `sid`.
    pub fn flash(&self, sid: &str, flash: Flash) {
        let now = self.now();
        if let Some(s) = self.sessions().touch(sid, now) {
            s.set_flash(flash);
        }
    }

    /// Leaves the outcome of a change for the next page and redirects there.
    pub fn after(&self, sid: &str, outcome: Result<String, String>, to: &str) -> Response {
        self.flash(
            sid,
            match outcome {
                Ok(m) => Flash::Done(m),
                Err(m) => Flash::Error(m),
            },
        );
        Redirect::to(to).into_response()
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A logged-in request.
#[derive(Debug)]
pub struct Authed {
    /// The session identifier.
    pub sid: String,
    csrf: String,
}

impl Authed {
    /// The page context: the CSRF token and the message left by the last form (taken).
    pub fn ctx(&self, state: &AppState, nav: &'static str) -> Ctx {
        let now = state.now();
        let flash = state
            .sessions()
            .touch(&self.sid, now)
            .and_then(|s| s.take_flash());
        Ctx {
            csrf: self.csrf.clone(),
            flash,
            nav,
        }
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// Where a request without a live session goes.
fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let sid = cookie_value(&parts.headers).ok_or_else(to_login)?;
        let now = state.now();
        let csrf = state
            .sessions()
            .touch(&sid, now)
            .map(|s| s.csrf.clone())
            .ok_or_else(to_login)?;
        Ok(Authed { sid, csrf })
    }
}

/// A state-changing form from a logged-in session, its CSRF token checked.
#[derive(Debug)]
pub struct Posted<T> {
    /// The session.
    pub authed: Authed,
    /// The form's fields.
    pub form: T,
}

/// A form with nothing but its CSRF token (logout, one-button actions).
#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
    csrf: Option<String>,
}

/// The refusal of a form without the session's CSRF token.
fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        Html(
            layout::bare(
                "Refused",
                html! {
                    h1 { "Refused" }
                    p { "This form did not carry this session's security token (CSRF). Go back, reload the page and try again." }
                    p { a href="/" { "Dashboard" } }
                },
            )
            .into_string(),
        ),
    )
        .into_response()
}

impl<T: DeserializeOwned + Send> FromRequest<AppState> for Posted<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let authed = Authed::from_request_parts(&mut parts, state).await?;
        let req = Request::from_parts(parts, body);
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let token: CsrfOnly = serde_urlencoded::from_bytes(&bytes)
            .map_err(|_| (StatusCode::BAD_REQUEST, "not a form").into_response())?;
        if !token.csrf.is_some_and(|t| same_token(&t, &authed.csrf)) {
            return Err(csrf_refused());
        }
        let form = serde_urlencoded::from_bytes(&bytes).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("the form is not complete: {e}"),
            )
                .into_response()
        })?;
        Ok(Posted { authed, form })
    }
}

/// Longest CSRF field read from a multipart form (the token is 43 characters).
const MAX_CSRF_FIELD: usize = 256;

/// A multipart form (a file upload) from a logged-in session. Its first field must be the
/// session's CSRF token, checked before anything else of the body is read; the rest is
/// left to the handler to stream.
#[derive(Debug)]
pub struct PostedMultipart {
    /// The session.
    pub authed: Authed,
    /// The fields after the token.
    pub multipart: Multipart,
    /// The request's `Content-Length`, when it sent one (an upper bound of the file).
    pub content_length: Option<u64>,
}

impl FromRequest<AppState> for PostedMultipart {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let authed = Authed::from_request_parts(&mut parts, state).await?;
        let content_length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let req = Request::from_parts(parts, body);
        let mut multipart = Multipart::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let token = {
            let field = multipart
                .next_field()
                .await
                .map_err(|e| (StatusCode::BAD_REQUEST, e.body_text()).into_response())?;
            match field {
                Some(mut f) if f.name() == Some("csrf") => {
                    let mut token = Vec::new();
                    while let Some(piece) = f
                        .chunk()
                        .await
                        .map_err(|e| (StatusCode::BAD_REQUEST, e.body_text()).into_response())?
                    {
                        token.extend_from_slice(&piece);
                        if token.len() > MAX_CSRF_FIELD {
                            return Err(csrf_refused());
                        }
                    }
                    String::from_utf8(token).ok()
                }
                _ => None,
            }
        };
        if !token.is_some_and(|t| same_token(&t, &authed.csrf)) {
            return Err(csrf_refused());
        }
        Ok(PostedMultipart {
            authed,
            multipart,
            content_length,
        })
    }
}

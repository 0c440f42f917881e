//! `GET /provision/<file>`: desk phones fetch their configuration files, outside the admin
//! login, each authenticated by its own provisioning password (HTTP Basic, user name =
//! its MAC). Served on the `[web]` HTTPS listeners and on the optional plain-HTTP
//! `[provision] listen` ones (which serve nothing else). The handler only forwards the
//! request as a `phone fetch` admin command; the daemon decides (see `admin::phone`).
//!
//! Answers: 200 with the file; 404 with an empty body for anything that is not a known
//! phone's file (an unknown MAC, `/provision/` itself: never a listing); 401 with a Basic
//! challenge for missing or wrong credentials; 503 when too many fetches are in flight.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use base64::Engine as _;
use tokio::sync::Semaphore;

use crate::admin::proto::{Command, PhoneCommand, ProvisionAnswer, Reply};
use crate::provision::{MAX_AUTH, REALM};

use super::app::{AppState, Local, Peer};

/// Fetches forwarded to the daemon at once; more wait for a slot (each is one admin
/// command on the daemon's loop).
pub const CONCURRENT_FETCHES: usize = 8;

/// The provisioning route, for the HTTPS router (state: the web page's).
pub fn routes() -> Router<AppState> {
    Router::new().route("/provision/{file}", get(fetch))
}

/// The plain-HTTP listeners' whole router: the provisioning route and an empty 404.
pub fn router(state: AppState) -> Router {
    routes()
        .fallback(|| async { empty(StatusCode::NOT_FOUND) })
        .layer(axum::extract::DefaultBodyLimit::max(1024))
        .with_state(state)
}

/// Admits [`CONCURRENT_FETCHES`] at once, shared by every listener.
static SLOTS: std::sync::LazyLock<Arc<Semaphore>> =
    std::sync::LazyLock::new(|| Arc::new(Semaphore::new(CONCURRENT_FETCHES)));

fn empty(status: StatusCode) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], "").into_response()
}

/// The user name and password of a `Basic` `Authorization` header; `None` for none, for
/// another scheme, or for one that does not decode.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if value.len() > MAX_AUTH {
        return None;
    }
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

async fn fetch(
    State(state): State<AppState>,
    Extension(Peer(peer)): Extension<Peer>,
    Extension(Local(local)): Extension<Local>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Ok(_slot) = SLOTS.clone().acquire_owned().await else {
        return empty(StatusCode::SERVICE_UNAVAILABLE);
    };
    let cmd = Command::Phone(PhoneCommand::Fetch {
        path: file,
        source: peer.ip(),
        server: local.ip(),
        credentials: basic_credentials(&headers),
    });
    match state.api().call(cmd).await {
        Reply::Provision(ProvisionAnswer::File { content_type, body }) => {
            let kind = HeaderValue::from_str(&content_type)
                .unwrap_or(HeaderValue::from_static("text/plain"));
            (
                [
                    (header::CONTENT_TYPE, kind),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                ],
                body,
            )
                .into_response()
        }
        Reply::Provision(ProvisionAnswer::Unauthorized) => (
            StatusCode::UNAUTHORIZED,
            [
                (
                    header::WWW_AUTHENTICATE,
                    format!("Basic realm=\"{REALM}\", charset=\"UTF-8\""),
                ),
                (header::CACHE_CONTROL, "no-store".to_owned()),
            ],
            "",
        )
            .into_response(),
        Reply::Provision(ProvisionAnswer::NotFound) => empty(StatusCode::NOT_FOUND),
        other => {
            tracing::warn!(
                reply = %super::api::unexpected(other),
                "provisioning fetch failed"
            );
            empty(StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    fn with(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn basic_credentials_and_junk() {
        // "805ec0123456:pa:ss"
        assert_eq!(
            basic_credentials(&with("Basic ODA1ZWMwMTIzNDU2OnBhOnNz")),
            Some(("805ec0123456".to_owned(), "pa:ss".to_owned()))
        );
        assert_eq!(basic_credentials(&HeaderMap::new()), None);
        for junk in [
            "Digest username=\"x\"",
            "Basic",
            "Basic !!!",
            "Basic bm9jb2xvbg==",
            &format!("Basic {}", "A".repeat(MAX_AUTH)),
        ] {
            assert_eq!(basic_credentials(&with(junk)), None, "{junk}");
        }
    }
}

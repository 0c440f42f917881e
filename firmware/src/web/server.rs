//! The HTTPS listeners: TLS on the box's identity, only peers inside the management
//! networks (checked here as well as by the kernel's rule), a cap on connections, and
//! deadlines for the handshake, each request head and the connection's whole life.
//!
//! Memory: at most [`MAX_CONNECTIONS`] connections, each a TLS session (~40 KiB of
//! buffers) and one request of at most [`super::app::MAX_FORM`] bytes of body.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use firewall::net::Cidr;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::admin::server::AdminRequest;
use crate::driver::tls::{self, ServerIdentity, TlsConfig};
use crate::provision::ProvisionConfig;
use crate::webconf::WebConfig;

use super::api::Api;
use super::app::{AppState, Local, Peer};
use super::routes::router;

/// Connections served at once; one more is closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time for the TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Time for each request's head.
const HEAD: Duration = Duration::from_secs(15);
/// Longest life of a connection (keep-alive included).
const LIFETIME: Duration = Duration::from_secs(600);

/// Why the web page could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The certificate or key could not be loaded or made.
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    /// rustls refused the identity.
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    /// A listener could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Connections closed unread because their source is outside the management networks.
pub static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Opens the listeners of `cfg` and serves the web page on them until the runtime stops.
/// Returns the addresses bound (ports resolved).
pub async fn start(
    cfg: &WebConfig,
    box_tls: &TlsConfig,
    data_dir: &Path,
    admin: mpsc::Sender<AdminRequest>,
    networks: watch::Receiver<Vec<Cidr>>,
) -> Result<Vec<SocketAddr>, WebError> {
    if cfg.listen.is_empty() {
        return Ok(Vec::new());
    }
    let identity = match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => ServerIdentity::load(cert, key)?,
        _ => tls::box_identity(box_tls, data_dir)?,
    };
    let fingerprint = identity.fingerprint.clone();
    let mut server = tls::server_config(identity)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let state = AppState::new(
        Api::new(admin),
        Duration::from_secs(cfg.idle_timeout_secs),
        Duration::from_secs(cfg.session_max_secs),
    );
    let app = router(state);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut bound = Vec::new();
    for &addr in &cfg.listen {
        let listener = bind(addr).map_err(|source| WebError::Listen { addr, source })?;
        let local = listener.local_addr().unwrap_or(addr);
        bound.push(local);
        tracing::info!(addr = %local, %fingerprint, "web admin page: https://{local}/");
        tokio::spawn(serve(
            listener,
            Some(acceptor.clone()),
            app.clone(),
            networks.clone(),
            slots.clone(),
        ));
    }
    Ok(bound)
}

/// Opens the plain-HTTP provisioning listeners of `cfg` (`/provision/…` only; see
/// [`super::provision`]), with the same zone check, caps and deadlines as the web page's.
/// Returns the addresses bound.
pub async fn start_provision(
    cfg: &ProvisionConfig,
    admin: mpsc::Sender<AdminRequest>,
    networks: watch::Receiver<Vec<Cidr>>,
) -> Result<Vec<SocketAddr>, WebError> {
    if cfg.listen.is_empty() {
        return Ok(Vec::new());
    }
    let defaults = WebConfig::default();
    let state = AppState::new(
        Api::new(admin),
        Duration::from_secs(defaults.idle_timeout_secs),
        Duration::from_secs(defaults.session_max_secs),
    );
    let app = super::provision::router(state);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut bound = Vec::new();
    for &addr in &cfg.listen {
        let listener = bind(addr).map_err(|source| WebError::Listen { addr, source })?;
        let local = listener.local_addr().unwrap_or(addr);
        bound.push(local);
        tracing::info!(addr = %local, "provisioning (plain HTTP): http://{local}/provision/");
        tokio::spawn(serve(
            listener,
            None,
            app.clone(),
            networks.clone(),
            slots.clone(),
        ));
    }
    Ok(bound)
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv6() {
        let s = TcpSocket::new_v6()?;
        // `[::]` beside `0.0.0.0` on the same port: each family its own socket.
        socket2::SockRef::from(&s).set_only_v6(true)?;
        s
    } else {
        TcpSocket::new_v4()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

/// Serves `listener`: over TLS with `acceptor`, else plain HTTP.
async fn serve(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    app: axum::Router,
    networks: watch::Receiver<Vec<Cidr>>,
    slots: Arc<Semaphore>,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if !crate::metrics::admitted(&networks.borrow(), peer.ip()) {
            // Closed unread and not logged: a stranger must not be able to fill the log.
            REFUSED.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        // Responses go out in several TLS records: without this, the peer's delayed ACK
        // holds the last one back ~40 ms.
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let local = stream.local_addr().unwrap_or(peer);
        let service = TowerToHyperService::new(
            app.clone()
                .layer(Extension(Peer(peer)))
                .layer(Extension(Local(local))),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let http = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD)
                .max_buf_size(64 * 1024)
                .clone();
            let result = match acceptor {
                Some(acceptor) => {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await
                    else {
                        tracing::debug!(%peer, "web: TLS handshake failed or timed out");
                        return;
                    };
                    let conn = http.serve_connection(TokioIo::new(tls), service);
                    tokio::time::timeout(LIFETIME, conn).await
                }
                None => {
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    tokio::time::timeout(LIFETIME, conn).await
                }
            };
            if let Ok(Err(err)) = result {
                tracing::debug!(%peer, %err, "web: connection ended");
            }
        });
    }
}

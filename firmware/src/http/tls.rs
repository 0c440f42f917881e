//! TLS for the HTTP client: a ureq connector that wraps the TCP transport in rustls with the
//! daemon's own client settings (`driver::tls::client_config`: the `ring` provider, the
//! Mozilla roots plus an optional extra CA), so that the HTTP client and the SIP trunks trust
//! the same roots and report certificate failures in the same words.
//!
//! ureq's own rustls connector builds its config from ureq's `TlsConfig`, which cannot hold
//! the Mozilla roots *and* an extra CA without a second copy of the roots; this one takes
//! a finished `rustls::ClientConfig` instead.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::sync::Arc;

use rustls::{ClientConfig, ClientConnection, StreamOwned};
use rustls_pki_types::ServerName;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, Transport,
    TransportAdapter,
};

/// Wraps `https` connections in TLS with one client config; plain `http` passes through.
#[derive(Debug)]
pub struct TlsLayer {
    config: Arc<ClientConfig>,
}

impl TlsLayer {
    /// A layer that uses `config` for every handshake.
    pub fn new(config: Arc<ClientConfig>) -> TlsLayer {
        TlsLayer { config }
    }
}

impl<In: Transport> Connector<In> for TlsLayer {
    type Out = Either<In, TlsTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let host = details.uri.host().unwrap_or_default();
        let name = server_name(host).ok_or(ureq::Error::Tls("the host is not a valid TLS name"))?;
        let mut conn = ClientConnection::new(self.config.clone(), name)
            .map_err(|e| ureq::Error::Io(io::Error::other(e)))?;
        let mut sock = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        sock.set_timeout(details.timeout);
        // A rustls failure comes back as an io::Error wrapping the rustls::Error (the
        // certificate reason); a transport failure as a wrapped ureq::Error, unwrapped here.
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).map_err(ureq::Error::from)?;
        }
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(Either::B(TlsTransport {
            buffers,
            stream: StreamOwned::new(conn, sock),
        })))
    }
}

/// The name the server's certificate must carry: an IP address (brackets of an IPv6 URL
/// host removed) or a DNS name.
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(bare.to_owned()).ok()
}

/// A TLS session over the chained transport.
pub struct TlsTransport {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter>,
}

impl fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTransport").finish_non_exhaustive()
    }
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream
            .write_all(output)
            .and_then(|()| self.stream.flush())
            .map_err(ureq::Error::from)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = match self.stream.read(input) {
            Ok(n) => n,
            // A server that closes without close_notify: the end of a body is checked by
            // its Content-Length or chunked framing (and a bundle by its signed length).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e.into()),
        };
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hosts_become_tls_names() {
        assert!(matches!(
            server_name("[2001:db8::7]"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("dav.example.net"),
            Some(ServerName::DnsName(_))
        ));
        assert!(server_name("bad name").is_none());
    }
}

//! One SNTP exchange (RFC 4330, through the `sntpc` crate, which checks the answer: origin
//! timestamp, mode, version, leap indicator, stratum, root distance, kiss-o'-death) over a
//! connected UDP socket, the `[time] servers` entries, and the choice among several
//! servers' answers.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;

/// The NTP port.
pub const NTP_PORT: u16 = 123;

/// One `[time] servers` entry: a host name or address and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Host name or IP address literal.
    pub host: String,
    /// UDP port (123 unless given).
    pub port: u16,
}

impl Server {
    /// Parses `host`, `host:port`, an IPv6 address, or `[v6]:port`.
    pub fn parse(text: &str) -> Result<Server, String> {
        let text = text.trim();
        if text.is_empty() || text.len() > 253 + 6 {
            return Err("an empty or over-long server".to_owned());
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Server {
                host: ip.to_string(),
                port: NTP_PORT,
            });
        }
        if let Ok(sa) = text.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err(format!("{text:?}: port 0"));
            }
            return Ok(Server {
                host: sa.ip().to_string(),
                port: sa.port(),
            });
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) => {
                let port: u16 = p
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{text:?}: {p:?} is not a port"))?;
                (h, port)
            }
            None => (text, NTP_PORT),
        };
        if !valid_domain(host) {
            return Err(format!("{text:?} is not a host name or address"));
        }
        Ok(Server {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The address when the host is an IP literal.
    pub fn literal(&self) -> Option<SocketAddr> {
        self.host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

/// A domain name: dot-separated RFC 1123 labels, 253 characters at most.
fn valid_domain(host: &str) -> bool {
    host.len() <= 253
        && host
            .split('.')
            .all(|label| crate::names::validate_hostname(label).is_ok())
}

/// One good answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The server's address.
    pub addr: SocketAddr,
    /// How far the system clock is behind the server (negative: ahead), microseconds.
    pub offset_us: i64,
    /// Round-trip delay, microseconds.
    pub delay_us: u64,
    /// The server's stratum.
    pub stratum: u8,
}

/// The answer to trust among several: the median offset, so one server that is wrong (a
/// falseticker) cannot move the clock when at least three answer. `None` without answers.
pub fn choose(samples: &[Sample]) -> Option<Sample> {
    let mut sorted: Vec<&Sample> = samples.iter().collect();
    sorted.sort_by_key(|s| s.offset_us);
    // With an even count the lower middle: between two equally plausible servers, the one
    // that moves the clock less far forward.
    let mid = sorted.len().checked_sub(1)? / 2;
    sorted.get(mid).map(|s| (*s).clone())
}

/// The `sntpc` socket: a UDP socket connected to one server, so only its answers arrive
/// and an ICMP "port unreachable" ends the exchange at once instead of at the timeout.
struct Connected {
    socket: UdpSocket,
    peer: SocketAddr,
}

impl sntpc::NtpUdpSocket for Connected {
    async fn send_to(&self, buf: &[u8], _addr: SocketAddr) -> sntpc::Result<usize> {
        self.socket
            .send(buf)
            .await
            .map_err(|_| sntpc::Error::Network)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> sntpc::Result<(usize, SocketAddr)> {
        let n = self
            .socket
            .recv(buf)
            .await
            .map_err(|_| sntpc::Error::Network)?;
        Ok((n, self.peer))
    }
}

/// The system clock for `sntpc`'s timestamps.
#[derive(Debug, Clone, Copy, Default)]
struct SystemStamp {
    since_epoch: Duration,
}

impl sntpc::NtpTimestampGenerator for SystemStamp {
    fn init(&mut self) {
        self.since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
    }

    fn timestamp_sec(&self) -> u64 {
        self.since_epoch.as_secs()
    }

    fn timestamp_subsec_micros(&self) -> u32 {
        self.since_epoch.subsec_micros()
    }
}

/// Asks `addr` for the time, within `limit`.
pub async fn query(addr: SocketAddr, limit: Duration) -> Result<Sample, String> {
    let exchange = async {
        let local: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local)
            .await
            .map_err(|e| format!("cannot open a socket: {e}"))?;
        socket
            .connect(addr)
            .await
            .map_err(|e| format!("cannot reach it: {e}"))?;
        let socket = Connected { socket, peer: addr };
        let ctx = sntpc::NtpContext::new(SystemStamp::default());
        sntpc::get_time(addr, &socket, ctx).await.map_err(describe)
    };
    let result = tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| format!("no answer within {} ms", limit.as_millis()))??;
    Ok(Sample {
        addr,
        offset_us: result.offset(),
        delay_us: result.roundtrip(),
        stratum: result.stratum(),
    })
}

/// What a refused answer means, for `status` and the log.
fn describe(err: sntpc::Error) -> String {
    match err {
        sntpc::Error::Network => "no answer (unreachable or refused)".to_owned(),
        sntpc::Error::UnsynchronizedClock => {
            "the server's own clock is not synchronised".to_owned()
        }
        sntpc::Error::KissOfDeath(code) => format!("the server refused: kiss-o'-death {code:?}"),
        sntpc::Error::ExcessiveRootDistance => {
            "the server is too far from its reference".to_owned()
        }
        other => format!("an unusable answer ({other:?})"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn servers_parse_with_and_without_ports() {
        let s = Server::parse("0.pool.ntp.org").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("0.pool.ntp.org", 123));
        let s = Server::parse("Time.Example.NET:1123").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("time.example.net", 1123));
        let s = Server::parse("192.0.2.1").unwrap();
        assert_eq!(s.literal(), Some("192.0.2.1:123".parse().unwrap()));
        let s = Server::parse("2001:db8::1").unwrap();
        assert_eq!(s.literal(), Some("[2001:db8::1]:123".parse().unwrap()));
        let s = Server::parse("[2001:db8::1]:4123").unwrap();
        assert_eq!(s.literal(), Some("[2001:db8::1]:4123".parse().unwrap()));
        assert_eq!(Server::parse("ntp.example.net").unwrap().literal(), None);
        for bad in [
            "",
            "ntp.example.net:0",
            "ntp.example.net:99999",
            "ntp example",
            "ntp.example.net:x",
            "-ntp.example.net",
            "1.2.3.4:0",
        ] {
            assert!(Server::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn sample(offset_us: i64) -> Sample {
        Sample {
            addr: "192.0.2.1:123".parse().unwrap(),
            offset_us,
            delay_us: 1_000,
            stratum: 2,
        }
    }

    #[test]
    fn the_median_answer_wins_over_a_falseticker() {
        assert_eq!(choose(&[]), None);
        assert_eq!(choose(&[sample(5)]).unwrap().offset_us, 5);
        // One server an hour off cannot move the clock when two others agree.
        let picked = choose(&[sample(3_600_000_000), sample(1_200), sample(-800)]).unwrap();
        assert_eq!(picked.offset_us, 1_200);
        assert_eq!(choose(&[sample(10), sample(-10)]).unwrap().offset_us, -10);
    }
}

//! Plain counters for `outpostctl metrics` and an optional Prometheus text endpoint.
//!
//! The daemon refreshes one [`Metrics`] snapshot every second and publishes it on a watch
//! channel; the HTTP endpoint (`[metrics] listen`, off by default, meant for a management
//! address) only ever reads that snapshot, so a scraper cannot slow the SIP loop down. The
//! server speaks just enough HTTP/1.x for `GET /metrics`: one bounded request per
//! connection, a few connections at a time, a read deadline.
//!
//! Who may ask: the kernel's management zone drops TCP to the endpoint's port from outside
//! `[management] networks`; the server also closes, at accept and before reading a byte,
//! a connection from a peer outside them (defence in depth: without kernel enforcement this
//! check is the only one). Loopback is always admitted.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use firewall::net::{is_loopback, Cidr};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Largest request head we read.
const MAX_REQUEST: usize = 4096;
/// Connections served at once.
const MAX_CONNECTIONS: usize = 8;
/// Time a client has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// `[metrics]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Prometheus endpoint (`GET /metrics`); none = off. Its port joins the management
    /// zone: only `[management] networks` (and loopback) reach it.
    pub listen: Option<SocketAddr>,
}

/// Everything counted, at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// Configured extensions.
    pub extensions: u64,
    /// Live registered contacts.
    pub registrations: u64,
    /// Calls in progress.
    pub calls_active: u64,
    /// Calls set up since start.
    pub calls_started: u64,
    /// Calls answered since start.
    pub calls_answered: u64,
    /// SIP messages handled by the call core.
    pub sip_received: u64,
    /// SIP messages that did not parse.
    pub sip_malformed: u64,
    /// Requests refused for bad credentials.
    pub auth_failures: u64,
    /// Requests answered 503 because the live server transaction table was full
    /// (`[sip] max_server_transactions`).
    #[serde(default)]
    pub sip_overloaded: u64,
    /// New requests over UDP dropped unanswered because they waited in the inbound queue
    /// past the shedding bound (250 ms): the client's retransmission is served instead.
    #[serde(default)]
    pub sip_shed_stale: u64,
    /// Of those, REGISTERs.
    #[serde(default)]
    pub sip_shed_stale_register: u64,
    /// Of those, INVITEs (new calls; never in-dialog requests).
    #[serde(default)]
    pub sip_shed_stale_invite: u64,
    /// Live (pending) SIP server transactions.
    #[serde(default)]
    pub sip_transactions_live: u64,
    /// Completed SIP server transactions kept to answer retransmissions.
    #[serde(default)]
    pub sip_transactions_completed: u64,
    /// Completed transactions dropped before their deadline because that cache was full.
    #[serde(default)]
    pub sip_transactions_completed_dropped: u64,
    /// Trunks configured and up.
    pub trunks: u64,
    pub trunks_up: u64,
    /// 1 when every trunk is down.
    pub survival: u64,
    /// RTP/RTCP datagrams the relay read and sent.
    pub relay_packets_received: u64,
    pub relay_packets_sent: u64,
    /// Datagrams for ports no call owns.
    pub relay_unassigned: u64,
    /// Messages the firewall inspected, dropped for a banned source, dropped by a rule.
    pub fw_inspected: u64,
    pub fw_dropped_banned: u64,
    pub fw_dropped_rule: u64,
    /// Bans and locked accounts in force.
    pub fw_bans: u64,
    pub fw_locks: u64,
    /// Per-rule hit counters of the firewall.
    pub fw_rule_hits: Vec<(String, u64)>,
    /// The kernel's own counters, when it enforces.
    pub kernel_banned_packets: Option<u64>,
    pub kernel_meter_drops: Option<u64>,
    pub kernel_rtp_drops: Option<u64>,
    /// TCP packets the kernel dropped to a management port from outside the management
    /// networks.
    #[serde(default)]
    pub kernel_mgmt_drops: Option<u64>,
    /// Resident memory of the daemon in bytes (`VmRSS`); `None` when /proc is unreadable.
    #[serde(default)]
    pub process_resident_memory_bytes: Option<u64>,
    /// File descriptors the daemon has open; `None` when /proc is unreadable.
    #[serde(default)]
    pub process_open_fds: Option<u64>,
    /// Lines the persistent log dropped (queue full, disk refused); `None` when it is off.
    #[serde(default)]
    pub log_file_dropped: Option<u64>,
    /// Messages sent to and dropped for the remote syslog collectors, all together;
    /// `None` when none is configured.
    #[serde(default)]
    pub log_remote_sent: Option<u64>,
    #[serde(default)]
    pub log_remote_dropped: Option<u64>,
}

/// The daemon's resident memory in bytes, from `VmRSS` in /proc/self/status.
pub fn resident_memory_bytes() -> Option<u64> {
    vm_rss_bytes(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// The number of file descriptors the daemon has open, from /proc/self/fd.
pub fn open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?.count();
    // The listing includes the descriptor that reads it.
    Some(u64::try_from(entries.saturating_sub(1)).unwrap_or(u64::MAX))
}

/// `VmRSS:   1234 kB` of a /proc/<pid>/status text, in bytes.
fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut parts = line.split_whitespace();
    let kib: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => kib.checked_mul(1024),
        _ => None,
    }
}

impl Metrics {
    /// The Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            out.push_str(&format!(
                "# HELP outpost_{name} {help}\n# TYPE outpost_{name} {kind}\noutpost_{name} {value}\n"
            ));
        };
        metric(
            "uptime_seconds",
            "counter",
            "Seconds since the daemon started.",
            self.uptime_secs,
        );
        metric(
            "extensions",
            "gauge",
            "Configured extensions.",
            self.extensions,
        );
        metric(
            "registrations",
            "gauge",
            "Live registered contacts.",
            self.registrations,
        );
        metric(
            "calls_active",
            "gauge",
            "Calls in progress.",
            self.calls_active,
        );
        metric(
            "calls_started_total",
            "counter",
            "Calls set up since start.",
            self.calls_started,
        );
        metric(
            "calls_answered_total",
            "counter",
            "Calls answered since start.",
            self.calls_answered,
        );
        metric(
            "sip_messages_total",
            "counter",
            "SIP messages handled by the call core.",
            self.sip_received,
        );
        metric(
            "sip_malformed_total",
            "counter",
            "SIP messages that did not parse.",
            self.sip_malformed,
        );
        metric(
            "auth_failures_total",
            "counter",
            "Requests refused for bad credentials.",
            self.auth_failures,
        );
        metric(
            "sip_overloaded_total",
            "counter",
            "Requests answered 503 because the live server transaction table was full.",
            self.sip_overloaded,
        );
        metric(
            "sip_shed_stale_total",
            "counter",
            "New UDP requests dropped unanswered because they waited past the shedding bound.",
            self.sip_shed_stale,
        );
        metric(
            "sip_shed_stale_register_total",
            "counter",
            "REGISTERs dropped unanswered because they waited past the shedding bound.",
            self.sip_shed_stale_register,
        );
        metric(
            "sip_shed_stale_invite_total",
            "counter",
            "New INVITEs dropped unanswered because they waited past the shedding bound.",
            self.sip_shed_stale_invite,
        );
        metric(
            "sip_transactions_live",
            "gauge",
            "Live (pending) SIP server transactions.",
            self.sip_transactions_live,
        );
        metric(
            "sip_transactions_completed",
            "gauge",
            "Completed SIP server transactions kept to answer retransmissions.",
            self.sip_transactions_completed,
        );
        metric(
            "sip_transactions_completed_dropped_total",
            "counter",
            "Completed SIP server transactions dropped early because their cache was full.",
            self.sip_transactions_completed_dropped,
        );
        metric("trunks", "gauge", "Trunks configured.", self.trunks);
        metric("trunks_up", "gauge", "Trunks up.", self.trunks_up);
        metric(
            "survival",
            "gauge",
            "1 when every trunk is down.",
            self.survival,
        );
        metric(
            "relay_packets_received_total",
            "counter",
            "RTP/RTCP datagrams read by the relay.",
            self.relay_packets_received,
        );
        metric(
            "relay_packets_sent_total",
            "counter",
            "RTP/RTCP datagrams sent by the relay.",
            self.relay_packets_sent,
        );
        metric(
            "relay_unassigned_total",
            "counter",
            "Datagrams for ports no call owns.",
            self.relay_unassigned,
        );
        metric(
            "firewall_inspected_total",
            "counter",
            "SIP messages inspected by the firewall.",
            self.fw_inspected,
        );
        metric(
            "firewall_dropped_banned_total",
            "counter",
            "Messages dropped in user space for a banned source.",
            self.fw_dropped_banned,
        );
        metric(
            "firewall_dropped_rule_total",
            "counter",
            "Messages dropped by a firewall rule.",
            self.fw_dropped_rule,
        );
        metric("firewall_bans", "gauge", "Bans in force.", self.fw_bans);
        metric("firewall_locks", "gauge", "Locked accounts.", self.fw_locks);
        if let Some(v) = self.kernel_banned_packets {
            metric(
                "kernel_banned_packets_total",
                "counter",
                "Packets the kernel dropped from banned sources.",
                v,
            );
        }
        if let Some(v) = self.kernel_meter_drops {
            metric(
                "kernel_flood_drops_total",
                "counter",
                "Packets the kernel's per-source meter dropped.",
                v,
            );
        }
        if let Some(v) = self.kernel_rtp_drops {
            metric(
                "kernel_rtp_drops_total",
                "counter",
                "Packets the kernel dropped on closed RTP ports.",
                v,
            );
        }
        if let Some(v) = self.kernel_mgmt_drops {
            metric(
                "kernel_management_drops_total",
                "counter",
                "TCP packets the kernel dropped to a management port from outside the management networks.",
                v,
            );
        }
        if let Some(v) = self.process_resident_memory_bytes {
            metric(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory of the daemon in bytes.",
                v,
            );
        }
        if let Some(v) = self.process_open_fds {
            metric(
                "process_open_fds",
                "gauge",
                "File descriptors the daemon has open.",
                v,
            );
        }
        if let Some(v) = self.log_file_dropped {
            metric(
                "log_file_dropped_total",
                "counter",
                "Lines the persistent log dropped.",
                v,
            );
        }
        if let Some(v) = self.log_remote_sent {
            metric(
                "log_remote_sent_total",
                "counter",
                "Messages sent to the remote syslog collectors.",
                v,
            );
        }
        if let Some(v) = self.log_remote_dropped {
            metric(
                "log_remote_dropped_total",
                "counter",
                "Messages dropped for the remote syslog collectors (queue full, broken connection).",
                v,
            );
        }
        out.push_str("# HELP outpost_firewall_rule_hits_total Hits per firewall rule.\n");
        out.push_str("# TYPE outpost_firewall_rule_hits_total counter\n");
        for (rule, hits) in &self.fw_rule_hits {
            let rule: String = rule
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push_str(&format!(
                "outpost_firewall_rule_hits_total{{rule=\"{rule}\"}} {hits}\n"
            ));
        }
        out
    }
}

/// Whether `peer` may use the endpoint: loopback, or inside one of the management
/// `networks` (IPv4-mapped IPv6 counts as IPv4).
pub fn admitted(networks: &[Cidr], peer: IpAddr) -> bool {
    is_loopback(peer) || networks.iter().any(|n| n.contains(peer))
}

/// Serves `GET /metrics` on `listen` from the latest snapshot until the task is dropped, to
/// peers inside the latest management `networks` (and loopback) only.
pub async fn serve(
    listener: TcpListener,
    snapshot: watch::Receiver<Metrics>,
    networks: watch::Receiver<Vec<Cidr>>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((mut stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if !admitted(&networks.borrow(), peer.ip()) {
            // Closed unread, and not logged: a stranger must not be able to fill the log.
            drop(stream);
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Busy: close at once rather than queue.
            continue;
        };
        let body = snapshot.borrow().to_prometheus();
        tokio::spawn(async move {
            let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
                Ok(Some(head)) => respond(&head, &body),
                _ => {
                    tracing::debug!(%peer, "metrics: no request in time");
                    drop(permit);
                    return;
                }
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
            drop(permit);
        });
    }
}

/// Reads up to the end of the request head (bounded); `None` if it never ends.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Some(String::from_utf8_lossy(&buf).into_owned());
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
    }
}

/// The HTTP response to a request head.
fn respond(head: &str, body: &str) -> String {
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", body),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n"),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n"),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_help_type_and_values() {
        let m = Metrics {
            registrations: 7,
            calls_active: 2,
            fw_rule_hits: vec![("scanner".into(), 3), ("bad\"rule\n".into(), 1)],
            kernel_banned_packets: Some(99),
            ..Metrics::default()
        };
        let text = m.to_prometheus();
        assert!(text.contains("# TYPE outpost_registrations gauge\noutpost_registrations 7\n"));
        assert!(text.contains("outpost_calls_active 2\n"));
        assert!(text.contains("outpost_kernel_banned_packets_total 99\n"));
        assert!(
            !text.contains("kernel_flood_drops"),
            "absent kernel counters are left out"
        );
        assert!(text.contains("outpost_firewall_rule_hits_total{rule=\"scanner\"} 3\n"));
        // Label values cannot be used to inject lines.
        assert!(text.contains("{rule=\"badrule\"} 1\n"));
    }

    #[test]
    fn process_memory_and_descriptors_are_read_from_proc() {
        let status = "Name:\toutpostd\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(vm_rss_bytes(status), Some(12_345 * 1024));
        assert_eq!(
            vm_rss_bytes("Name:\tx\n"),
            None,
            "kernel threads have no VmRSS"
        );
        assert_eq!(vm_rss_bytes("VmRSS:\t12 MB\n"), None);
        assert_eq!(vm_rss_bytes("VmRSS:\tlots kB\n"), None);
        let rss = resident_memory_bytes().unwrap();
        assert!(
            rss > 1024 * 1024,
            "a test binary uses more than 1 MiB: {rss}"
        );
        // Other tests open and close files in parallel: a margin, not an exact count.
        let before = open_fds().unwrap();
        let files: Vec<std::fs::File> = (0..64)
            .map(|_| std::fs::File::open("/proc/self/status").unwrap())
            .collect();
        let during = open_fds().unwrap();
        assert!(during >= before + 48, "{before} -> {during}");
        drop(files);

        let m = Metrics {
            process_resident_memory_bytes: Some(rss),
            process_open_fds: Some(7),
            ..Metrics::default()
        };
        let text = m.to_prometheus();
        assert!(text.contains(&format!(
            "# TYPE outpost_process_resident_memory_bytes gauge\noutpost_process_resident_memory_bytes {rss}\n"
        )));
        assert!(text.contains("outpost_process_open_fds 7\n"));
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["process_resident_memory_bytes"], rss);
        assert_eq!(json["process_open_fds"], 7);
        let absent = Metrics::default().to_prometheus();
        assert!(
            !absent.contains("process_"),
            "unreadable values are left out"
        );
        // A snapshot from an older daemon (without these fields) still reads.
        let mut old = serde_json::to_value(Metrics::default()).unwrap();
        old.as_object_mut().unwrap().remove("process_open_fds");
        assert_eq!(
            serde_json::from_value::<Metrics>(old).unwrap(),
            Metrics::default()
        );
    }

    #[test]
    fn only_loopback_and_the_management_networks_are_admitted() {
        let nets: Vec<Cidr> = ["10.0.0.0/8", "fd00::/8"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        for ok in ["10.1.2.3", "::ffff:10.1.2.3", "fd00::5", "127.0.0.1", "::1"] {
            assert!(admitted(&nets, ok.parse().unwrap()), "{ok}");
        }
        for refused in [
            "203.0.113.7",
            "::ffff:203.0.113.7",
            "2001:db8::1",
            "11.0.0.1",
        ] {
            assert!(!admitted(&nets, refused.parse().unwrap()), "{refused}");
        }
        assert!(admitted(&[], "127.0.0.2".parse().unwrap()));
        assert!(!admitted(&[], "10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn only_get_metrics_is_served() {
        assert!(respond("GET /metrics HTTP/1.1\r\n\r\n", "x 1\n").starts_with("HTTP/1.1 200 OK"));
        assert!(respond("GET / HTTP/1.1\r\n\r\n", "").starts_with("HTTP/1.1 404"));
        assert!(respond("POST /metrics HTTP/1.1\r\n\r\n", "").starts_with("HTTP/1.1 405"));
        assert!(respond("", "").starts_with("HTTP/1.1 405"));
    }

    #[tokio::test]
    async fn the_endpoint_serves_the_latest_snapshot() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(Metrics::default());
        // Loopback is admitted whatever the networks say.
        let (_nets, networks) = watch::channel(vec!["192.0.2.0/24".parse().unwrap()]);
        let server = tokio::spawn(serve(listener, rx, networks));
        tx.send(Metrics {
            calls_answered: 42,
            ..Metrics::default()
        })
        .unwrap();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.contains("outpost_calls_answered_total 42\n"), "{text}");
        // A client that never sends a request does not hold the server up.
        let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /nope HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 404"), "{text}");
        server.abort();
    }
}

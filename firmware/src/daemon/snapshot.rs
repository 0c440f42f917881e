//! Snapshots of the running daemon for monitoring: the counters behind `outpostctl metrics`
//! and the Prometheus endpoint, and what the front panel shows. Read-only views of borrowed
//! parts, taken once a second on the loop, so they stay cheap (no store writes, no waiting
//! on the enforcer thread).

use board::panel::PanelStatus;
use pbx_core::endpoint::Endpoint;
use pbx_core::Millis;

use super::shed::ShedCounters;
use crate::guard::Guard;
use crate::media::relay::Relay;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::system::SystemConfig;

/// The counters snapshot.
pub(super) fn metrics(
    endpoint: &Endpoint,
    guard: &mut Guard,
    relay: Option<&Relay>,
    shed: &ShedCounters,
    uptime_secs: u64,
) -> Metrics {
    let c = endpoint.counters().clone();
    let trunks = endpoint.trunk_status();
    let tx = endpoint.server_transactions();
    // Cheap: no store write, no waiting for the enforcer thread (this runs every second
    // on the SIP loop).
    let fw = guard.counters();
    let relay = relay.map(Relay::counters);
    let kernel = fw.kernel;
    let log = crate::log::installed().map(|p| p.status());
    Metrics {
        uptime_secs,
        extensions: endpoint.user_count() as u64,
        registrations: endpoint.registrar().count() as u64,
        calls_active: endpoint.active_calls() as u64,
        calls_started: c.calls_started,
        calls_answered: c.calls_answered,
        sip_received: c.received,
        sip_malformed: c.malformed,
        auth_failures: c.auth_failures,
        sip_overloaded: c.overloaded,
        sip_shed_stale: shed.total(),
        sip_shed_stale_register: shed.register,
        sip_shed_stale_invite: shed.invite,
        sip_transactions_live: tx.live as u64,
        sip_transactions_completed: tx.completed as u64,
        sip_transactions_completed_dropped: tx.completed_dropped,
        trunks: trunks.len() as u64,
        trunks_up: trunks
            .iter()
            .filter(|t| t.health == pbx_core::trunk::Health::Up)
            .count() as u64,
        survival: u64::from(endpoint.survival()),
        relay_packets_received: relay.map_or(0, |r| r.packets_received),
        relay_packets_sent: relay.map_or(0, |r| r.packets_sent),
        relay_unassigned: relay.map_or(0, |r| r.unassigned),
        fw_inspected: fw.inspected,
        fw_dropped_banned: fw.dropped_banned,
        fw_dropped_rule: fw.dropped_rule,
        fw_bans: fw.bans as u64,
        fw_locks: fw.locks as u64,
        fw_rule_hits: fw.rule_hits,
        kernel_banned_packets: kernel.map(|k| k.banned_packets),
        kernel_meter_drops: kernel.map(|k| k.meter_drops),
        kernel_rtp_drops: kernel.map(|k| k.rtp_drops),
        kernel_mgmt_drops: kernel.map(|k| k.mgmt_drops),
        process_resident_memory_bytes: crate::metrics::resident_memory_bytes(),
        process_open_fds: crate::metrics::open_fds(),
        log_file_dropped: log
            .as_ref()
            .and_then(|l| l.file.as_ref().map(|_| l.file_dropped)),
        log_remote_sent: log
            .as_ref()
            .filter(|l| !l.collectors.is_empty())
            .map(|l| l.collectors.iter().map(|c| c.sent).sum()),
        log_remote_dropped: log
            .as_ref()
            .filter(|l| !l.collectors.is_empty())
            .map(|l| l.collectors.iter().map(|c| c.dropped).sum()),
    }
}

/// The parts the front panel's status is read from.
pub(super) struct Panel<'a> {
    /// The store (recent alerts, when they were acknowledged).
    pub(super) store: &'a Store,
    /// The box's primary addresses (the host page shows them, not the listen address).
    pub(super) host: crate::netif::HostAddrs,
    /// The data directory (`network.toml`: DHCP or static).
    pub(super) data_dir: &'a std::path::Path,
    /// `[system]`, for the host name.
    pub(super) system: &'a SystemConfig,
    /// The firewall (the last ban).
    pub(super) guard: &'a Guard,
    /// When the newest good backup was made.
    pub(super) newest_backup: Option<Millis>,
    /// The NTP client's status.
    pub(super) time: crate::timesync::TimeStatus,
}

impl Panel<'_> {
    /// What the front panel shows.
    pub(super) fn status(&self, now: Millis, m: &Metrics) -> PanelStatus {
        let alerts = self.store.fw_alerts(5).unwrap_or_default();
        let acked = self
            .store
            .meta_get("alerts_acked_at")
            .ok()
            .flatten()
            .and_then(|v| String::from_utf8(v).ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        let unacked = alerts.iter().filter(|a| a.at > acked).count();
        let recent: Vec<String> = alerts.iter().map(|a| a.message.clone()).collect();
        let ip = self
            .host
            .v4
            .map(|v4| v4.to_string())
            .or_else(|| self.host.v6.map(|v6| v6.to_string()))
            .unwrap_or_default();
        PanelStatus {
            hostname: crate::system::hostname(self.system),
            ip,
            registered: usize::try_from(m.registrations).unwrap_or(usize::MAX),
            active_calls: usize::try_from(m.calls_active).unwrap_or(usize::MAX),
            trunks_up: usize::try_from(m.trunks_up).unwrap_or(usize::MAX),
            trunks: usize::try_from(m.trunks).unwrap_or(usize::MAX),
            survival: m.survival == 1,
            newest_alert: recent.first().cloned(),
            recent_alerts: recent,
            alerts_unacked: unacked,
            last_ban: self.guard.last_ban().map(|ip| ip.to_string()),
            network: crate::netconf::uplink(self.data_dir),
            last_backup_age_secs: self
                .newest_backup
                .map(|created| now.saturating_sub(created) / 1000),
            // Only a clock the box keeps (the image) is worth a warning page.
            time_synchronised: (self.time.sets_clock && self.time.servers > 0)
                .then_some(self.time.synchronised),
        }
    }
}

//! Time on a box without a battery clock (`[time]`): a small SNTP client in the daemon.
//!
//! Why in the daemon rather than busybox `ntpd` (Debian's busybox-static has no `ntpd`
//! applet) or chrony (another daemon, its libraries and its own privileges on the box): the
//! daemon already holds CAP_SYS_TIME, already has the resolver of `[dns]`, and is what must
//! know whether the clock can be trusted — for `status`, the panel, the alert after an hour
//! without synchronisation, and the TLS trunks that retry as soon as the clock is right.
//! SNTP's accuracy (milliseconds on a LAN, tens of milliseconds over the Internet) is far
//! finer than anything a PBX stamps.
//!
//! - At boot `rc.sysinit` sets the clock to the later of the image's build time and the
//!   time saved in `<data_dir>/clock` when it is earlier ([`system`]): a board that starts
//!   in 1970 starts near the right year instead, before anything checks a certificate.
//! - At start the daemon waits up to `start_wait_secs` for a first answer (only when it
//!   sets the clock, `outpostd --set-clock`, which the image passes) before the call core
//!   stamps anything; offline, it starts without.
//! - Every round asks up to [`MAX_ADDRS_PER_ROUND`] addresses of the configured servers and
//!   takes the median offset (one wrong server among three cannot move the clock); up to
//!   0.5 s is slewed, more is stepped. Rounds follow `poll_secs` once synchronised, and
//!   8 s doubling to 64 s while not.
//! - The time is saved every [`SAVE_EVERY`] and at shutdown.
//! - Without `--set-clock` (a workstation running the demo, the tests) the client only
//!   watches: it reports the offset and never touches the clock.

pub mod ntp;
pub mod system;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::dns::DnsConfig;

/// Most servers in `[time] servers`.
pub const MAX_SERVERS: usize = 8;
/// Most addresses asked in one round, over every server name.
pub const MAX_ADDRS_PER_ROUND: usize = 4;
/// The longest one exchange may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest looking up one server name may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the clock counts as synchronised after a good answer, beyond the poll
/// interval (a few rounds may fail without the status changing).
pub const SYNC_GRACE: Duration = Duration::from_secs(600);
/// Unsynchronised this long (since the last good answer, or since start): an alert.
pub const UNSYNCED_ALERT: Duration = Duration::from_secs(3600);
/// How often the time is saved on `/data`.
pub const SAVE_EVERY: Duration = Duration::from_secs(600);
/// First retry after a failed round; doubled up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(8);
/// Longest wait between rounds while unsynchronised.
pub const MAX_RETRY: Duration = Duration::from_secs(64);

/// `[time]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeConfig {
    /// NTP servers (`host`, `host:port`, an address, `[v6]:port`), at most [`MAX_SERVERS`];
    /// empty: no time synchronisation (the clock is someone else's business).
    pub servers: Vec<String>,
    /// Seconds between rounds once synchronised (64–86,400).
    pub poll_secs: u64,
    /// At start, the longest wait for a first answer before the call core opens (0–60 s;
    /// only when the daemon sets the clock).
    pub start_wait_secs: u64,
}

impl Default for TimeConfig {
    fn default() -> Self {
        TimeConfig {
            servers: ["0.pool.ntp.org", "1.pool.ntp.org", "2.pool.ntp.org"]
                .map(str::to_owned)
                .to_vec(),
            poll_secs: 1024,
            start_wait_secs: 5,
        }
    }
}

impl TimeConfig {
    /// Why the section cannot be used, naming the offending key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.servers.len() > MAX_SERVERS {
            return Err(("time.servers", format!("at most {MAX_SERVERS} servers")));
        }
        for s in &self.servers {
            ntp::Server::parse(s).map_err(|e| ("time.servers", e))?;
        }
        if !(64..=86_400).contains(&self.poll_secs) {
            return Err(("time.poll_secs", "must be 64 to 86400".to_owned()));
        }
        if self.start_wait_secs > 60 {
            return Err(("time.start_wait_secs", "at most 60".to_owned()));
        }
        Ok(())
    }

    fn parsed(&self) -> Vec<ntp::Server> {
        self.servers
            .iter()
            .filter_map(|s| ntp::Server::parse(s).ok())
            .collect()
    }
}

/// What `outpostctl status`, the panel and the web page show about the clock.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct TimeStatus {
    /// The daemon sets the system clock (`outpostd --set-clock`, the image); false: it only
    /// watches.
    pub sets_clock: bool,
    /// Configured servers (0: time synchronisation is off).
    pub servers: usize,
    /// A server answered recently enough: the clock is right.
    pub synchronised: bool,
    /// When the last good answer came (Unix ms).
    pub last_sync_ms: Option<u64>,
    /// How far the clock was behind the servers then (negative: ahead), ms.
    pub offset_ms: Option<i64>,
    /// How the last offset was corrected: `step`, `slew`, or `none` (watching only).
    pub correction: Option<String>,
    /// The server whose answer counted.
    pub server: Option<String>,
    /// Its stratum.
    pub stratum: Option<u8>,
    /// Seconds since the last good answer (since start when none), while unsynchronised.
    pub unsynchronised_secs: Option<u64>,
    /// Why the last round found no usable answer.
    pub last_error: Option<String>,
}

/// What the daemon hears from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeEvent {
    /// The first good answer since start: the clock can be trusted now (TLS trunks that
    /// failed on a certificate's dates try again).
    Synchronised,
    /// No good answer for [`UNSYNCED_ALERT`]: raise an alert (once, until the next sync).
    Unsynchronised {
        /// Seconds without a good answer.
        secs: u64,
        /// The last round's failure.
        reason: String,
    },
}

/// Whether the clock can be trusted for certificate dates: synchronised since start, or
/// not ours to synchronise (no servers, or the daemon only watches).
static PLAUSIBLE: AtomicBool = AtomicBool::new(true);

/// See [`PLAUSIBLE`]; TLS clients name an unsynchronised clock when a certificate's dates
/// do not fit.
pub fn clock_plausible() -> bool {
    PLAUSIBLE.load(Ordering::Relaxed)
}

/// The client's state, shared with the daemon.
#[derive(Debug)]
struct State {
    status: TimeStatus,
    /// Monotonic time of the last good answer.
    last_sync: Option<Instant>,
    /// Alert raised for the current unsynchronised stretch.
    alerted: bool,
}

/// The running client (a task on the daemon's runtime; stopped when dropped).
#[derive(Debug)]
pub struct TimeSync {
    state: Arc<Mutex<State>>,
    config: watch::Sender<(TimeConfig, DnsConfig)>,
    rounds: watch::Receiver<u64>,
    events: mpsc::Receiver<TimeEvent>,
    data_dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TimeSync {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl TimeSync {
    /// Starts the client; with `sets_clock` it corrects the system clock.
    pub fn start(cfg: &TimeConfig, dns: &DnsConfig, data_dir: &Path, sets_clock: bool) -> Self {
        PLAUSIBLE.store(!sets_clock || cfg.servers.is_empty(), Ordering::Relaxed);
        let state = Arc::new(Mutex::new(State {
            status: TimeStatus {
                sets_clock,
                servers: cfg.servers.len(),
                ..TimeStatus::default()
            },
            last_sync: None,
            alerted: false,
        }));
        let (config, config_rx) = watch::channel((cfg.clone(), dns.clone()));
        let (rounds_tx, rounds) = watch::channel(0);
        let (events_tx, events) = mpsc::channel(8);
        let task = tokio::spawn(run(Client {
            state: state.clone(),
            config: config_rx,
            rounds: rounds_tx,
            events: events_tx,
            data_dir: data_dir.to_path_buf(),
            sets_clock,
            started: Instant::now(),
        }));
        TimeSync {
            state,
            config,
            rounds,
            events,
            data_dir: data_dir.to_path_buf(),
            task,
        }
    }

    /// Waits up to `limit` for the first round to finish; true when it synchronised.
    pub async fn first_round(&mut self, limit: Duration) -> bool {
        let _ = tokio::time::timeout(limit, self.rounds.wait_for(|n| *n > 0)).await;
        lock(&self.state).last_sync.is_some()
    }

    /// New settings (`config apply`): a round starts at once.
    pub fn set_config(&self, cfg: &TimeConfig, dns: &DnsConfig) {
        if cfg.servers.is_empty() {
            PLAUSIBLE.store(true, Ordering::Relaxed);
        }
        self.config.send_replace((cfg.clone(), dns.clone()));
    }

    /// The status now.
    pub fn status(&self) -> TimeStatus {
        let st = lock(&self.state);
        let mut status = st.status.clone();
        let poll = Duration::from_secs(self.config.borrow().0.poll_secs);
        status.servers = self.config.borrow().0.servers.len();
        status.synchronised = st
            .last_sync
            .is_some_and(|t| t.elapsed() <= poll + SYNC_GRACE);
        status
    }

    /// Events since the last call.
    pub fn poll(&mut self) -> Vec<TimeEvent> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }

    /// Saves the time on `/data` now (at shutdown).
    pub fn save_now(&self) {
        save_clock(&self.data_dir);
    }
}

fn save_clock(data_dir: &Path) {
    let secs = u64::try_from(system::now_us() / 1_000_000).unwrap_or(0);
    if let Err(err) = system::save(data_dir, secs) {
        tracing::warn!(%err, "cannot save the time in {}", data_dir.display());
    }
}

/// The task's side.
struct Client {
    state: Arc<Mutex<State>>,
    config: watch::Receiver<(TimeConfig, DnsConfig)>,
    rounds: watch::Sender<u64>,
    events: mpsc::Sender<TimeEvent>,
    data_dir: PathBuf,
    sets_clock: bool,
    started: Instant,
}

async fn run(mut c: Client) {
    let mut retry = FIRST_RETRY;
    let mut next_save = Instant::now() + SAVE_EVERY;
    loop {
        let (cfg, dns) = c.config.borrow_and_update().clone();
        let wait = if cfg.servers.is_empty() {
            SAVE_EVERY
        } else {
            match round(&cfg, &dns).await {
                Ok(sample) => {
                    c.synchronised(&sample);
                    retry = FIRST_RETRY;
                    Duration::from_secs(cfg.poll_secs)
                }
                Err(reason) => {
                    c.failed(reason);
                    let wait = retry;
                    retry = (retry * 2).min(MAX_RETRY);
                    wait
                }
            }
        };
        c.rounds.send_modify(|n| *n += 1);
        let now = Instant::now();
        if now >= next_save {
            save_clock(&c.data_dir);
            next_save = now + SAVE_EVERY;
        }
        let sleep_for = wait.min(next_save.saturating_duration_since(now));
        tokio::select! {
            () = tokio::time::sleep(sleep_for) => {}
            changed = c.config.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

impl Client {
    fn synchronised(&self, sample: &ntp::Sample) {
        let correction = if self.sets_clock {
            match system::correct(sample.offset_us) {
                Ok(how) => {
                    if how == system::Correction::Step {
                        tracing::warn!(
                            offset_ms = sample.offset_us / 1000,
                            server = %sample.addr,
                            "clock stepped to the NTP servers' time"
                        );
                    }
                    Some(how)
                }
                Err(err) => {
                    self.failed(format!("cannot set the clock: {err}"));
                    return;
                }
            }
        } else {
            None
        };
        let first = {
            let mut st = lock(&self.state);
            let first = st.last_sync.is_none();
            st.last_sync = Some(Instant::now());
            st.alerted = false;
            st.status.last_sync_ms = Some(u64::try_from(system::now_us() / 1000).unwrap_or(0));
            st.status.offset_ms = Some(sample.offset_us / 1000);
            st.status.correction = Some(
                match correction {
                    Some(system::Correction::Step) => "step",
                    Some(system::Correction::Slew) => "slew",
                    None => "none",
                }
                .to_owned(),
            );
            st.status.server = Some(sample.addr.to_string());
            st.status.stratum = Some(sample.stratum);
            st.status.unsynchronised_secs = None;
            st.status.last_error = None;
            first
        };
        if first {
            PLAUSIBLE.store(true, Ordering::Relaxed);
            tracing::info!(
                offset_ms = sample.offset_us / 1000,
                server = %sample.addr,
                stratum = sample.stratum,
                "time synchronised"
            );
            let _ = self.events.try_send(TimeEvent::Synchronised);
        }
    }

    fn failed(&self, reason: String) {
        tracing::debug!(%reason, "no usable NTP answer this round");
        let mut st = lock(&self.state);
        let since = st.last_sync.unwrap_or(self.started);
        let secs = since.elapsed().as_secs();
        st.status.last_error = Some(reason.clone());
        st.status.unsynchronised_secs = Some(secs);
        if since.elapsed() >= UNSYNCED_ALERT && !st.alerted {
            st.alerted = true;
            tracing::warn!(secs, %reason, "the clock has not been synchronised for an hour");
            let _ = self
                .events
                .try_send(TimeEvent::Unsynchronised { secs, reason });
        }
    }
}

/// One round: every server's addresses (literals as they are), at most
/// [`MAX_ADDRS_PER_ROUND`] asked at once; the median answer, or why there is none.
async fn round(cfg: &TimeConfig, dns: &DnsConfig) -> Result<ntp::Sample, String> {
    let servers = cfg.parsed();
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    // One address per server first (diversity), then more from the same names.
    let mut per_server: Vec<Vec<SocketAddr>> = Vec::new();
    for s in &servers {
        match s.literal() {
            Some(a) => per_server.push(vec![a]),
            None => {
                match tokio::time::timeout(LOOKUP_TIMEOUT, crate::dns::lookup_ips(dns, &s.host))
                    .await
                {
                    Ok(Ok(ips)) => per_server.push(
                        ips.into_iter()
                            .map(|ip| SocketAddr::new(ip, s.port))
                            .collect(),
                    ),
                    Ok(Err(e)) => errors.push(e.to_string()),
                    Err(_) => errors.push(format!("cannot resolve {}: timed out", s.host)),
                }
            }
        }
    }
    let deepest = per_server.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..deepest {
        for list in &per_server {
            if let Some(a) = list.get(i) {
                if addrs.len() < MAX_ADDRS_PER_ROUND && !addrs.contains(a) {
                    addrs.push(*a);
                }
            }
        }
    }
    let mut asks = tokio::task::JoinSet::new();
    for addr in addrs {
        asks.spawn(async move { (addr, ntp::query(addr, QUERY_TIMEOUT).await) });
    }
    let mut samples = Vec::new();
    while let Some(done) = asks.join_next().await {
        match done {
            Ok((_, Ok(s))) => samples.push(s),
            Ok((addr, Err(e))) => errors.push(format!("{addr}: {e}")),
            Err(e) => errors.push(format!("a query failed: {e}")),
        }
    }
    ntp::choose(&samples).ok_or_else(|| {
        if errors.is_empty() {
            "no server to ask".to_owned()
        } else {
            errors.join("; ")
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_limits_are_checked() {
        assert_eq!(TimeConfig::default().check(), Ok(()));
        let mut c = TimeConfig {
            servers: vec!["ntp.example.net".to_owned(); MAX_SERVERS + 1],
            ..TimeConfig::default()
        };
        assert_eq!(c.check().unwrap_err().0, "time.servers");
        c.servers = vec!["bad host".to_owned()];
        assert_eq!(c.check().unwrap_err().0, "time.servers");
        c.servers = Vec::new();
        assert_eq!(c.check(), Ok(()));
        c.poll_secs = 10;
        assert_eq!(c.check().unwrap_err().0, "time.poll_secs");
        c.poll_secs = 1024;
        c.start_wait_secs = 61;
        assert_eq!(c.check().unwrap_err().0, "time.start_wait_secs");
    }
}

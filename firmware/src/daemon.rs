//! The daemon: one task owns the call core, the store and the transports, and serves admin
//! commands between batches of SIP messages.
//!
//! Each turn of the loop handles a batch of inbound messages (and due timers), commits what
//! the core asks to persist in one write transaction (group commit), and only then sends the
//! responses that depend on it. So a REGISTER that got its 200 OK for a new binding is on
//! disk, whatever happens next; a refresh that changes nothing but the expiry is answered at
//! once and its expiry written within a second (see [`committer`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use pbx_core::endpoint::{
    Endpoint, EndpointConfig, Event, Forwarding, MailboxMessage, MediaSettings, VoicemailSettings,
};
use pbx_core::media::session::MediaEvent;
use pbx_core::sip::auth::{DigestChoice, NonceConfig};
use pbx_core::sip::transaction::TimerConfig;
use pbx_core::Millis;
use rand::Rng;
use tokio::sync::{mpsc, oneshot};

use crate::admin::proto::{Command, Reply};
use crate::admin::server::{self, AdminRequest};
use crate::config::Config;
use crate::driver::{Inbound, Transports};
use crate::guard::Guard;
use crate::media::relay::Relay;
use crate::pbx_config;
use crate::recordings;
use crate::store::{Store, VoicemailRecord};
use pbx_core::sip::wire;

mod boot;
mod clock;
mod committer;
mod facts;
mod shed;
mod snapshot;
mod start;
mod updates;

use boot::{alert_failed_update, select_revision};
pub use boot::{newest_revision_instead, BOOT_INFO};
use clock::Clock;
use committer::Committer;
use start::{
    core_trunks, ivr_menus, recording_settings, recordings_dir, start_relay, start_transports,
    trunk_hosts, trunk_tls_names,
};

/// Inbound messages handled per turn before timers, admin commands and the commit get a go.
const BATCH: usize = 512;
/// Depth of the inbound queue between the socket readers and the core.
const INBOUND_QUEUE: usize = 8192;
/// How often the box's addresses are read again (a new DHCP lease is followed this fast).
const HOST_CHECK_MS: Millis = 2_000;
/// How long the start waits for the trunk hosts' first DNS answers (so the trunks and the
/// firewall start with addresses); a slower answer is taken when it comes.
const DNS_START_WAIT: Duration = Duration::from_secs(5);

/// The running daemon's state.
#[derive(Debug)]
struct Daemon {
    cfg: Config,
    clock: Clock,
    endpoint: Endpoint,
    store: std::sync::Arc<Store>,
    /// Finished call recordings on their way to the mixing thread.
    recorder: recordings::Mixer,
    /// Pipelined group commit (see [`Committer`]).
    commits: Committer,
    transports: Transports,
    listen: Vec<String>,
    commit_failures: u64,
    /// Mailboxes whose index changed this turn (their MWI is refreshed in `flush`).
    mailboxes: Vec<String>,
    /// The RTP relay, when media is anchored.
    relay: Option<Relay>,
    /// The SIP firewall: inspects every message before the call core.
    guard: Guard,
    /// The endpoint's configuration as built at start (live changes are applied to a copy).
    endpoint_cfg: EndpointConfig,
    /// Configuration revisions and the one running now.
    revisions: crate::revisions::Revisions,
    /// The running revision's text.
    config_text: String,
    /// A revision applied with a confirmation deadline, and the one to return to.
    pending_confirm: Option<(u32, Millis, u32)>,
    /// When each part last went round, for the watchdog.
    beats: std::sync::Arc<crate::watchdog::Heartbeats>,
    /// The latest counters, for the metrics endpoint.
    metrics_tx: tokio::sync::watch::Sender<crate::metrics::Metrics>,
    /// The management networks, for the metrics endpoint's own check of its peers.
    management_tx: tokio::sync::watch::Sender<Vec<firewall::net::Cidr>>,
    /// The latest status, for the front panel.
    panel_tx: tokio::sync::watch::Sender<board::panel::PanelStatus>,
    /// Stale requests dropped at the inbound queue ([`shed`]).
    shed: shed::ShedCounters,
    /// When the snapshots are refreshed next.
    next_snapshot: Millis,
    /// The newest good backup's creation time, and when the backup directory is read next.
    newest_backup: (Option<Millis>, Millis),
    /// Backups: admin commands, the schedule, uploads.
    backups: crate::backup::Backups,
    /// The update upload in progress (the web page's).
    updates: updates::Updates,
    /// The box's primary addresses as last read, and when they are read next.
    host: (crate::netif::HostAddrs, Millis),
    /// The trunk hosts' addresses, looked up (RFC 3263) and kept fresh in the background.
    dns: crate::dns::TrunkDns,
    /// The NTP client.
    time: crate::timesync::TimeSync,
    /// When the daemon's clock was last compared with the system's (a step to follow).
    clock_check: Millis,
    /// Refused network logins (the web page's), checked off the loop, back for the guard.
    login_failures: mpsc::Sender<crate::admin::console::LoginFailure>,
}

/// Runs the daemon until SIGINT or SIGTERM. `boot` is the configuration the daemon was
/// started with (`boot_text` its text, `source` where it came from); the newest applied
/// revision in the data directory wins over it unless the boot file changed since. With
/// `factory_default` (`outpostd --config-default`) the boot file only seeds revision 1: the
/// newest applied revision runs even when the boot file changed.
pub async fn run(
    boot: Config,
    boot_text: String,
    source: String,
    factory_default: bool,
) -> anyhow::Result<()> {
    let clock = Clock::new();
    // A restore staged before the restart is applied before anything opens the data.
    if let Some(c) = crate::backup::apply_staged(
        &boot.store.data_dir,
        &boot.ssh.host_key_path(&boot.store.data_dir),
        &boot_text,
    )
    .context("cannot apply the staged restore")?
    {
        tracing::warn!(hostname = %c.hostname, "restored the backup made {}", crate::backup::schedule::rfc3339(c.created_ms));
    }
    let factory = boot.clone();
    let (mut cfg, mut revisions, config_text) =
        select_revision(boot, &boot_text, &source, clock.now(), factory_default)?;
    for key in cfg.fixed_keys() {
        tracing::warn!(
            "config: `{key}` is ignored: the firmware image fixes the programs the daemon runs \
             (remove the key; `config apply` refuses it)"
        );
    }
    // The clock before anything is stamped: when the daemon owns it, a first NTP answer
    // (a bounded wait; offline it starts without), and the daemon's clock starts after it.
    let set_clock = crate::fixed::get().set_clock;
    // No lookup may hold a port the relay is about to bind (its range, and the built-in
    // range it falls back to).
    let fallback_media = crate::config::MediaConfig::default();
    crate::dns::avoid_udp_ports(&[
        cfg.media.port_first..=cfg.media.port_last,
        fallback_media.port_first..=fallback_media.port_last,
    ]);
    let mut time =
        crate::timesync::TimeSync::start(&cfg.time, &cfg.dns, &cfg.store.data_dir, set_clock);
    if set_clock && !cfg.time.servers.is_empty() && cfg.time.start_wait_secs > 0 {
        let wait = Duration::from_secs(cfg.time.start_wait_secs);
        if !time.first_round(wait).await {
            tracing::warn!(
                wait_secs = cfg.time.start_wait_secs,
                "no NTP answer at start: starting with the clock as it is; it is corrected when a server answers"
            );
        }
    }
    let clock = Clock::new();
    let running_rev = revisions.current().map(|r| r.rev);
    let mut fallbacks = crate::fallback::Fallbacks::new(&cfg, running_rev, &factory);
    let data_dir = cfg.store.data_dir.clone();
    let store = Store::open(&data_dir)
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    tracing::info!(schema = store.schema_version(), "store opened");
    alert_failed_update(&store, std::path::Path::new(BOOT_INFO), clock.now());
    let secret_key = store.secret_key().context("cannot read the nonce key")?;

    let (in_tx, mut in_rx) = mpsc::channel::<Inbound>(INBOUND_QUEUE);
    let mut transports = start_transports(&mut cfg, &mut fallbacks, in_tx).await?;
    let local = transports.local_addrs();
    let listen: Vec<String> = local
        .iter()
        .flat_map(|a| [format!("udp:{a}"), format!("tcp:{a}")])
        .collect();
    // Via, Contact and SDP name the box's current addresses, never 0.0.0.0.
    let host = crate::netif::HostAddrs::read();

    let mut dns = crate::dns::TrunkDns::start(&cfg.dns, &trunk_hosts(&cfg));
    dns.first_answers(DNS_START_WAIT).await;
    let (trunks, unresolved) = core_trunks(&cfg, &dns, &mut transports);
    for (name, err) in &unresolved {
        fallbacks.fell_back(
            &format!("trunk {name:?}"),
            err.clone(),
            "the trunk is down until its host resolves (tried again every 30 s)",
        );
    }
    let endpoint_cfg = EndpointConfig {
        realm: boot::box_realm(cfg.sip.realm.as_deref(), &store)
            .context("cannot choose the digest realm")?,
        user_agent: cfg.sip.user_agent.clone(),
        local: host.advertise_sockets(&local),
        registrar: cfg.registrar.clone(),
        nonce: NonceConfig {
            lifetime_ms: cfg.auth.nonce_lifetime_secs * 1000,
            ..NonceConfig::default()
        },
        auth_algorithms: cfg.auth.parsed_algorithms(),
        timers: TimerConfig::default(),
        max_server_transactions: cfg.sip.max_server_transactions,
        ring_timeout_ms: cfg.calls.ring_timeout_secs * 1000,
        secret_key,
        seed: rand::thread_rng().gen(),
        media: None,
        voicemail: None,
        recording: None,
        ivr: ivr_menus(&cfg),
        groups: pbx_config::ring_groups(&cfg.ring_group),
        paging: pbx_config::paging_groups(&cfg.paging),
        features: pbx_config::features(&cfg.features),
        dialplan: pbx_config::dialplan(&cfg.route, &cfg.inbound, &cfg.dialplan),
        trunks: trunks.clone(),
        srtp_over_insecure: cfg.media.srtp_over_insecure,
    };
    let mut endpoint_cfg = endpoint_cfg;
    let mut relay = None;
    let mut media_rx = None;
    if let Some(mut r) = start_relay(&mut cfg, &mut fallbacks) {
        let addrs = cfg.media.effective_addrs(&cfg.sip.listen);
        media_rx = r.events();
        endpoint_cfg.recording = recording_settings(&cfg);
        if cfg.voicemail.enabled {
            endpoint_cfg.voicemail = Some(VoicemailSettings {
                dir: cfg.store.data_dir.join("voicemail"),
                max_ms: cfg.voicemail.max_secs.saturating_mul(1000),
                access_number: cfg.voicemail.access_number.clone(),
            });
        }
        endpoint_cfg.media = Some(MediaSettings {
            addrs: host.advertise_ips(&addrs),
            port_first: cfg.media.port_first,
            port_last: cfg.media.port_last,
        });
        relay = Some(r);
    }
    let guard = Guard::start(
        &cfg.firewall,
        &cfg.firewall_surroundings_with(|t| dns.targets(&t.host, t.transport_kind())),
        &store,
        clock.now(),
    );
    transports.set_conn_limits(cfg.firewall.connections.limits());
    transports.set_trusted(guard.trusted_networks());
    let store = std::sync::Arc::new(store);
    let (commit_done_tx, mut commit_done) = mpsc::unbounded_channel::<(u64, bool)>();
    let commits = Committer::start(store.clone(), commit_done_tx)?;
    let kept_endpoint_cfg = endpoint_cfg.clone();
    let mut endpoint = Endpoint::new(endpoint_cfg);
    endpoint.set_gate(guard.toll_gate());
    let beats = crate::watchdog::Heartbeats::new();
    beats.beat_loop();
    beats.expect_enforcer(guard.mode() == &crate::guard::Mode::Enforcing);
    let (metrics_tx, metrics_rx) = tokio::sync::watch::channel(crate::metrics::Metrics::default());
    let (management_tx, management_rx) =
        tokio::sync::watch::channel(cfg.management.networks.clone());
    let (panel_tx, panel_rx) = tokio::sync::watch::channel(board::panel::PanelStatus::default());
    let pending_confirm = revisions.current().and_then(|r| {
        let by = r.confirm_by?;
        let back = revisions.previous_applied(r.rev)?.rev;
        Some((r.rev, by, back))
    });
    let _ = &mut revisions;
    let (login_failures_tx, mut login_failures) =
        mpsc::channel::<crate::admin::console::LoginFailure>(256);
    let mut daemon = Daemon {
        recorder: recordings::Mixer::start(recordings::Recordings::new(
            recordings_dir(&cfg),
            cfg.recording.max_stored as usize,
        ))?,
        endpoint_cfg: kept_endpoint_cfg,
        revisions,
        config_text,
        pending_confirm,
        beats,
        metrics_tx,
        management_tx,
        panel_tx,
        shed: shed::ShedCounters::default(),
        next_snapshot: 0,
        newest_backup: (None, 0),
        backups: crate::backup::Backups::new(),
        updates: updates::Updates::new(),
        host: (host, 0),
        dns,
        time,
        clock_check: 0,
        login_failures: login_failures_tx,
        guard,
        endpoint,
        clock,
        store,
        commits,
        transports,
        listen,
        commit_failures: 0,
        mailboxes: Vec::new(),
        relay,
        cfg,
    };
    daemon.load()?;
    let now = daemon.clock.now();
    daemon.apply_locks(now);
    daemon.create_demo_extensions()?;
    crate::system::apply_hostname(&daemon.cfg.system);

    // The watchdog, the metrics endpoint and the front panel.
    // Neither may stop the phones: a missing or refusing device, a taken port is alerted.
    let _watchdog = match daemon.cfg.watchdog_device() {
        Some(device) => {
            let started =
                crate::watchdog::BoardWatchdog::open(&device, daemon.cfg.watchdog.timeout_secs)
                    .map_err(|e| format!("cannot open the watchdog {}: {e}", device.display()))
                    .and_then(|dog| {
                        crate::watchdog::spawn(
                            Box::new(dog),
                            &daemon.cfg.watchdog,
                            daemon.beats.clone(),
                            daemon.store.clone(),
                        )
                        .map_err(|e| format!("cannot start the watchdog {}: {e}", device.display()))
                    });
            match started {
                Ok(w) => {
                    tracing::info!(device = %device.display(), timeout_secs = daemon.cfg.watchdog.timeout_secs, "watchdog armed");
                    Some(w)
                }
                Err(err) => {
                    fallbacks.fell_back("watchdog", err, "no hardware watchdog");
                    None
                }
            }
        }
        None => None,
    };
    let web_networks = management_rx.clone();
    if let Some(addr) = daemon.cfg.metrics.listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                tracing::info!(%addr, "metrics endpoint: GET /metrics");
                tokio::spawn(crate::metrics::serve(listener, metrics_rx, management_rx));
            }
            Err(err) => fallbacks.fell_back(
                "metrics.listen",
                format!("cannot listen on {addr}: {err}"),
                "no metrics endpoint (`outpostctl metrics` still works)",
            ),
        }
    }
    let (panel_actions_tx, mut panel_actions) = mpsc::channel::<board::panel::PanelAction>(16);
    let _panel = crate::panel::start(&daemon.cfg.panel, panel_rx, panel_actions_tx);

    let (admin_tx, mut admin_rx) = mpsc::channel::<AdminRequest>(64);
    let access = server::Access::new(crate::fixed::get().admin_group.as_deref())?;
    let listener = server::bind(&daemon.cfg.admin.socket, &access).with_context(|| {
        format!(
            "cannot create the admin socket {}",
            daemon.cfg.admin.socket.display()
        )
    })?;
    let web_admin = admin_tx.clone();
    let provision_admin = admin_tx.clone();
    tokio::spawn(async move {
        if let Err(err) = server::run(listener, admin_tx, access).await {
            tracing::error!(%err, "admin socket failed");
        }
    });
    // The web page: a client of the same queue as the admin socket.
    let provision_networks = web_networks.clone();
    if let Err(err) = crate::web::start(
        &daemon.cfg.web,
        &daemon.cfg.tls,
        &daemon.cfg.store.data_dir,
        web_admin,
        web_networks,
    )
    .await
    {
        fallbacks.fell_back(
            "web",
            err.to_string(),
            "no web page (outpostctl, SSH and the console still work)",
        );
    }

    // Desk phones' files over plain HTTP, when `[provision] listen` asks for it.
    if let Err(err) =
        crate::web::start_provision(&daemon.cfg.provision, provision_admin, provision_networks)
            .await
    {
        fallbacks.fell_back(
            "provision",
            err.to_string(),
            "no plain-HTTP provisioning (the web page's HTTPS /provision/ still works)",
        );
    }

    // SSH: dropbear under supervision; its failed logins feed the firewall.
    let mut ssh_failures = match crate::ssh::start(
        &daemon.cfg.ssh,
        &daemon.cfg.store.data_dir,
        &daemon.cfg.admin.socket,
        &daemon.store,
    ) {
        Ok(rx) => rx,
        Err(err) => {
            tracing::error!("ssh: not started: {err}");
            None
        }
    };

    daemon.started(&fallbacks, running_rev);

    tracing::info!(
        listen = %daemon.listen.join(" "),
        admin = %daemon.cfg.admin.socket.display(),
        data = %data_dir.display(),
        extensions = daemon.endpoint.user_count(),
        registrations = daemon.endpoint.registrar().count(),
        "outpostd {} ready", env!("CARGO_PKG_VERSION")
    );

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut batch: Vec<Inbound> = Vec::with_capacity(BATCH);
    loop {
        let next = [
            daemon.endpoint.poll_timeout(),
            daemon.guard.poll_timeout(),
            daemon.commits.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        // At least once a second: the watchdog's heartbeat and the snapshots.
        let tick = tokio::time::Instant::now() + Duration::from_secs(1);
        let deadline = next
            .map(|t| daemon.clock.instant_at(t))
            .unwrap_or(tick)
            .min(tick);
        tokio::select! {
            biased;
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            Some((cmd, reply)) = admin_rx.recv() => daemon.admin(cmd, reply),
            Some(action) = panel_actions.recv() => daemon.panel_action(action),
            Some((seq, ok)) = commit_done.recv() => daemon.committed(seq, ok),
            Some((ip, service)) = login_failures.recv() => {
                let now = daemon.clock.now();
                daemon.guard.login_failure(now, ip, service);
            }
            Some(ip) = crate::ssh::next_failure(&mut ssh_failures) => {
                let now = daemon.clock.now();
                daemon.guard.login_failure(now, ip, firewall::detect::LoginService::Ssh);
            }
            Some(ev) = next_media_event(&mut media_rx) => {
                let now = daemon.clock.now();
                daemon.endpoint.handle_media_event(now, ev);
            }
            n = in_rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    anyhow::bail!("all transports stopped");
                }
                let now = daemon.clock.now();
                for msg in batch.drain(..) {
                    daemon.inbound(now, msg);
                    // Each message's responses are held or sent by what it wrote.
                    daemon.collect(now);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
        let now = daemon.clock.now();
        if daemon.endpoint.poll_timeout().is_some_and(|t| t <= now) {
            daemon.endpoint.handle_timeout(now);
        }
        if daemon.guard.poll_timeout().is_some_and(|t| t <= now) {
            daemon.guard.handle_timeout(now);
        }
        daemon.beats.beat_loop();
        if now >= daemon.next_snapshot {
            daemon.next_snapshot = now.saturating_add(1000);
            daemon.tick(now);
            // Checked on the tick, so the restore's reply has been written by now.
            if daemon.backups.restart_requested() {
                tracing::warn!("stopping to apply the staged restore at the next start");
                break;
            }
        }
        daemon.flush();
    }
    daemon.flush();
    // Finish what is queued for the disk, waiting refreshes included, before exiting.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        daemon.commits.dispatch(daemon.clock.now(), true);
        if daemon.commits.in_flight.is_none() {
            break;
        }
        match tokio::time::timeout_at(deadline, commit_done.recv()).await {
            Ok(Some((seq, ok))) => daemon.committed(seq, ok),
            _ => break,
        }
    }
    let _ = std::fs::remove_file(&daemon.cfg.admin.socket);
    daemon.time.save_now();
    tracing::info!("outpostd stopped");
    Ok(())
}

impl Daemon {
    /// Start-up is complete: each section that fell back is raised as an alert (the
    /// panel's alert LED, `fw alerts`); a clean start records the running revision as the
    /// last good one, the first fallback of a later start.
    fn started(&mut self, fallbacks: &crate::fallback::Fallbacks, rev: Option<u32>) {
        let now = self.clock.now();
        if fallbacks.degraded().is_empty() {
            if let Some(rev) = rev {
                crate::fallback::mark_good(&self.cfg.store.data_dir, rev);
            }
            return;
        }
        let alerts: Vec<crate::store::FirewallChange> = fallbacks
            .degraded()
            .iter()
            .map(|d| {
                crate::store::FirewallChange::Alert(firewall::detect::Alert {
                    at: now,
                    rule: firewall::detect::Rule::Manual,
                    addr: None,
                    user: None,
                    message: d.message(),
                    enforced: true,
                })
            })
            .collect();
        if let Err(err) = self.store.fw_apply(&alerts) {
            tracing::error!(%err, "cannot store the configuration alerts");
        }
    }

    /// Once a second: the NTP client's news (first synchronisation: trunks register again;
    /// an hour without: an alert), and every few seconds whether the system clock was set,
    /// which the daemon's clock follows once no call is in progress (registrations and MWI
    /// subscriptions keep the time they had left; a call's timers would not).
    fn follow_clock(&mut self, now: Millis) {
        for event in self.time.poll() {
            match event {
                crate::timesync::TimeEvent::Synchronised => {
                    self.endpoint.clock_synchronised(now);
                }
                crate::timesync::TimeEvent::Unsynchronised { secs, reason } => {
                    let alert = crate::store::FirewallChange::Alert(firewall::detect::Alert {
                        at: now,
                        rule: firewall::detect::Rule::Manual,
                        addr: None,
                        user: None,
                        message: format!(
                            "time: the clock has not been synchronised for {} minutes ({}); \
                             certificates, call records and alerts may carry wrong times",
                            secs / 60,
                            crate::names::printable(&reason, 200)
                        ),
                        enforced: true,
                    });
                    if let Err(err) = self.store.fw_apply(&[alert]) {
                        tracing::error!(%err, "cannot store the time alert");
                    }
                }
            }
        }
        if now < self.clock_check {
            return;
        }
        self.clock_check = now.saturating_add(clock::CHECK_EVERY_MS);
        let drift = self.clock.drift_ms();
        if drift.abs() < clock::FOLLOW_MS || self.endpoint.active_calls() > 0 {
            return;
        }
        tracing::warn!(
            drift_ms = drift,
            "the system clock was set: the daemon's clock follows it"
        );
        self.clock.follow(drift);
        self.endpoint.clock_stepped(drift);
    }

    /// Every few seconds: when the box's addresses changed (a new DHCP lease, another
    /// network), Via, Contact and new SDP follow; trunks register again.
    fn follow_addresses(&mut self, now: Millis) {
        if now < self.host.1 {
            return;
        }
        self.host.1 = now.saturating_add(HOST_CHECK_MS);
        let host = crate::netif::HostAddrs::read();
        if host == self.host.0 {
            return;
        }
        let local = host.advertise_sockets(&self.transports.local_addrs());
        let media = host.advertise_ips(&self.cfg.media.effective_addrs(&self.cfg.sip.listen));
        tracing::warn!(
            old_v4 = ?self.host.0.v4, new_v4 = ?host.v4, old_v6 = ?self.host.0.v6, new_v6 = ?host.v6,
            "the box's address changed: signalling and new calls use the new one"
        );
        self.host.0 = host;
        self.endpoint
            .set_addresses(now, local.clone(), media.clone());
        self.endpoint_cfg.local = local;
        if let Some(m) = self.endpoint_cfg.media.as_mut() {
            m.addrs = media;
        }
    }

    /// New DNS answers for trunk hosts (a re-resolution, or a host that did not resolve
    /// before): the trunks on a host whose addresses changed get the new ones and keep
    /// their registration and health (see `pbx_core::trunk::Trunks::set_targets`).
    fn follow_dns(&mut self, now: Millis) {
        let changed = self.dns.poll();
        if changed.is_empty() {
            return;
        }
        for ((host, transport), targets) in changed {
            for t in self
                .cfg
                .trunk
                .iter()
                .filter(|t| t.host == host && t.transport_kind() == transport)
            {
                trunk_tls_names(&mut self.transports, t, &targets);
                self.endpoint
                    .set_trunk_targets(now, &t.name, targets.clone());
                if let Some(c) = self
                    .endpoint_cfg
                    .trunks
                    .iter_mut()
                    .find(|c| c.name == t.name)
                {
                    c.targets.clone_from(&targets);
                }
            }
        }
        // The never-banned trunk addresses and the kernel's trunk sets follow too.
        let site = self
            .cfg
            .firewall_surroundings_with(|t| self.dns.targets(&t.host, t.transport_kind()));
        self.guard.set_trunks(&self.cfg.firewall, &site);
        self.transports.set_trusted(self.guard.trusted_networks());
    }

    /// Loads extensions and registrations from the store.
    fn load(&mut self) -> anyhow::Result<()> {
        let now = self.clock.now();
        for rec in self.store.ext_list()? {
            if rec.realm != self.endpoint_cfg.realm {
                tracing::warn!(
                    ext = %rec.ext,
                    "extension was created for realm {:?}, configured realm is {:?}: reset its password with `outpostctl ext passwd {}`",
                    rec.realm, self.endpoint_cfg.realm, rec.ext
                );
            }
            if let Some(hash) = self.store.meta_get(&format!("vm_pin:{}", rec.ext))? {
                let hash = String::from_utf8_lossy(&hash).to_string();
                self.endpoint.set_pin(&rec.ext, Some(hash));
            }
            if let Some(cid) = self.store.meta_get(&format!("cid:{}", rec.ext))? {
                let cid = String::from_utf8_lossy(&cid).to_string();
                if !cid.is_empty() {
                    self.endpoint.set_caller_id(&rec.ext, Some(cid));
                }
            }
            if let Some(choice) = self.store.meta_get(&format!("digest:{}", rec.ext))? {
                match String::from_utf8_lossy(&choice).parse::<DigestChoice>() {
                    Ok(choice) => self.endpoint.set_user_digest(&rec.ext, choice),
                    Err(err) => {
                        tracing::warn!(ext = %rec.ext, %err, "unreadable digest choice ignored")
                    }
                }
            }
            let dnd = self
                .store
                .meta_get(&crate::admin::control::dnd_key(&rec.ext))?;
            if dnd.is_some_and(|v| v == b"on") {
                self.endpoint.set_dnd(now, &rec.ext, true);
            }
            if let Some(json) = self.store.meta_get(&format!("fwd:{}", rec.ext))? {
                match serde_json::from_slice::<Forwarding>(&json) {
                    Ok(fwd) => self.endpoint.set_forwarding(&rec.ext, fwd),
                    Err(err) => {
                        tracing::warn!(ext = %rec.ext, %err, "unreadable call forwarding ignored")
                    }
                }
            }
            self.endpoint.set_user(&rec.ext, rec.secret);
        }
        // One read of the voicemail index, grouped by mailbox.
        let mut boxes: std::collections::BTreeMap<String, Vec<MailboxMessage>> =
            std::collections::BTreeMap::new();
        for m in self.store.vm_list(None)? {
            boxes.entry(m.mailbox).or_default().push(MailboxMessage {
                id: m.id,
                path: m.path,
                new: m.new,
            });
        }
        for (mailbox, msgs) in boxes {
            self.endpoint.set_mailbox(now, &mailbox, msgs);
        }
        let bindings = self.store.bindings_all()?;
        // Phones registered before a restart authenticated: their sources keep the
        // authenticated connection caps (and pass the unknown-host gate) as they reconnect.
        for b in bindings.iter().filter(|b| b.expires_at > now) {
            self.guard.restored_registration(now, b.source, &b.ext);
        }
        self.endpoint.restore_bindings(bindings, now);
        // After the mailboxes' counts: the next change is NOTIFYed in the same dialogs.
        self.endpoint.restore_mwi(self.store.mwi_all()?, now);
        Ok(())
    }

    /// Hands the firewall's account locks to the call core. A lock restored after a restart
    /// brings the sources it was stored with back as trusted; every lock is then stored
    /// again with the sources it does not apply to, so a restart keeps the office's phones
    /// exempt.
    fn apply_locks(&mut self, now: Millis) {
        while let Some(order) = self.guard.poll_lock() {
            self.endpoint
                .trust_sources(now, &order.user, &order.except, now);
            self.endpoint.lock_user(now, &order.user, order.until);
            let except = self.endpoint.trusted_sources(now, &order.user);
            self.guard.lock_exempt(now, &order.user, except);
        }
    }

    /// Creates the configured demo extensions that do not exist yet, printing their
    /// passwords once (only their digests are stored).
    fn create_demo_extensions(&mut self) -> anyhow::Result<()> {
        for ext in self.cfg.demo.extensions.clone() {
            if self.endpoint.has_user(&ext) {
                println!("demo extension {ext}: exists (reset its password with `outpostctl ext passwd {ext}`)");
                continue;
            }
            let password = generate_password();
            crate::admin::control::put_extension(
                &self.store,
                &mut self.endpoint,
                &self.endpoint_cfg.realm,
                self.clock.now(),
                &ext,
                Some(format!("Demo {ext}")),
                &password,
            )?;
            println!("demo extension {ext}: password {password}");
        }
        Ok(())
    }

    fn inbound(&mut self, now: Millis, msg: Inbound) {
        match msg {
            Inbound::Message {
                peer,
                bytes,
                received,
            } => {
                if wire::is_keepalive(&bytes) {
                    if !self.guard.is_banned(now, peer.addr.ip()) {
                        self.endpoint.handle(now, peer, &bytes);
                    }
                    return;
                }
                // One parse serves the firewall, the shedding and the call core.
                let parsed = wire::parse(&bytes);
                let from_trunk = self.endpoint.is_trunk_source(peer);
                // The firewall sees every message, stale or not: a flood that overloads
                // the box must still be counted and banned.
                if !self.guard.inspect(now, peer, &bytes, &parsed, from_trunk) {
                    return;
                }
                let endpoint = &self.endpoint;
                let waited = received.elapsed();
                if let Some(kind) =
                    shed::verdict(waited, peer.transport, &parsed, from_trunk, |req| {
                        endpoint.absorbs_request(now, req)
                    })
                {
                    self.shed.count(kind);
                    tracing::trace!(peer = %peer.addr, ?kind, ?waited, "stale request shed");
                    return;
                }
                self.endpoint.handle_parsed(now, peer, &bytes, parsed);
            }
            Inbound::Connected { addr, writer } => self.transports.connected(addr, writer),
            Inbound::Closed { addr } => self.transports.closed(addr),
            Inbound::TransportError { peer, reason } => {
                self.endpoint.handle_transport_error(now, peer, &reason);
            }
            Inbound::ConnReport => self.conn_report(now),
        }
    }

    /// Hands the transports' connection reports to the firewall (rule `connection_flood`).
    fn conn_report(&mut self, now: Millis) {
        let report = self.transports.take_conn_report();
        if !report.sources.is_empty() || report.pool_refused > 0 {
            self.guard.connections(now, &report);
        }
    }

    /// Takes what the core produced since the last call: events (writes join the next
    /// commit) and messages. Called after each inbound message, so each message's
    /// responses are judged by what that message wrote: a durable write holds them until
    /// its commit; refreshes alone send them at once; nothing written holds them behind
    /// the durable commit gathering or in flight (a retransmitted response must not
    /// overtake its original).
    fn collect(&mut self, now: Millis) {
        let mut durable = false;
        let mut refreshed = false;
        // Handed to the relay thread together, before this message's responses leave: one
        // wake-up per message, not per command.
        let mut media = Vec::new();
        while let Some(event) = self.endpoint.poll_event() {
            if matches!(
                event,
                Event::AuthFailed { .. } | Event::AuthSucceeded { .. }
            ) {
                self.guard.feedback(now, &event);
            }
            match event {
                Event::Bindings(changes) => {
                    if self.commits.bindings(now, changes) {
                        durable = true;
                    } else {
                        refreshed = true;
                    }
                }
                Event::Mwi(changes) => {
                    durable |= !changes.is_empty();
                    self.commits.pending.mwi.extend(changes);
                }
                Event::CallEnded(cdr) => {
                    tracing::info!(
                        caller = %cdr.caller, callee = %cdr.callee,
                        disposition = ?cdr.disposition, billsec = cdr.billsec(),
                        "call ended"
                    );
                    self.commits.pending.cdrs.push(cdr);
                    durable = true;
                }
                Event::Media(cmd) => {
                    self.guard.media(&cmd);
                    if self.relay.is_some() {
                        media.push(cmd);
                    }
                }
                Event::AuthSucceeded { .. } => {}
                Event::DndChanged { ext, on } => {
                    let key = crate::admin::control::dnd_key(&ext);
                    if let Err(err) = self.store.meta_put(&key, if on { b"on" } else { b"" }) {
                        tracing::error!(%ext, %err, "cannot store do-not-disturb");
                    }
                }
                Event::VoicemailHeard { id } => match self.store.vm_mark_heard(id) {
                    Ok(Some(mailbox)) => self.mailboxes.push(mailbox),
                    Ok(None) => {}
                    Err(err) => tracing::error!(%err, "cannot update the voicemail index"),
                },
                Event::VoicemailDeleted { id } => match self.store.vm_delete(id) {
                    Ok(Some(msg)) => {
                        let _ = std::fs::remove_file(&msg.path);
                        self.mailboxes.push(msg.mailbox);
                    }
                    Ok(None) => {}
                    Err(err) => tracing::error!(%err, "cannot update the voicemail index"),
                },
                Event::VoicemailStored {
                    mailbox,
                    caller,
                    path,
                    duration_ms,
                    at,
                } => {
                    tracing::info!(%mailbox, %caller, duration_ms, "voicemail message stored");
                    self.commits.pending.voicemail.push(VoicemailRecord {
                        id: 0,
                        mailbox,
                        caller,
                        at,
                        duration_ms,
                        path,
                        new: true,
                    });
                    durable = true;
                }
                Event::CallRecorded {
                    call_id,
                    caller,
                    callee,
                    by,
                    started,
                    parts,
                } => self.recorder.submit(recordings::Finished {
                    call_id,
                    caller,
                    callee,
                    by,
                    started,
                    parts: parts.map(|p| p.map(|(path, _)| path)),
                }),
                Event::AuthFailed { src, method, .. } => {
                    tracing::debug!(peer = %src.addr, %method, "authentication failed");
                }
                Event::TrunkChanged(change) => match change.health {
                    pbx_core::trunk::Health::Up => {
                        tracing::info!(trunk = %change.name, reason = %change.reason, "trunk up")
                    }
                    pbx_core::trunk::Health::Down => {
                        tracing::warn!(trunk = %change.name, reason = %change.reason, "trunk down")
                    }
                },
                event @ (Event::CallRefused { .. } | Event::TrunkCallsRefused { .. }) => {
                    self.guard.feedback(now, &event)
                }
            }
        }
        if let Some(relay) = &self.relay {
            relay.commands(media);
        }
        // Group commit: while one commit is being synced the next gathers, so under load
        // one fsync covers many requests and the loop never waits for disk.
        let barrier = if durable {
            Some(self.commits.next_seq())
        } else if refreshed {
            None
        } else {
            self.commits.barrier()
        };
        while let Some(t) = self.endpoint.poll_transmit() {
            match barrier {
                Some(seq) => self.commits.hold(seq, t),
                None => self.transports.send(t.dest, t.bytes),
            }
        }
    }

    /// Persists what the core produced, then sends.
    fn flush(&mut self) {
        let now = self.clock.now();
        self.collect(now);
        self.apply_locks(now);
        while let Some(user) = self.guard.poll_unlock() {
            self.endpoint.unlock_user(&user);
        }
        while let Some(notice) = self.guard.poll_conn_notice() {
            self.transports.conn_notice(notice);
        }
        self.guard.save_toll_locks(&self.store);
        self.guard.take_writes(&mut self.commits.pending);
        let mut mailboxes = std::mem::take(&mut self.mailboxes);
        mailboxes.sort();
        mailboxes.dedup();
        for mailbox in mailboxes {
            crate::admin::control::refresh_mailbox(&self.store, &mut self.endpoint, now, &mailbox);
        }
        // What the locks and mailboxes produced.
        self.collect(now);
        self.commits.dispatch(now, false);
        // The turn's datagrams leave together (sendmmsg).
        self.transports.flush();
    }

    /// A commit finished: release what waited for it and start the next one.
    fn committed(&mut self, seq: u64, ok: bool) {
        if !ok {
            self.commit_failures += 1;
        }
        let now = self.clock.now();
        let mailboxes = std::mem::take(&mut self.commits.in_flight_mailboxes);
        for t in self.commits.finished(seq) {
            self.transports.send(t.dest, t.bytes);
        }
        for mailbox in mailboxes {
            crate::admin::control::refresh_mailbox(&self.store, &mut self.endpoint, now, &mailbox);
        }
        self.commits.dispatch(now, false);
        self.transports.flush();
    }

    /// Once a second: the enforcer's heartbeat, the snapshots for the metrics endpoint and
    /// the front panel, and a pending revision's deadline.
    fn tick(&mut self, now: Millis) {
        // Reports whose wake-up was lost to a full inbound queue.
        self.conn_report(now);
        self.follow_addresses(now);
        self.follow_dns(now);
        self.follow_clock(now);
        let (cfg, store) = (&self.cfg, &self.store);
        self.backups.tick(&cfg.backup, now, || {
            crate::admin::backup::context(cfg, store.clone())
        });
        if self.guard.enforcer_fresh(Duration::from_secs(10)) == Some(true) {
            self.beats.beat_enforcer();
        }
        if now >= self.newest_backup.1 {
            // The backup directory is read once a minute, not every second.
            let age = crate::backup::last_backup_age_secs(
                &self.cfg.backup,
                &self.cfg.store.data_dir,
                now,
            );
            self.newest_backup = (
                age.map(|a| now.saturating_sub(a.saturating_mul(1000))),
                now.saturating_add(60_000),
            );
        }
        let metrics = self.metrics();
        // The panel's status reads the store and the system's network files: only when a
        // panel runs to show it.
        if self.cfg.panel.backend != "none" {
            let panel = self.panel_status(now, &metrics);
            self.panel_tx.send_replace(panel);
        }
        self.metrics_tx.send_replace(metrics);
        if let Some((rev, by, back)) = self.pending_confirm {
            if now >= by {
                tracing::warn!(
                    rev,
                    back,
                    "configuration revision not confirmed in time: rolling back"
                );
                match self.rollback_to(
                    now,
                    back,
                    &format!("rollback to {back}: revision {rev} not confirmed"),
                ) {
                    Ok(_) => {
                        if let Err(err) = self.revisions.mark_rolled_back(rev) {
                            tracing::error!(%err, "cannot record the rollback");
                        }
                    }
                    Err(err) => tracing::error!("rollback failed: {err:#}"),
                }
                self.pending_confirm = None;
            }
        }
    }

    /// The counters snapshot (every second, and for `metrics`).
    fn metrics(&mut self) -> crate::metrics::Metrics {
        snapshot::metrics(
            &self.endpoint,
            &mut self.guard,
            self.relay.as_ref(),
            &self.shed,
            self.clock.start.elapsed().as_secs(),
        )
    }

    /// What the front panel shows.
    fn panel_status(&self, now: Millis, m: &crate::metrics::Metrics) -> board::panel::PanelStatus {
        snapshot::Panel {
            store: &self.store,
            host: self.host.0,
            data_dir: &self.cfg.store.data_dir,
            system: &self.cfg.system,
            guard: &self.guard,
            newest_backup: self.newest_backup.0,
            time: self.time.status(),
        }
        .status(now, m)
    }

    /// Carries out what was chosen on the front panel.
    fn panel_action(&mut self, action: board::panel::PanelAction) {
        use board::panel::PanelAction;
        let now = self.clock.now();
        match action {
            PanelAction::AckAlerts => {
                if let Err(err) = self
                    .store
                    .meta_put("alerts_acked_at", now.to_string().as_bytes())
                {
                    tracing::error!(%err, "cannot store the acknowledgement");
                }
            }
            PanelAction::UnbanLast(addr) => {
                let reply = crate::admin::firewall::reply(self.guard.admin(
                    now,
                    crate::admin::proto::FwCommand::Unban { addr: addr.clone() },
                    &self.store,
                ));
                tracing::info!(%addr, ?reply, "front panel: unban");
            }
            PanelAction::SetNetwork(setting) => {
                // The image's network-up reads this at boot (static address or DHCP).
                let file = crate::netconf::NetworkFile::from_setting(&setting);
                match file.write(&self.cfg.store.data_dir) {
                    Ok(()) => tracing::info!(
                        ?setting,
                        "front panel: network setting saved; it applies at the next boot"
                    ),
                    Err(err) => tracing::error!(%err, "cannot save the network setting"),
                }
            }
            PanelAction::Reboot => {
                if self.cfg.panel.allow_reboot {
                    tracing::warn!("front panel: reboot");
                    nix::unistd::sync();
                    let Err(err) =
                        nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
                    tracing::error!(%err, "reboot failed");
                } else {
                    tracing::warn!(
                        "front panel: reboot requested (panel.allow_reboot is off: nothing done)"
                    );
                }
            }
            PanelAction::FactoryReset => {
                if self.cfg.panel.allow_factory_reset {
                    tracing::warn!("front panel: factory reset: wiping the data and rebooting");
                    let dir = &self.cfg.store.data_dir;
                    if let Ok(entries) = std::fs::read_dir(dir) {
                        for e in entries.flatten() {
                            let p = e.path();
                            let _ = if p.is_dir() {
                                std::fs::remove_dir_all(&p)
                            } else {
                                std::fs::remove_file(&p)
                            };
                        }
                    }
                    nix::unistd::sync();
                    let Err(err) =
                        nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
                    tracing::error!(%err, "reboot failed");
                } else {
                    tracing::warn!("front panel: factory reset requested (panel.allow_factory_reset is off: nothing done)");
                }
            }
        }
    }

    /// Validates `text` and makes it the running configuration as a new revision.
    fn apply_config(
        &mut self,
        now: Millis,
        text: &str,
        confirm_secs: Option<u64>,
        comment: &str,
    ) -> anyhow::Result<String> {
        if text.len() > crate::revisions::MAX_CONFIG_BYTES {
            anyhow::bail!("the configuration is larger than 1 MiB");
        }
        let mut new = Config::parse_named(text, "the new configuration")?;
        // Where the data lives is decided at boot, not by a revision.
        new.store.data_dir = self.cfg.store.data_dir.clone();
        let restart = self.apply_live(now, &mut new)?;
        let confirm_by = confirm_secs.map(|s| now.saturating_add(s.saturating_mul(1000)));
        let previous = self.revisions.current().map(|r| r.rev);
        let rev = self.revisions.add(text, now, comment, confirm_by)?;
        self.config_text = text.to_string();
        self.cfg = new;
        self.pending_confirm = match (confirm_by, previous) {
            (Some(by), Some(back)) => Some((rev, by, back)),
            _ => None,
        };
        let mut msg = format!("configuration revision {rev} applied");
        if let Some(s) = confirm_secs {
            msg.push_str(&format!(
                "; it rolls back in {s} s unless `outpostctl config confirm`"
            ));
        }
        if !restart.is_empty() {
            msg.push_str(&format!(
                "; takes effect at the next restart: {}",
                restart.join(", ")
            ));
        }
        tracing::info!(rev, "{msg}");
        Ok(msg)
    }

    /// Re-applies revision `rev` as a new revision.
    fn rollback_to(&mut self, now: Millis, rev: u32, comment: &str) -> anyhow::Result<String> {
        let text = self.revisions.text(rev)?;
        let pending = self.pending_confirm.take();
        let msg = self.apply_config(now, &text, None, comment)?;
        if let Some((p, _, _)) = pending {
            self.revisions.mark_rolled_back(p)?;
        }
        Ok(msg)
    }

    /// Applies what can change while running; returns the sections that need a restart.
    fn apply_live(&mut self, now: Millis, new: &mut Config) -> anyhow::Result<Vec<String>> {
        let old = &self.cfg;
        // Every key is live or waits for a restart (crate::reload::KEYS); what waits keeps
        // its running value until then.
        let (kept, restart) = crate::reload::hold_back(old, new)?;
        *new = kept;
        let (oc, nc) = (&old.firewall.connections, &new.firewall.connections);
        if oc != nc {
            // The daemon's caps and deadlines apply to new connections now (the kernel's
            // caps were held back above: they are set when the table is installed).
            self.transports.set_conn_limits(nc.limits());
        }
        // New hosts are looked up now, in the background: their trunks are Down until
        // they resolve. Hosts kept keep their addresses.
        self.dns.set_hosts(&new.dns, &trunk_hosts(new));
        self.time.set_config(&new.time, &new.dns);
        let (trunks, _) = core_trunks(new, &self.dns, &mut self.transports);
        // The firewall's trunk addresses follow the new trunks (and, as their hosts
        // resolve, `follow_dns`).
        let site =
            new.firewall_surroundings_with(|t| self.dns.targets(&t.host, t.transport_kind()));
        self.guard.set_trunks(&new.firewall, &site);
        self.transports.set_trusted(self.guard.trusted_networks());
        let mut e = self.endpoint_cfg.clone();
        e.ivr = ivr_menus(new);
        e.groups = pbx_config::ring_groups(&new.ring_group);
        e.paging = pbx_config::paging_groups(&new.paging);
        e.features = pbx_config::features(&new.features);
        e.dialplan = pbx_config::dialplan(&new.route, &new.inbound, &new.dialplan);
        e.trunks = trunks;
        e.ring_timeout_ms = new.calls.ring_timeout_secs.saturating_mul(1000);
        e.auth_algorithms = new.auth.parsed_algorithms();
        e.user_agent = new.sip.user_agent.clone();
        if let Some(vm) = e.voicemail.as_mut() {
            vm.max_ms = new.voicemail.max_secs.saturating_mul(1000);
            vm.access_number = new.voicemail.access_number.clone();
        }
        if e.media.is_some() {
            e.recording = recording_settings(new);
        }
        self.endpoint.reconfigure(now, &e);
        self.endpoint_cfg = e;
        self.guard
            .set_policy(&new.firewall, &new.dialplan.emergency);
        // The management zone applies live: the kernel's sets and the metrics endpoint's
        // own check follow `[management] networks` (the ports follow `ssh` and `metrics`,
        // which change at a restart).
        let zone = new.management_zone();
        if zone != old.management_zone() {
            self.guard.set_management(zone);
            self.management_tx
                .send_replace(new.management.networks.clone());
        }
        crate::system::apply_hostname(&new.system);
        Ok(restart)
    }

    /// Serves one admin command; the reply goes back on `reply`.
    fn admin(&mut self, cmd: Command, reply: oneshot::Sender<Reply>) {
        tracing::info!(command = cmd.name(), "admin command");
        if let Command::Backup(b) = cmd {
            // Runs off the loop; the reply is sent when it is done.
            let ctx = crate::admin::backup::context(&self.cfg, self.store.clone());
            crate::admin::backup::execute(&self.backups, ctx, self.clock.now(), b, reply);
            return;
        }
        if let Command::Update(u) = cmd {
            // Writes and checks bundles of hundreds of MiB: off the loop.
            let paths = updates::Paths::new(&self.cfg.store.data_dir);
            self.updates.execute(paths, u, reply);
            return;
        }
        if let Command::Log(query) = cmd {
            // Reading megabytes of log files runs off the loop too.
            crate::admin::log::execute(&self.cfg, query, reply);
            return;
        }
        if let Command::Admin(admin) = cmd {
            // Argon2id runs off the loop; a refused web login comes back for the guard.
            let banned = match &admin {
                crate::console::api::AdminCommand::Login {
                    source: Some(src), ..
                } => self.guard.is_banned(self.clock.now(), *src),
                _ => false,
            };
            let failures = self.login_failures.clone();
            crate::admin::console::spawn(self.store.clone(), banned, admin, failures, reply);
            return;
        }
        if matches!(cmd, Command::System | Command::SbomRead { .. }) {
            // Reads files (an SBOM of megabytes) off the loop.
            let known = facts::Known {
                hostname: crate::system::hostname(&self.cfg.system),
                uptime_secs: self.clock.start.elapsed().as_secs(),
                time: self.time.status(),
                data_dir: self.cfg.store.data_dir.clone(),
            };
            facts::execute(cmd, known, reply);
            return;
        }
        let now = self.clock.now();
        let result = match cmd {
            Command::Metrics => Ok(Reply::Metrics(self.metrics())),
            // A configuration change re-plumbs the whole daemon.
            Command::Config(c) => {
                tokio::task::block_in_place(|| crate::admin::config::execute(self, now, c))
            }
            // Phones (and every provisioning fetch): the store, the call core, the firewall.
            Command::Phone(p) => tokio::task::block_in_place(|| {
                crate::admin::phone::execute(
                    crate::admin::phone::PhoneCtx {
                        now,
                        cfg: &self.cfg,
                        realm: &self.endpoint_cfg.realm,
                        store: &self.store,
                        endpoint: &mut self.endpoint,
                        guard: &mut self.guard,
                    },
                    p,
                )
            }),
            cmd => crate::admin::control::Control {
                now,
                uptime_secs: self.clock.start.elapsed().as_secs(),
                listen: &self.listen,
                cfg: &self.cfg,
                realm: &self.endpoint_cfg.realm,
                store: &self.store,
                endpoint: &mut self.endpoint,
                relay: self.relay.as_ref(),
                guard: &mut self.guard,
                transports: &self.transports,
                time: self.time.status(),
            }
            .execute(cmd),
        };
        let answer = match result {
            Ok(r) => r,
            Err(err) => Reply::error(format!("{err:#}")),
        };
        let _ = reply.send(answer);
    }
}

impl crate::admin::config::Reconfigure for Daemon {
    fn revisions(&self) -> &crate::revisions::Revisions {
        &self.revisions
    }

    fn running_text(&self) -> &str {
        &self.config_text
    }

    fn awaiting_confirmation(&self) -> Option<u32> {
        self.pending_confirm.map(|(rev, _, _)| rev)
    }

    fn confirm(&mut self) -> anyhow::Result<Option<u32>> {
        let confirmed = self.revisions.confirm()?;
        if confirmed.is_some() {
            self.pending_confirm = None;
        }
        Ok(confirmed)
    }

    fn apply(
        &mut self,
        now: Millis,
        text: &str,
        confirm_secs: Option<u64>,
        comment: &str,
    ) -> anyhow::Result<String> {
        self.apply_config(now, text, confirm_secs, comment)
    }

    fn rollback_to(&mut self, now: Millis, rev: u32, comment: &str) -> anyhow::Result<String> {
        Daemon::rollback_to(self, now, rev, comment)
    }
}

/// The next event from the relay; pending forever when media is not anchored.
async fn next_media_event(rx: &mut Option<mpsc::Receiver<MediaEvent>>) -> Option<MediaEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A random password for demo extensions: 16 characters without look-alikes.
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..16)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

/// Where the configuration comes from when `--config` is not given.
pub fn default_config_path() -> Option<PathBuf> {
    let p = PathBuf::from("/etc/outpost/outpost.toml");
    p.exists().then_some(p)
}

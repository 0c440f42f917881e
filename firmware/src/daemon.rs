//! The daemon: one task owns the call core, the store and the transports, and serves admin
//! commands between batches of SIP messages.
//!
//! Each turn of the loop handles a batch of inbound messages (and due timers), commits what
//! the core asks to persist in one write transaction (group commit), and only then sends the
//! responses. So a REGISTER that got its 200 OK is on disk, whatever happens next.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use firewall::detect::Rule;
use pbx_core::endpoint::{
    pin_hash, Endpoint, EndpointConfig, Event, Forwarding, IvrMenu, MailboxMessage, MediaSettings,
    VoicemailSettings,
};
use pbx_core::lockout::TrustedSource;
use pbx_core::media::session::MediaEvent;
use pbx_core::sip::auth::{DigestChoice, NonceConfig, StoredSecret};
use pbx_core::sip::transaction::TimerConfig;
use pbx_core::Millis;
use rand::Rng;
use tokio::sync::{mpsc, oneshot};

use crate::admin::proto::{
    validate_ext, validate_name, validate_password, CallInfo, CallMediaInfo, Command,
    ExtensionDetail, ExtensionInfo, RegistrationInfo, Reply, StatusInfo,
};
use crate::admin::server::{self, AdminRequest};
use crate::config::Config;
use crate::driver::{Inbound, Transports};
use crate::guard::Guard;
use crate::media::relay::{self, Relay, RelayConfig};
use crate::pbx_config;
use crate::store::{Batch, ExtensionRecord, Store, VoicemailRecord};
use crate::update::bootenv::{BootEnv, LastOutcome, Outcome};
use pbx_core::sip::wire;

/// What the initramfs tells userland about this boot (a copy of boot.env, plus the slot).
pub const BOOT_INFO: &str = "/run/outpost-boot";
/// Meta key holding the `last=rolled-back ...` line already alerted.
const ROLLBACK_ALERTED_KEY: &str = "update_rollback_alerted";
/// Inbound messages handled per turn before timers, admin commands and the commit get a go.
const BATCH: usize = 512;
/// Depth of the inbound queue between the socket readers and the core.
const INBOUND_QUEUE: usize = 8192;
/// Most CDRs returned by one listing.
const MAX_CDR_LIST: usize = 10_000;
/// How often the box's addresses are read again (a new DHCP lease is followed this fast).
const HOST_CHECK_MS: Millis = 2_000;
/// How often trunks whose address did not resolve at start are resolved again.
const TRUNK_RETRY_MS: Millis = 30_000;

/// A clock in [`Millis`] that never steps backwards: wall time at start plus monotonic time.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: Instant,
    wall_start: Millis,
}

impl Clock {
    fn new() -> Self {
        let wall_start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Clock {
            start: Instant::now(),
            wall_start,
        }
    }

    fn now(&self) -> Millis {
        self.wall_start + u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX / 2)
    }

    fn instant_at(&self, t: Millis) -> tokio::time::Instant {
        let offset = Duration::from_millis(t.saturating_sub(self.wall_start));
        tokio::time::Instant::from_std(self.start + offset)
    }
}

/// The running daemon's state.
#[derive(Debug)]
struct Daemon {
    cfg: Config,
    clock: Clock,
    endpoint: Endpoint,
    store: std::sync::Arc<Store>,
    /// Pipelined group commit (see [`Committer`]).
    commits: Committer,
    transports: Transports,
    listen: Vec<String>,
    commit_failures: u64,
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
    /// The latest status, for the front panel.
    panel_tx: tokio::sync::watch::Sender<board::panel::PanelStatus>,
    /// When the snapshots are refreshed next.
    next_snapshot: Millis,
    /// The newest good backup's creation time, and when the backup directory is read next.
    newest_backup: (Option<Millis>, Millis),
    /// Backups: admin commands, the schedule, uploads.
    backups: crate::backup::Backups,
    /// The box's primary addresses as last read, and when they are read next.
    host: (crate::netif::HostAddrs, Millis),
    /// Trunks left out at start because their address did not resolve, and when
    /// resolving is tried again.
    trunk_retry: Option<Millis>,
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

    let (trunks, unresolved) = core_trunks(&cfg, &mut transports);
    for (name, err) in &unresolved {
        fallbacks.fell_back(
            &format!("trunk {name:?}"),
            err.clone(),
            "the trunk left out until its address resolves (tried again every 30 s)",
        );
    }
    let endpoint_cfg = EndpointConfig {
        realm: cfg.sip.realm.clone(),
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
        ivr: ivr_menus(&cfg),
        groups: pbx_config::ring_groups(&cfg.ring_group),
        features: pbx_config::features(&cfg.features),
        dialplan: pbx_config::dialplan(&cfg.route, &cfg.inbound, &cfg.dialplan),
        trunks: trunks.clone(),
    };
    let mut endpoint_cfg = endpoint_cfg;
    let mut relay = None;
    let mut media_rx = None;
    if let Some(mut r) = start_relay(&mut cfg, &mut fallbacks) {
        let addrs = cfg.media.effective_addrs(&cfg.sip.listen);
        media_rx = r.events();
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
    let guard = Guard::start(&cfg, &store, clock.now());
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
    let (panel_tx, panel_rx) = tokio::sync::watch::channel(board::panel::PanelStatus::default());
    let pending_confirm = revisions.current().and_then(|r| {
        let by = r.confirm_by?;
        let back = revisions.previous_applied(r.rev)?.rev;
        Some((r.rev, by, back))
    });
    let _ = &mut revisions;
    let mut daemon = Daemon {
        endpoint_cfg: kept_endpoint_cfg,
        revisions,
        config_text,
        pending_confirm,
        beats,
        metrics_tx,
        panel_tx,
        next_snapshot: 0,
        newest_backup: (None, 0),
        backups: crate::backup::Backups::new(),
        host: (host, 0),
        trunk_retry: (!unresolved.is_empty()).then_some(0),
        guard,
        endpoint,
        clock,
        store,
        commits,
        transports,
        listen,
        commit_failures: 0,
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
    let _watchdog = match daemon.cfg.watchdog.device.clone() {
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
    if let Some(addr) = daemon.cfg.metrics.listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                tracing::info!(%addr, "metrics endpoint: GET /metrics");
                tokio::spawn(crate::metrics::serve(listener, metrics_rx));
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
    let listener = server::bind(&daemon.cfg.admin.socket).with_context(|| {
        format!(
            "cannot create the admin socket {}",
            daemon.cfg.admin.socket.display()
        )
    })?;
    tokio::spawn(async move {
        if let Err(err) = server::run(listener, admin_tx).await {
            tracing::error!(%err, "admin socket failed");
        }
    });

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
        let next = [daemon.endpoint.poll_timeout(), daemon.guard.poll_timeout()]
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
            Some(ip) = crate::ssh::next_failure(&mut ssh_failures) => {
                let now = daemon.clock.now();
                daemon.guard.ssh_failure(now, ip);
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
    // Finish what is queued for the disk before exiting.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while daemon.commits.in_flight.is_some() {
        match tokio::time::timeout_at(deadline, commit_done.recv()).await {
            Ok(Some((seq, ok))) => daemon.committed(seq, ok),
            _ => break,
        }
    }
    let _ = std::fs::remove_file(&daemon.cfg.admin.socket);
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

    /// Trunks left out at start are resolved again every 30 s; once all resolve, the call
    /// core gets them (they register and ping as usual).
    fn retry_trunks(&mut self, now: Millis) {
        let Some(due) = self.trunk_retry else { return };
        if now < due {
            return;
        }
        let (trunks, unresolved) = core_trunks(&self.cfg, &mut self.transports);
        if let Some((name, err)) = unresolved.first() {
            tracing::debug!(trunk = %name, %err, "trunk address still does not resolve");
            self.trunk_retry = Some(now.saturating_add(TRUNK_RETRY_MS));
            if trunks.len() <= self.endpoint_cfg.trunks.len() {
                return;
            }
        } else {
            self.trunk_retry = None;
        }
        tracing::info!(
            trunks = trunks.len(),
            "trunk addresses resolved: trunks started"
        );
        let mut e = self.endpoint_cfg.clone();
        e.trunks = trunks;
        self.endpoint.reconfigure(now, &e);
        self.endpoint_cfg = e;
    }

    /// Loads extensions and registrations from the store.
    fn load(&mut self) -> anyhow::Result<()> {
        let now = self.clock.now();
        for rec in self.store.ext_list()? {
            if rec.realm != self.cfg.sip.realm {
                tracing::warn!(
                    ext = %rec.ext,
                    "extension was created for realm {:?}, configured realm is {:?}: reset its password with `outpostctl ext passwd {}`",
                    rec.realm, self.cfg.sip.realm, rec.ext
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

    /// Fills in, for `fw bans`, which sources each account lock does not apply to.
    fn describe_locks(&self, now: Millis, reply: Reply) -> Reply {
        let Reply::FwBans(mut info) = reply else {
            return reply;
        };
        for lock in &mut info.locks {
            if lock.rule == Rule::TollFraud.as_str() {
                continue;
            }
            let except = self.endpoint.trusted_sources(now, &lock.user);
            lock.blocks = describe_blocked(&except);
            lock.except = except.iter().map(ToString::to_string).collect();
        }
        Reply::FwBans(info)
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
            self.put_extension(&ext, Some(format!("Demo {ext}")), &password)?;
            println!("demo extension {ext}: password {password}");
        }
        Ok(())
    }

    /// Tells the call core a mailbox's counts (it notifies subscribed phones).
    fn refresh_mailbox(&mut self, now: Millis, mailbox: &str) {
        match self.store.vm_list(Some(mailbox)) {
            Ok(list) => {
                let msgs = list
                    .into_iter()
                    .map(|m| MailboxMessage {
                        id: m.id,
                        path: m.path,
                        new: m.new,
                    })
                    .collect();
                self.endpoint.set_mailbox(now, mailbox, msgs);
            }
            Err(err) => tracing::error!(%err, "cannot read the voicemail index"),
        }
    }

    fn put_extension(
        &mut self,
        ext: &str,
        name: Option<String>,
        password: &str,
    ) -> anyhow::Result<()> {
        let realm = self.cfg.sip.realm.clone();
        let rec = ExtensionRecord {
            ext: ext.to_string(),
            name,
            secret: StoredSecret::new(ext, &realm, password),
            realm,
            created_ms: self.clock.now(),
        };
        self.store.ext_put(&rec)?;
        self.endpoint.set_user(ext, rec.secret);
        Ok(())
    }

    fn inbound(&mut self, now: Millis, msg: Inbound) {
        match msg {
            Inbound::Message { peer, bytes } => {
                if wire::is_keepalive(&bytes) {
                    if !self.guard.is_banned(now, peer.addr.ip()) {
                        self.endpoint.handle(now, peer, &bytes);
                    }
                    return;
                }
                // One parse serves the firewall and the call core.
                let parsed = wire::parse(&bytes);
                let from_trunk = self.endpoint.is_trunk_source(peer);
                if self.guard.inspect(now, peer, &bytes, &parsed, from_trunk) {
                    self.endpoint.handle_parsed(now, peer, &bytes, parsed);
                }
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

    /// Persists what the core produced, then sends.
    fn flush(&mut self) {
        let now = self.clock.now();
        let mut batch = Batch::default();
        let mut mailboxes: Vec<String> = Vec::new();
        while let Some(event) = self.endpoint.poll_event() {
            if matches!(
                event,
                Event::AuthFailed { .. } | Event::AuthSucceeded { .. }
            ) {
                self.guard.feedback(now, &event);
            }
            match event {
                Event::Bindings(changes) => batch.bindings.extend(changes),
                Event::CallEnded(cdr) => {
                    tracing::info!(
                        caller = %cdr.caller, callee = %cdr.callee,
                        disposition = ?cdr.disposition, billsec = cdr.billsec(),
                        "call ended"
                    );
                    batch.cdrs.push(cdr);
                }
                Event::Media(cmd) => {
                    self.guard.media(&cmd);
                    if let Some(relay) = &self.relay {
                        relay.command(cmd);
                    }
                }
                Event::AuthSucceeded { .. } => {}
                Event::VoicemailHeard { id } => match self.store.vm_mark_heard(id) {
                    Ok(Some(mailbox)) => mailboxes.push(mailbox),
                    Ok(None) => {}
                    Err(err) => tracing::error!(%err, "cannot update the voicemail index"),
                },
                Event::VoicemailDeleted { id } => match self.store.vm_delete(id) {
                    Ok(Some(msg)) => {
                        let _ = std::fs::remove_file(&msg.path);
                        mailboxes.push(msg.mailbox);
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
                    batch.voicemail.push(VoicemailRecord {
                        id: 0,
                        mailbox,
                        caller,
                        at,
                        duration_ms,
                        path,
                        new: true,
                    });
                }
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
        self.apply_locks(now);
        while let Some(user) = self.guard.poll_unlock() {
            self.endpoint.unlock_user(&user);
        }
        while let Some(notice) = self.guard.poll_conn_notice() {
            self.transports.conn_notice(notice);
        }
        self.guard.save_toll_locks(&self.store);
        self.guard.take_writes(&mut batch);
        mailboxes.sort();
        mailboxes.dedup();
        for mailbox in mailboxes {
            self.refresh_mailbox(now, &mailbox);
        }
        // Group commit: what the core wants persisted joins the next commit, and every
        // message produced from now on waits for that commit, so nothing is acknowledged
        // before it is on disk. While one commit is being synced the next batch gathers,
        // so under load one fsync covers many requests and the loop never waits for disk.
        self.commits.pending.append(batch);
        let barrier = if !self.commits.pending.is_empty() {
            Some(self.commits.next_seq)
        } else {
            self.commits.in_flight
        };
        while let Some(t) = self.endpoint.poll_transmit() {
            match barrier {
                Some(seq) => self.commits.held.push_back((seq, t)),
                None => self.transports.send(t.dest, t.bytes),
            }
        }
        self.commits.dispatch();
    }

    /// A commit finished: release what waited for it and start the next one.
    fn committed(&mut self, seq: u64, ok: bool) {
        if !ok {
            self.commit_failures += 1;
        }
        let now = self.clock.now();
        let mailboxes = std::mem::take(&mut self.commits.in_flight_mailboxes);
        self.commits.in_flight = None;
        while self.commits.held.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, t)) = self.commits.held.pop_front() {
                self.transports.send(t.dest, t.bytes);
            }
        }
        for mailbox in mailboxes {
            self.refresh_mailbox(now, &mailbox);
        }
        self.commits.dispatch();
    }

    /// Once a second: the enforcer's heartbeat, the snapshots for the metrics endpoint and
    /// the front panel, and a pending revision's deadline.
    fn tick(&mut self, now: Millis) {
        // Reports whose wake-up was lost to a full inbound queue.
        self.conn_report(now);
        self.follow_addresses(now);
        self.retry_trunks(now);
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
        let panel = self.panel_status(now, &metrics);
        self.metrics_tx.send_replace(metrics);
        self.panel_tx.send_replace(panel);
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

    fn metrics(&mut self) -> crate::metrics::Metrics {
        let c = self.endpoint.counters().clone();
        let trunks = self.endpoint.trunk_status();
        // Cheap: no store write, no waiting for the enforcer thread (this runs every second
        // on the SIP loop).
        let fw = self.guard.counters();
        let relay = self.relay.as_ref().map(Relay::counters);
        let kernel = fw.kernel;
        crate::metrics::Metrics {
            uptime_secs: self.clock.start.elapsed().as_secs(),
            extensions: self.endpoint.user_count() as u64,
            registrations: self.endpoint.registrar().count() as u64,
            calls_active: self.endpoint.active_calls() as u64,
            calls_started: c.calls_started,
            calls_answered: c.calls_answered,
            sip_received: c.received,
            sip_malformed: c.malformed,
            auth_failures: c.auth_failures,
            trunks: trunks.len() as u64,
            trunks_up: trunks
                .iter()
                .filter(|t| t.health == pbx_core::trunk::Health::Up)
                .count() as u64,
            survival: u64::from(self.endpoint.survival()),
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
            process_resident_memory_bytes: crate::metrics::resident_memory_bytes(),
            process_open_fds: crate::metrics::open_fds(),
        }
    }

    /// What the front panel shows.
    fn panel_status(&self, now: Millis, m: &crate::metrics::Metrics) -> board::panel::PanelStatus {
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
            .listen
            .iter()
            .find_map(|l| l.strip_prefix("udp:").map(str::to_string))
            .unwrap_or_default();
        board::panel::PanelStatus {
            hostname: crate::system::hostname(&self.cfg.system),
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
            network: board::panel::NetworkInfo::default(),
            last_backup_age_secs: self
                .newest_backup
                .0
                .map(|created| now.saturating_sub(created) / 1000),
        }
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
                let reply = self.guard.admin(
                    now,
                    crate::admin::proto::FwCommand::Unban { addr: addr.clone() },
                    &self.store,
                );
                tracing::info!(%addr, ?reply, "front panel: unban");
            }
            PanelAction::SetNetwork(setting) => {
                // The image's init reads this at boot (static address or DHCP).
                let text = match &setting {
                    board::panel::NetworkSetting::Dhcp => "mode = \"dhcp\"\n".to_string(),
                    board::panel::NetworkSetting::Static { address, gateway, dns } => format!(
                        "mode = \"static\"\naddress = {address:?}\ngateway = {gateway:?}\ndns = {dns:?}\n"
                    ),
                };
                let path = self.cfg.store.data_dir.join("network.toml");
                match std::fs::write(&path, text) {
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
    fn apply_live(&mut self, now: Millis, new: &mut Config) -> anyhow::Result<Vec<&'static str>> {
        let old = &self.cfg;
        let mut restart = Vec::new();
        macro_rules! needs_restart {
            ($($field:ident).+, $name:expr) => {
                if old.$($field).+ != new.$($field).+ {
                    restart.push($name);
                    // What runs keeps the old value until the restart.
                    new.$($field).+ = old.$($field).+.clone();
                }
            };
        }
        needs_restart!(sip.listen, "sip.listen");
        needs_restart!(sip.realm, "sip.realm");
        needs_restart!(registrar, "registrar");
        needs_restart!(media, "media");
        needs_restart!(admin, "admin");
        needs_restart!(tls, "tls");
        needs_restart!(log, "log");
        needs_restart!(metrics, "metrics");
        needs_restart!(watchdog, "watchdog");
        needs_restart!(panel, "panel");
        needs_restart!(ssh, "ssh");
        needs_restart!(auth.nonce_lifetime_secs, "auth.nonce_lifetime_secs");
        needs_restart!(voicemail.enabled, "voicemail.enabled");
        needs_restart!(firewall.detect, "firewall.detect");
        needs_restart!(firewall.enforce, "firewall.enforce");
        needs_restart!(firewall.monitor, "firewall.monitor");
        needs_restart!(firewall.feeds, "firewall.feeds");
        needs_restart!(firewall.table, "firewall.table");
        needs_restart!(firewall.rtp_closed, "firewall.rtp_closed");
        let (oc, nc) = (&old.firewall.connections, &new.firewall.connections);
        if oc != nc {
            // The daemon's caps and deadlines apply to new connections now; the kernel's
            // caps (twice these) are set when the table is installed.
            self.transports.set_conn_limits(nc.limits());
            if (oc.kernel, oc.per_source, oc.per_source_authenticated)
                != (nc.kernel, nc.per_source, nc.per_source_authenticated)
            {
                restart.push("firewall.connections (the kernel's connection caps)");
            }
        }
        let (trunks, unresolved) = core_trunks(new, &mut self.transports);
        if let Some((name, err)) = unresolved.first() {
            anyhow::bail!("trunk {name}: {err}");
        }
        if old
            .trunk
            .iter()
            .map(|t| t.resolve().ok())
            .collect::<Vec<_>>()
            != new
                .trunk
                .iter()
                .map(|t| t.resolve().ok())
                .collect::<Vec<_>>()
        {
            // The firewall's trunk allow list is built at start.
            restart.push("trunk addresses (firewall allow list)");
        }
        let mut e = self.endpoint_cfg.clone();
        e.ivr = ivr_menus(new);
        e.groups = pbx_config::ring_groups(&new.ring_group);
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
        self.endpoint.reconfigure(now, &e);
        self.endpoint_cfg = e;
        self.guard.set_policy(new);
        crate::system::apply_hostname(&new.system);
        Ok(restart)
    }

    fn config_command(
        &mut self,
        now: Millis,
        cmd: crate::admin::proto::ConfigCommand,
    ) -> anyhow::Result<Reply> {
        use crate::admin::proto::ConfigCommand;
        Ok(match cmd {
            ConfigCommand::Show { rev: None } => Reply::ConfigText {
                rev: self.revisions.current().map_or(0, |r| r.rev),
                text: self.config_text.clone(),
            },
            ConfigCommand::Show { rev: Some(rev) } => Reply::ConfigText {
                rev,
                text: self.revisions.text(rev)?,
            },
            ConfigCommand::List => Reply::ConfigRevisions(self.revisions.list().to_vec()),
            ConfigCommand::Apply {
                text,
                confirm_secs,
                comment,
            } => {
                if confirm_secs.is_some_and(|s| !(10..=3600).contains(&s)) {
                    anyhow::bail!("--confirm must be between 10 and 3600 seconds");
                }
                let confirm = confirm_secs;
                if let Some((rev, _, _)) = self.pending_confirm {
                    anyhow::bail!("revision {rev} is waiting for confirmation: `config confirm` or `config rollback` first");
                }
                let comment = comment.unwrap_or_else(|| "outpostctl config apply".to_string());
                Reply::done(self.apply_config(now, &text, confirm, &comment)?)
            }
            ConfigCommand::Confirm => match self.revisions.confirm()? {
                Some(rev) => {
                    self.pending_confirm = None;
                    Reply::done(format!("revision {rev} confirmed"))
                }
                None => Reply::done("nothing waits for confirmation"),
            },
            ConfigCommand::Rollback { rev } => {
                let current = self.revisions.current().map_or(0, |r| r.rev);
                let target = match rev {
                    Some(r) => r,
                    None => self
                        .revisions
                        .previous_applied(current)
                        .map(|r| r.rev)
                        .ok_or_else(|| anyhow::anyhow!("there is no earlier revision"))?,
                };
                let msg = self.rollback_to(now, target, &format!("rollback to {target}"))?;
                Reply::done(msg)
            }
            ConfigCommand::Diff { from, to } => {
                let current = self.revisions.current().map_or(0, |r| r.rev);
                let to = to.unwrap_or(current);
                let from = match from {
                    Some(f) => f,
                    None => self
                        .revisions
                        .list()
                        .iter()
                        .rev()
                        .map(|r| r.rev)
                        .find(|r| *r < to)
                        .ok_or_else(|| anyhow::anyhow!("there is no earlier revision"))?,
                };
                let text = crate::revisions::diff(
                    &self.revisions.text(from)?,
                    &self.revisions.text(to)?,
                    &format!("revision {from}"),
                    &format!("revision {to}"),
                );
                Reply::ConfigText { rev: 0, text }
            }
        })
    }

    /// `ext show`: what is in force for one extension (the PIN only as set or not).
    fn extension_detail(&self, ext: &str, now: Millis) -> anyhow::Result<ExtensionDetail> {
        let Some(rec) = self.store.ext_get(ext)? else {
            anyhow::bail!("extension {ext} does not exist");
        };
        let caller_id = self
            .store
            .meta_get(&format!("cid:{ext}"))?
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .filter(|n| !n.is_empty());
        let vm_pin_set = self
            .store
            .meta_get(&format!("vm_pin:{ext}"))?
            .is_some_and(|h| !h.is_empty());
        let digest = self
            .store
            .meta_get(&format!("digest:{ext}"))?
            .and_then(|v| String::from_utf8_lossy(&v).parse::<DigestChoice>().ok())
            .unwrap_or_default();
        Ok(ExtensionDetail {
            digest: digest.as_str().to_string(),
            forwarding: self.endpoint.forwarding(ext).cloned().unwrap_or_default(),
            caller_id,
            vm_pin_set,
            registrations: self
                .endpoint
                .registrar()
                .lookup(ext, now)
                .into_iter()
                .map(|b| RegistrationInfo::of(b, now))
                .collect(),
            ext: rec.ext,
            name: rec.name,
        })
    }

    fn admin(&mut self, cmd: Command, reply: oneshot::Sender<Reply>) {
        tracing::info!(command = cmd.name(), "admin command");
        if let Command::Backup(b) = cmd {
            // Runs off the loop; the reply is sent when it is done.
            let ctx = crate::admin::backup::context(&self.cfg, self.store.clone());
            crate::admin::backup::execute(&self.backups, ctx, self.clock.now(), b, reply);
            return;
        }
        let answer = match self.execute(cmd) {
            Ok(r) => r,
            Err(err) => Reply::error(format!("{err:#}")),
        };
        let _ = reply.send(answer);
    }

    fn execute(&mut self, cmd: Command) -> anyhow::Result<Reply> {
        let now = self.clock.now();
        Ok(match cmd {
            Command::Status => Reply::Status(StatusInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
                uptime_secs: self.clock.start.elapsed().as_secs(),
                listen: self.listen.clone(),
                extensions: self.endpoint.user_count(),
                registrations: self
                    .endpoint
                    .registrar()
                    .all()
                    .iter()
                    .filter(|b| b.expires_at > now)
                    .count(),
                active_calls: self.endpoint.calls().len(),
                cdrs: self.store.cdr_count()?,
                data_dir: self.cfg.store.data_dir.display().to_string(),
                realm: self.cfg.sip.realm.clone(),
                trunks: self.endpoint.trunk_status().len(),
                trunks_up: self
                    .endpoint
                    .trunk_status()
                    .iter()
                    .filter(|t| t.health == pbx_core::trunk::Health::Up)
                    .count(),
                survival: self.endpoint.survival(),
                last_backup_age_secs: crate::backup::last_backup_age_secs(
                    &self.cfg.backup,
                    &self.cfg.store.data_dir,
                    now,
                ),
                store_schema: self.store.schema_version(),
                hostname: crate::system::hostname(&self.cfg.system),
                last_restore: crate::backup::last_restore(&self.cfg.store.data_dir),
            }),
            Command::ExtList => {
                let exts = self.store.ext_list()?;
                Reply::Extensions(
                    exts.into_iter()
                        .map(|r| ExtensionInfo {
                            registered: self.endpoint.registrar().lookup(&r.ext, now).len(),
                            ext: r.ext,
                            name: r.name,
                        })
                        .collect(),
                )
            }
            Command::ExtShow { ext } => Reply::Extension(self.extension_detail(&ext, now)?),
            Command::ExtAdd {
                ext,
                name,
                password,
            } => {
                check(validate_ext(&ext))?;
                check(validate_password(&ext, &password))?;
                if let Some(n) = &name {
                    check(validate_name(n))?;
                }
                if self.endpoint.has_user(&ext) {
                    anyhow::bail!(
                        "extension {ext} already exists (use `ext passwd` to change its password)"
                    );
                }
                self.put_extension(&ext, name, &password)?;
                Reply::done(format!("extension {ext} created"))
            }
            Command::ExtDel { ext } => {
                if !self.store.ext_del(&ext)? {
                    anyhow::bail!("extension {ext} does not exist");
                }
                let _ = self.endpoint.remove_user(&ext);
                self.endpoint.set_forwarding(&ext, Forwarding::default());
                self.store.meta_put(&format!("fwd:{ext}"), b"{}")?;
                self.store.meta_put(&format!("cid:{ext}"), b"")?;
                self.store.meta_put(&format!("digest:{ext}"), b"default")?;
                self.endpoint.set_caller_id(&ext, None);
                Reply::done(format!("extension {ext} deleted"))
            }
            Command::ExtDigest { ext, digest } => {
                if !self.endpoint.has_user(&ext) {
                    anyhow::bail!("extension {ext} does not exist");
                }
                let choice: DigestChoice =
                    digest.parse().map_err(|e: String| anyhow::anyhow!(e))?;
                self.store
                    .meta_put(&format!("digest:{ext}"), choice.as_str().as_bytes())?;
                self.endpoint.set_user_digest(&ext, choice);
                Reply::done(describe_digest(&ext, choice))
            }
            Command::ExtForward { ext, forwarding } => {
                if !self.endpoint.has_user(&ext) {
                    anyhow::bail!("extension {ext} does not exist");
                }
                for (what, target) in [
                    ("always", &forwarding.always),
                    ("busy", &forwarding.busy),
                    ("no-answer", &forwarding.no_answer),
                ] {
                    if let Some(t) = target {
                        if !pbx_config::is_dial_string(t) && validate_ext(t).is_err() {
                            anyhow::bail!("forward {what}: {t:?} is not a number");
                        }
                        if t == &ext {
                            anyhow::bail!("forward {what}: an extension cannot forward to itself");
                        }
                    }
                }
                if forwarding.no_answer_ms > 600_000 {
                    anyhow::bail!("no-answer time must be at most 600 s");
                }
                let json = serde_json::to_vec(&forwarding)?;
                self.store.meta_put(&format!("fwd:{ext}"), &json)?;
                let text = describe_forwarding(&forwarding);
                self.endpoint.set_forwarding(&ext, forwarding);
                Reply::done(format!("extension {ext}: {text}"))
            }
            Command::Trunks => Reply::Trunks(self.endpoint.trunk_status()),
            Command::Metrics => Reply::Metrics(self.metrics()),
            Command::Config(c) => tokio::task::block_in_place(|| self.config_command(now, c))?,
            Command::ExtCallerId { ext, number } => {
                if !self.endpoint.has_user(&ext) {
                    anyhow::bail!("extension {ext} does not exist");
                }
                if let Some(n) = &number {
                    if !pbx_config::is_dial_string(n) {
                        anyhow::bail!("{n:?} is not a number");
                    }
                }
                let stored = number.clone().unwrap_or_default();
                self.store
                    .meta_put(&format!("cid:{ext}"), stored.as_bytes())?;
                let text = match &number {
                    Some(n) => format!("extension {ext} calls out as {n}"),
                    None => {
                        format!("extension {ext} calls out with the route's or trunk's caller-ID")
                    }
                };
                self.endpoint.set_caller_id(&ext, number);
                Reply::done(text)
            }
            Command::ExtPasswd { ext, password } => {
                check(validate_password(&ext, &password))?;
                let Some(rec) = self.store.ext_get(&ext)? else {
                    anyhow::bail!("extension {ext} does not exist");
                };
                self.put_extension(&ext, rec.name, &password)?;
                Reply::done(format!("password of extension {ext} changed"))
            }
            Command::ExtImport { rows } => {
                for (i, row) in rows.iter().enumerate() {
                    let line = i + 1;
                    validate_ext(&row.ext).map_err(|e| anyhow::anyhow!("row {line}: {e}"))?;
                    validate_password(&row.ext, &row.password)
                        .map_err(|e| anyhow::anyhow!("row {line}: {e}"))?;
                    if let Some(n) = &row.name {
                        validate_name(n).map_err(|e| anyhow::anyhow!("row {line}: {e}"))?;
                    }
                }
                let realm = self.cfg.sip.realm.clone();
                let recs: Vec<ExtensionRecord> = rows
                    .iter()
                    .map(|row| ExtensionRecord {
                        ext: row.ext.clone(),
                        name: row.name.clone(),
                        secret: StoredSecret::new(&row.ext, &realm, &row.password),
                        realm: realm.clone(),
                        created_ms: now,
                    })
                    .collect();
                tokio::task::block_in_place(|| self.store.ext_put_many(&recs))?;
                for rec in recs {
                    self.endpoint.set_user(&rec.ext, rec.secret);
                }
                Reply::done(format!("{} extensions imported", rows.len()))
            }
            Command::RegList => Reply::Registrations(
                self.endpoint
                    .registrar()
                    .all()
                    .into_iter()
                    .filter(|b| b.expires_at > now)
                    .map(|b| RegistrationInfo::of(b, now))
                    .collect(),
            ),
            Command::Calls => Reply::Calls(
                self.endpoint
                    .calls()
                    .into_iter()
                    .map(|c| CallInfo {
                        media: c.media_session.and_then(|session| {
                            let (a, b) = self.relay.as_ref()?.stats(session)?;
                            let (ca, cb) = c.codecs?;
                            Some(CallMediaInfo {
                                codec_a: ca.name().to_string(),
                                codec_b: cb.name().to_string(),
                                a,
                                b,
                            })
                        }),
                        duration_secs: now.saturating_sub(c.answer.unwrap_or(c.start)) / 1000,
                        state: if c.answered { "answered" } else { "ringing" }.to_string(),
                        call_id: c.call_id,
                        caller: c.caller,
                        callee: c.callee,
                        started_ms: c.start,
                        answered_ms: c.answer,
                    })
                    .collect(),
            ),
            Command::VmList { mailbox } => {
                Reply::Voicemail(self.store.vm_list(mailbox.as_deref())?)
            }
            Command::VmPin { ext, pin } => {
                if !self.endpoint.has_user(&ext) {
                    anyhow::bail!("extension {ext} does not exist");
                }
                if !(4..=12).contains(&pin.len()) || !pin.chars().all(|c| c.is_ascii_digit()) {
                    anyhow::bail!("a voicemail PIN is 4 to 12 digits");
                }
                let hash = pin_hash(&ext, &pin);
                self.store
                    .meta_put(&format!("vm_pin:{ext}"), hash.as_bytes())?;
                self.endpoint.set_pin(&ext, Some(hash));
                Reply::done(format!("voicemail PIN of extension {ext} set"))
            }
            Command::VmDel { id } => {
                let Some(msg) = self.store.vm_delete(id)? else {
                    anyhow::bail!("no voicemail message {id}");
                };
                let _ = std::fs::remove_file(&msg.path);
                self.refresh_mailbox(now, &msg.mailbox);
                Reply::done(format!("message {id} of mailbox {} deleted", msg.mailbox))
            }
            Command::Fw(fw) => {
                let mut reply =
                    tokio::task::block_in_place(|| self.guard.admin(now, fw, &self.store));
                if let Reply::FwStatus(st) = &mut reply {
                    st.connections = Some(Box::new(self.transports.conn_stats()));
                }
                self.describe_locks(now, reply)
            }
            Command::Backup(_) => anyhow::bail!("backup commands are handled off the loop"),
            Command::CdrExport {
                from,
                to,
                after,
                limit,
            } => {
                let (cdrs, next) = tokio::task::block_in_place(|| {
                    self.store.cdr_page(
                        from.unwrap_or(0),
                        to.unwrap_or(u64::MAX),
                        after,
                        limit.clamp(1, MAX_CDR_LIST),
                    )
                })?;
                Reply::CdrPage { cdrs, next }
            }
            Command::CdrList { limit } => {
                Reply::Cdrs(self.store.cdr_list(limit.min(MAX_CDR_LIST), 0)?)
            }
            Command::Ssh(ssh) => tokio::task::block_in_place(|| {
                crate::admin::ssh::execute(&self.cfg, &self.store, now, ssh)
            })?,
            Command::Admin(admin) => {
                tokio::task::block_in_place(|| crate::admin::console::execute(&self.store, admin))?
            }
        })
    }
}

/// Writes batches on its own thread, one at a time, and reports each completion.
#[derive(Debug)]
struct Committer {
    jobs: std::sync::mpsc::Sender<(u64, Batch)>,
    /// Writes gathered for the next commit.
    pending: Batch,
    /// Sequence number of the commit being written.
    in_flight: Option<u64>,
    /// Mailboxes whose index changes with the commit in flight.
    in_flight_mailboxes: Vec<String>,
    next_seq: u64,
    /// Messages waiting for the commit of the given sequence number.
    held: std::collections::VecDeque<(u64, pbx_core::sip::transaction::Transmit)>,
}

impl Committer {
    fn start(
        store: std::sync::Arc<Store>,
        done: mpsc::UnboundedSender<(u64, bool)>,
    ) -> anyhow::Result<Committer> {
        let (jobs, rx) = std::sync::mpsc::channel::<(u64, Batch)>();
        std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || {
                while let Ok((seq, batch)) = rx.recv() {
                    let ok = match store.commit(&batch) {
                        Ok(()) => true,
                        Err(err) => {
                            tracing::error!(%err, "store commit failed");
                            false
                        }
                    };
                    if done.send((seq, ok)).is_err() {
                        return;
                    }
                }
            })
            .context("cannot start the store thread")?;
        Ok(Committer {
            jobs,
            pending: Batch::default(),
            in_flight: None,
            in_flight_mailboxes: Vec::new(),
            next_seq: 1,
            held: std::collections::VecDeque::new(),
        })
    }

    /// Starts the next commit if none is running and something is waiting.
    fn dispatch(&mut self) {
        if self.in_flight.is_some() || self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut boxes: Vec<String> = batch.voicemail.iter().map(|m| m.mailbox.clone()).collect();
        boxes.sort();
        boxes.dedup();
        self.in_flight_mailboxes = boxes;
        self.in_flight = Some(seq);
        if self.jobs.send((seq, batch)).is_err() {
            tracing::error!("the store thread stopped");
        }
    }
}

/// The next event from the relay; pending forever when media is not anchored.
async fn next_media_event(rx: &mut Option<mpsc::Receiver<MediaEvent>>) -> Option<MediaEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn check(r: Result<(), String>) -> anyhow::Result<()> {
    r.map_err(|e| anyhow::anyhow!(e))
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

/// What an account lock blocks, for `fw bans`: "all sources except 10.0.0.5, 10.0.0.6".
fn describe_blocked(except: &[TrustedSource]) -> String {
    if except.is_empty() {
        return "all sources".to_string();
    }
    let list: Vec<String> = except.iter().map(ToString::to_string).collect();
    format!("all sources except {}", list.join(", "))
}

/// The answer to `ext digest`.
fn describe_digest(ext: &str, choice: DigestChoice) -> String {
    match choice {
        DigestChoice::Default => {
            format!("extension {ext} uses the global digest algorithms ([auth] algorithms)")
        }
        choice => format!(
            "extension {ext}: its phones are challenged with {} once they have authenticated from their address (the first challenge from a new address offers the global algorithms, so that it tells a stranger nothing about which extensions exist)",
            choice
                .algorithms()
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(" then ")
        ),
    }
}

/// Call forwarding in words, for the admin.
fn describe_forwarding(f: &Forwarding) -> String {
    let mut parts = Vec::new();
    if let Some(t) = &f.always {
        parts.push(format!("always to {t}"));
    }
    if let Some(t) = &f.busy {
        parts.push(format!("when busy to {t}"));
    }
    if let Some(t) = &f.no_answer {
        let secs = f.no_answer_ms / 1000;
        if secs > 0 {
            parts.push(format!("after {secs} s without answer to {t}"));
        } else {
            parts.push(format!("without answer to {t}"));
        }
    }
    if parts.is_empty() {
        "call forwarding off".to_string()
    } else {
        format!("calls forwarded {}", parts.join(", "))
    }
}

/// The call core's trunks of a configuration (host names resolved); TLS trunks tell the
/// transports which name their server's certificate must carry.
/// The call core's trunks of a configuration, and the trunks left out because their
/// address does not resolve now (name, reason): a WAN that is down at boot must not stop
/// the office's local calls.
fn core_trunks(
    cfg: &Config,
    transports: &mut Transports,
) -> (Vec<pbx_core::trunk::TrunkConfig>, Vec<(String, String)>) {
    let mut trunks = Vec::new();
    let mut unresolved = Vec::new();
    for t in &cfg.trunk {
        let core = match t.to_core() {
            Ok(core) => core,
            Err(e) => {
                unresolved.push((t.name.clone(), e.to_string()));
                continue;
            }
        };
        if core.peer.transport == pbx_core::sip::Transport::Tls {
            transports.set_tls_name(core.peer.addr, t.tls_name());
        }
        tracing::info!(trunk = %t.name, peer = %core.peer.addr, transport = core.peer.transport.as_str(), register = t.register, "trunk configured");
        trunks.push(core);
    }
    (trunks, unresolved)
}

/// Binds the SIP transports on `sip.listen`, else on the first fallback that works (see
/// [`crate::fallback`]), then TLS the same way; `cfg` is left holding what runs.
async fn start_transports(
    cfg: &mut Config,
    fallbacks: &mut crate::fallback::Fallbacks,
    in_tx: mpsc::Sender<Inbound>,
) -> anyhow::Result<Transports> {
    let mut failures: Vec<String> = Vec::new();
    let mut bound = None;
    for (label, listen) in fallbacks.candidates(|c| c.sip.listen.clone()) {
        match Transports::bind(&listen, in_tx.clone()).await {
            Ok(t) => {
                if !failures.is_empty() {
                    let running = format!("{label} {}", addr_list(&listen));
                    fallbacks.fell_back("sip.listen", failures.join("; "), &running);
                }
                cfg.sip.listen = listen;
                bound = Some(t);
                break;
            }
            Err(err) => failures.push(format!("cannot listen on {}: {err}", addr_list(&listen))),
        }
    }
    let Some(mut transports) = bound else {
        anyhow::bail!("cannot listen for SIP: {}", failures.join("; "));
    };
    let mut failures: Vec<String> = Vec::new();
    for (label, tls) in fallbacks.candidates(|c| c.tls.clone()) {
        let started = crate::driver::tls::TlsContext::new(&tls, &cfg.store.data_dir)
            .map_err(|e| e.to_string())
            .and_then(|ctx| {
                transports
                    .enable_tls(&tls.listen, ctx)
                    .map_err(|e| format!("cannot listen on {}: {e}", addr_list(&tls.listen)))
            });
        match started {
            Ok(()) => {
                if !failures.is_empty() {
                    let running = if tls.listen.is_empty() {
                        format!("{label} (no TLS listener)")
                    } else {
                        label
                    };
                    fallbacks.fell_back("tls", failures.join("; "), &running);
                }
                cfg.tls = tls;
                return Ok(transports);
            }
            Err(err) => failures.push(err),
        }
    }
    anyhow::bail!("cannot set up TLS: {}", failures.join("; "))
}

/// Starts the relay with `[media]`, else with the first fallback that works, else runs
/// without anchoring media (calls still connect; voicemail and the auto attendant are off)
/// rather than not at all. `cfg.media` is left holding what runs.
fn start_relay(cfg: &mut Config, fallbacks: &mut crate::fallback::Fallbacks) -> Option<Relay> {
    if !cfg.media.enabled {
        return None;
    }
    let mut failures: Vec<String> = Vec::new();
    let mut candidates = fallbacks.candidates(|c| c.media.clone());
    // An address the box no longer has (a moved box, a new DHCP lease) is the usual cause:
    // the same section on every address of the listen families comes first.
    if !cfg.media.addrs.is_empty() {
        let auto = crate::config::MediaConfig {
            addrs: Vec::new(),
            ..cfg.media.clone()
        };
        candidates.insert(1, ("the box's current addresses".to_owned(), auto));
    }
    let prompts = crate::media::PromptStore::load(&cfg.media.prompts_dir);
    for (label, media) in candidates.into_iter().filter(|(_, m)| m.enabled) {
        let addrs = media.effective_addrs(&cfg.sip.listen);
        let started = relay::start_with_prompts(
            RelayConfig {
                addrs: addrs.clone(),
                port_first: media.port_first,
                port_last: media.port_last,
                media_timeout: Duration::from_secs(media.timeout_secs),
            },
            prompts.clone(),
        );
        match started {
            Ok(r) => {
                if !failures.is_empty() {
                    let running = format!(
                        "{label} ({} ports {}-{})",
                        ip_list(&addrs),
                        media.port_first,
                        media.port_last
                    );
                    fallbacks.fell_back("media", failures.join("; "), &running);
                }
                cfg.media = media;
                return Some(r);
            }
            Err(err) => failures.push(format!(
                "RTP relay on {} ports {}-{}: {err}",
                ip_list(&addrs),
                media.port_first,
                media.port_last
            )),
        }
    }
    fallbacks.fell_back(
        "media",
        failures.join("; "),
        "media not anchored (phones send audio to each other; no voicemail or auto attendant)",
    );
    cfg.media.enabled = false;
    None
}

fn addr_list(addrs: &[std::net::SocketAddr]) -> String {
    let v: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    v.join(", ")
}

fn ip_list(addrs: &[std::net::IpAddr]) -> String {
    let v: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    v.join(", ")
}

/// The auto-attendant menus of a configuration.
fn ivr_menus(cfg: &Config) -> Vec<IvrMenu> {
    cfg.ivr
        .iter()
        .map(|m| IvrMenu {
            number: m.number.clone(),
            greeting: m.greeting.clone(),
            options: m
                .options
                .iter()
                .filter_map(|(k, v)| Some((k.chars().next()?, v.clone())))
                .collect(),
            timeout_ms: m.timeout_secs.saturating_mul(1000),
            retries: m.retries,
        })
        .collect()
}

/// Chooses the configuration to run: the boot file as a new revision when there is no
/// revision yet or (unless `factory_default`) it changed since the last start, else the
/// newest applied revision (one still pending at start-up was never confirmed: it is rolled
/// back). A revision that no longer parses gives way to the boot file.
fn select_revision(
    boot: Config,
    boot_text: &str,
    source: &str,
    now: Millis,
    factory_default: bool,
) -> anyhow::Result<(Config, crate::revisions::Revisions, String)> {
    use sha2::{Digest, Sha256};
    let data_dir = boot.store.data_dir.clone();
    let mut revs = crate::revisions::Revisions::open(&data_dir)?;
    let hash_path = data_dir.join("config").join("boot.sha256");
    let hash = hex::encode(Sha256::digest(boot_text.as_bytes()));
    let seen = std::fs::read_to_string(&hash_path).unwrap_or_default();
    let changed = seen.trim() != hash;
    if let (true, true, Some(r)) = (factory_default, changed, revs.current()) {
        // Not recorded as seen: started without the flag, the changed file would win.
        tracing::info!(
            rev = r.rev,
            "{source} differs from the factory default last applied; it is only the factory default (--config-default): the stored revisions win"
        );
    }
    if revs.current().is_none() || (changed && !factory_default) {
        let rev = revs.add(
            boot_text,
            now,
            &format!("boot configuration ({source})"),
            None,
        )?;
        std::fs::write(&hash_path, &hash)
            .with_context(|| format!("cannot write {}", hash_path.display()))?;
        tracing::info!(rev, "configuration revision {rev}: {source}");
        return Ok((boot, revs, boot_text.to_string()));
    }
    let mut current = revs.current().cloned();
    if let Some(r) = current.clone().filter(|r| r.confirm_by.is_some()) {
        if let Some(back) = revs.previous_applied(r.rev).map(|p| p.rev) {
            tracing::warn!(
                rev = r.rev,
                back,
                "revision {} was not confirmed before the restart: rolling back to {back}",
                r.rev
            );
            let text = revs.text(back)?;
            revs.add(
                &text,
                now,
                &format!("rollback to {back}: revision {} not confirmed", r.rev),
                None,
            )?;
            revs.mark_rolled_back(r.rev)?;
            current = revs.current().cloned();
        }
    }
    let Some(current) = current else {
        return Ok((boot, revs, boot_text.to_string()));
    };
    let text = revs.text(current.rev)?;
    match Config::parse_named(&text, &format!("revision {}", current.rev)) {
        Ok(mut cfg) => {
            cfg.store.data_dir = data_dir;
            tracing::info!(
                rev = current.rev,
                "running configuration revision {}",
                current.rev
            );
            Ok((cfg, revs, text))
        }
        Err(err) => {
            tracing::error!(
                "revision {} no longer parses ({err}); running the boot configuration",
                current.rev
            );
            Ok((boot, revs, boot_text.to_string()))
        }
    }
}

/// With `--config-default`, when the boot file cannot be used (`boot_error`): the newest
/// stored revision, so a broken factory default does not stop a configured box. The data
/// directory is `data_dir` if given, else the boot file's `store.data_dir` if that much of
/// it reads, else the default. Fails (naming both problems) when there is no revision or
/// it does not parse either. Returns the configuration, its text and where it came from.
pub fn newest_revision_instead(
    boot_text: Option<&str>,
    boot_error: &anyhow::Error,
    data_dir: Option<&std::path::Path>,
) -> anyhow::Result<(Config, String, String)> {
    let data_dir = data_dir
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| {
            boot_text
                .and_then(|t| toml::from_str::<toml::Table>(t).ok())
                .and_then(|t| {
                    let dir = t.get("store")?.get("data_dir")?.as_str()?.to_owned();
                    Some(PathBuf::from(dir))
                })
                .unwrap_or_else(|| crate::config::StoreConfig::default().data_dir)
        });
    let revs = crate::revisions::Revisions::open(&data_dir)
        .with_context(|| format!("{boot_error:#}; and no stored revision to run instead"))?;
    let Some(current) = revs.current() else {
        anyhow::bail!(
            "{boot_error:#}; and {} holds no configuration revision to run instead",
            data_dir.display()
        );
    };
    let rev = current.rev;
    let text = revs
        .text(rev)
        .with_context(|| format!("{boot_error:#}; and revision {rev} is unreadable"))?;
    let mut cfg = Config::parse_named(&text, &format!("revision {rev}"))
        .with_context(|| format!("{boot_error:#}; and revision {rev} does not parse either"))?;
    cfg.store.data_dir = data_dir;
    Ok((cfg, text, format!("stored configuration revision {rev}")))
}

/// The alert text of a rolled-back update (`last=rolled-back ...` of [`BOOT_INFO`]).
fn rollback_message(last: &LastOutcome) -> String {
    let mut msg = format!(
        "firmware update to {} (build {}) failed and was rolled back at {} (slot {} left)",
        last.release.version,
        last.release.build,
        crate::backup::schedule::rfc3339(last.time.saturating_mul(1000)),
        last.slot
    );
    if !last.reason.is_empty() {
        msg.push_str(": ");
        msg.push_str(&last.reason);
    }
    msg
}

/// The newest `last=` value of a boot info text when it reports a rollback.
fn rolled_back_line(boot_info: &str) -> Option<String> {
    BootEnv::parse(boot_info)
        .get("last")
        .filter(|v| v.starts_with(Outcome::RolledBack.as_str()))
        .map(str::to_owned)
}

/// Largest boot info file read.
const MAX_BOOT_INFO: u64 = 64 * 1024;

/// At start: when `boot_info` (normally [`BOOT_INFO`]) reports an update rolled back that
/// was not alerted before, logs an error and stores an alert (shown by `fw alerts`, lights
/// the panel's alert LED). A missing file (not booted from an image) is silent. Returns
/// whether an alert was raised.
fn alert_failed_update(store: &Store, boot_info: &std::path::Path, now: Millis) -> bool {
    use std::io::Read;
    let mut text = String::new();
    match std::fs::File::open(boot_info) {
        Ok(f) => {
            if let Err(err) = f.take(MAX_BOOT_INFO).read_to_string(&mut text) {
                tracing::warn!(path = %boot_info.display(), %err, "cannot read the boot information");
                return false;
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return false,
        Err(err) => {
            tracing::warn!(path = %boot_info.display(), %err, "cannot read the boot information");
            return false;
        }
    }
    let Some(line) = rolled_back_line(&text) else {
        return false;
    };
    match store.meta_get(ROLLBACK_ALERTED_KEY) {
        Ok(Some(seen)) if seen == line.as_bytes() => return false,
        Ok(_) => {}
        Err(err) => {
            tracing::error!(%err, "cannot read which update rollback was alerted");
        }
    }
    let message = match LastOutcome::parse(&line) {
        Some(last) => rollback_message(&last),
        None => format!("a firmware update failed and was rolled back ({line})"),
    };
    tracing::error!("{message}");
    let alert = firewall::detect::Alert {
        at: now,
        rule: firewall::detect::Rule::Manual,
        addr: None,
        user: None,
        message,
        enforced: true,
    };
    if let Err(err) = store.fw_apply(&[crate::store::FirewallChange::Alert(alert)]) {
        tracing::error!(%err, "cannot store the update alert");
        return false;
    }
    if let Err(err) = store.meta_put(ROLLBACK_ALERTED_KEY, line.as_bytes()) {
        tracing::error!(%err, "cannot record the update alert");
    }
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    const BOOT_INFO_TEXT: &str = "slot=a\nrelease_a=1.0.0 1700000000\nrelease_b=1.1.0 1700100000\nlast=rolled-back b 1.1.0 1700100000 1700200000 health check failed: sip not answering\nbooted=a\ntrial=0\n";

    #[test]
    fn rolled_back_lines_parse() {
        let line = rolled_back_line(BOOT_INFO_TEXT).unwrap();
        assert_eq!(
            line.as_str(),
            "rolled-back b 1.1.0 1700100000 1700200000 health check failed: sip not answering"
        );
        let r = LastOutcome::parse(&line).unwrap();
        assert_eq!(
            r,
            LastOutcome {
                outcome: Outcome::RolledBack,
                slot: crate::update::bootenv::Slot::B,
                release: outpost_bundle::Release {
                    version: "1.1.0".into(),
                    build: 1_700_100_000,
                },
                time: 1_700_200_000,
                reason: "health check failed: sip not answering".into(),
            }
        );
        assert_eq!(
            rollback_message(&r),
            "firmware update to 1.1.0 (build 1700100000) failed and was rolled back at 2023-11-17T05:46:40Z (slot b left): health check failed: sip not answering"
        );
        let bare = LastOutcome::parse("rolled-back a 2.0 5 6").unwrap();
        assert_eq!(bare.reason, "");
        assert!(!rollback_message(&bare).ends_with(": "));
        assert_eq!(LastOutcome::parse("rolled-back b 1.1.0 170"), None);
        assert_eq!(LastOutcome::parse("rolled-back b 1.1.0 170 soon"), None);
        // Other outcomes, and no last= line, are no alert.
        assert_eq!(rolled_back_line("last=committed b 1.1.0 1 2\n"), None);
        assert_eq!(rolled_back_line("last=installed b 1.1.0 1 2\n"), None);
        assert_eq!(rolled_back_line("slot=a\nbooted=a\n"), None);
        assert_eq!(rolled_back_line(""), None);
    }

    #[test]
    fn a_rolled_back_update_is_alerted_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data")).unwrap();
        let info = dir.path().join("outpost-boot");
        assert!(
            !alert_failed_update(&store, &info, 1_000),
            "no file: not an image"
        );
        std::fs::write(&info, "slot=a\nbooted=a\ntrial=0\n").unwrap();
        assert!(!alert_failed_update(&store, &info, 1_000));
        assert_eq!(store.fw_alert_count().unwrap(), 0);

        std::fs::write(&info, BOOT_INFO_TEXT).unwrap();
        assert!(alert_failed_update(&store, &info, 2_000));
        let alerts = store.fw_alerts(10).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            alerts[0].at, 2_000,
            "newer than any acknowledgement: lights the LED"
        );
        assert!(alerts[0]
            .message
            .starts_with("firmware update to 1.1.0 (build 1700100000) failed"));
        // The next start (same boot, or later boots of the same slot) says nothing new.
        assert!(!alert_failed_update(&store, &info, 3_000));
        assert_eq!(store.fw_alert_count().unwrap(), 1);

        // Another failed update is alerted again; a line that does not parse still alerts.
        std::fs::write(&info, "last=rolled-back b 1.2.0\n").unwrap();
        assert!(alert_failed_update(&store, &info, 4_000));
        assert_eq!(
            store.fw_alerts(1).unwrap()[0].message,
            "a firmware update failed and was rolled back (rolled-back b 1.2.0)"
        );
    }

    /// A data directory whose demo configuration runs with `data_dir` inside a temp dir.
    fn boot(dir: &std::path::Path, extra: &str) -> (Config, String) {
        let text = format!(
            "{}\n{extra}",
            Config::demo_text().replace("./outpost-data", &dir.display().to_string())
        );
        let mut cfg = Config::parse_named(&text, "boot").unwrap();
        cfg.store.data_dir = dir.to_owned();
        (cfg, text)
    }

    #[test]
    fn the_boot_file_as_factory_default_seeds_revision_1_only() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, text) = boot(dir.path(), "");
        let (_, revs, run) = select_revision(cfg, &text, "boot", 1, true).unwrap();
        assert_eq!(
            run, text,
            "no revision yet: the factory default is revision 1"
        );
        assert_eq!(revs.current().unwrap().rev, 1);

        // A new firmware brings a different factory default: revision 1 keeps running.
        let (cfg, changed) = boot(dir.path(), "# factory default of a newer image\n");
        let (_, revs, run) = select_revision(cfg.clone(), &changed, "boot", 2, true).unwrap();
        assert_eq!(run, text);
        assert_eq!(revs.list().len(), 1, "nothing added");

        // The admin applied revision 2: it runs, whatever the boot file says.
        let mut revs = revs;
        let applied = format!("{text}# applied by the admin\n");
        revs.add(&applied, 3, "outpostctl config apply", None)
            .unwrap();
        let (_, revs, run) = select_revision(cfg.clone(), &changed, "boot", 4, true).unwrap();
        assert_eq!(run, applied);
        assert_eq!(revs.current().unwrap().rev, 2);

        // Without the flag the changed boot file wins (as before).
        let (_, revs, run) = select_revision(cfg, &changed, "boot", 5, false).unwrap();
        assert_eq!(run, changed);
        assert_eq!(revs.current().unwrap().rev, 3);
    }

    #[test]
    fn a_stored_revision_that_no_longer_parses_gives_way_to_the_boot_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, text) = boot(dir.path(), "");
        drop(select_revision(cfg.clone(), &text, "boot", 1, true).unwrap());
        let mut revs = crate::revisions::Revisions::open(dir.path()).unwrap();
        revs.add(
            "[sip]\nno_such_key = 1\n",
            2,
            "written by newer firmware",
            None,
        )
        .unwrap();
        drop(revs);
        let (_, _, run) = select_revision(cfg, &text, "boot", 3, true).unwrap();
        assert_eq!(run, text);
    }

    #[test]
    fn a_broken_factory_default_runs_the_stored_revision() {
        let dir = tempfile::tempdir().unwrap();
        let broken = format!(
            "[store]\ndata_dir = {:?}\n[sip]\nno_such_key = 1\n",
            dir.path().display().to_string()
        );
        let err = anyhow::anyhow!("boot: unknown field `no_such_key`");
        // No revision yet: nothing to run, the error says why.
        let e = newest_revision_instead(Some(&broken), &err, None).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("no_such_key") && e.contains("no configuration revision"),
            "{e}"
        );

        let (cfg, text) = boot(dir.path(), "");
        drop(select_revision(cfg, &text, "boot", 1, true).unwrap());
        // The data directory is found in the broken file.
        let (cfg, run, source) = newest_revision_instead(Some(&broken), &err, None).unwrap();
        assert_eq!(run, text);
        assert_eq!(cfg.store.data_dir, dir.path());
        assert_eq!(source, "stored configuration revision 1");
        // Unreadable as TOML (or missing): the data directory comes from --data-dir.
        let (_, run, _) =
            newest_revision_instead(Some("[[[ not toml"), &err, Some(dir.path())).unwrap();
        assert_eq!(run, text);
        let (_, run, _) = newest_revision_instead(None, &err, Some(dir.path())).unwrap();
        assert_eq!(run, text);
    }
}

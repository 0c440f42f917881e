//! The enforcer thread: owns the [`Enforcer`] and runs every nft command off the caller's
//! thread, because one nft run blocks for milliseconds (tens for thousands of elements).
//!
//! Inputs arrive through an [`EnforcerHandle`] as requests on a bounded queue: set updates
//! ([`EnforcerHandle::send`], [`EnforcerHandle::send_all`]), a table check
//! ([`EnforcerHandle::verify`]) and counter refreshes. Each round the thread takes the first
//! request and everything else already queued (until [`MAX_OPS_PER_BATCH`] set updates),
//! then, in this order: records the bans the kernel should hold; applies the set updates in
//! runs of at most [`MAX_OPS_PER_BATCH`] (one nft run each); replaces the management zone
//! when a new one is pending ([`EnforcerHandle::set_management`]; the newest wins, and a
//! failed replacement is tried again every round until it succeeds); verifies the table when asked
//! or when a run failed, and restores it with the live bans if it was flushed or altered
//! from outside; refreshes the counters when asked or after a check; wakes the callers
//! waiting for counters. Outputs are the shared [`KernelState`] (read with
//! [`EnforcerHandle::snapshot`], [`EnforcerHandle::counters`] and
//! [`EnforcerHandle::last_round`]) and the log.
//!
//! Batches go to one long-lived `nft -j -i` (see `runner::Session`), not a process each.
//!
//! CPU: on a machine with more than one CPU the thread (and the nft it starts, which
//! inherits its affinity) never runs where the SIP loop does. [`EnforcerHandle::spawn`] is
//! called from the SIP loop's thread; when that thread is pinned to some but not all online
//! CPUs (`taskset -c 0 outpostd`, as the benchmarks run it) the enforcer gets the others;
//! when it is not pinned, the enforcer avoids the CPU the loop is on at start (the kernel
//! may move an unpinned loop later: pin the daemon for a hard guarantee).
//!
//! Bounds: [`QUEUE`] requests waiting (a full queue drops the update and counts it; user
//! space still drops the source) and [`MAX_DESIRED`] remembered bans for a restore.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{
    Counters, Enforcer, ManagementZone, NftConfig, NftError, SetOp, TrunkPeer, MAX_BAN_SECS,
};
use crate::net::canonical;

/// Requests waiting for the enforcer thread.
pub const QUEUE: usize = 65_536;
/// Most set updates in one nft run.
pub const MAX_OPS_PER_BATCH: usize = 20_000;
/// Longest [`EnforcerHandle::snapshot`] waits for fresh counters before using the cached ones.
const COUNTERS_WAIT: Duration = Duration::from_millis(50);
/// Most bans the thread remembers for a restore (twice the detector's default table;
/// beyond it a ban still reaches the kernel but a restore would not bring it back).
pub const MAX_DESIRED: usize = 400_000;

/// A request to the enforcer thread.
#[derive(Debug)]
enum Request {
    /// A set update, batched with everything else queued.
    Op(SetOp),
    /// Many set updates (a feed, an import), applied in runs of at most
    /// [`MAX_OPS_PER_BATCH`].
    Ops(Vec<SetOp>),
    /// Check the table; restore it if it was changed from outside; refresh the counters.
    Verify,
    /// Replace the management zone (networks and ports).
    Management(ManagementZone),
    /// Replace the trunk peers.
    TrunkPeers(Vec<TrunkPeer>),
    /// Refresh the counters, then signal.
    Counters(Sender<()>),
}

/// What the enforcer thread reports (for status pages and the watchdog).
#[derive(Debug, Clone, Default)]
pub struct KernelState {
    /// When the thread last finished a round (for the watchdog).
    pub last_round: Option<Instant>,
    /// Whether the table is installed (as of the last nft run).
    pub installed: bool,
    /// The kernel's counters at the last refresh.
    pub counters: Option<Counters>,
    /// Runs of set updates applied.
    pub batches: u64,
    /// Set updates applied.
    pub ops: u64,
    /// Times the table was found changed from outside and restored.
    pub restores: u64,
    /// nft runs that failed.
    pub failures: u64,
    /// The last nft error, if any.
    pub last_error: Option<String>,
    /// nft processes started to apply set updates (one per session; see `runner::Session`).
    pub nft_batch_processes: u64,
    /// nft processes started in all (the batches', the table's loads, listings).
    pub nft_processes: u64,
    /// The CPUs the thread may run on, when it was pinned away from the SIP loop's.
    pub cpus: Option<Vec<usize>>,
}

/// The caller's side of the enforcer thread. Dropping it ends the thread after its current
/// nft run; the table stays, so the kernel keeps dropping banned sources across a restart.
#[derive(Debug)]
pub struct EnforcerHandle {
    tx: SyncSender<Request>,
    shared: Arc<Mutex<KernelState>>,
    queue_drops: u64,
    /// A management zone the full queue could not take yet.
    pending_management: Option<ManagementZone>,
    /// Trunk peers the full queue could not take yet.
    pending_trunks: Option<Vec<TrunkPeer>>,
}

impl EnforcerHandle {
    /// Starts the thread, which installs the table with `bans` and the authenticated
    /// sources `authed` (address, remaining secs each) in one nft run.
    pub fn spawn(
        cfg: NftConfig,
        bans: Vec<(IpAddr, u64)>,
        authed: Vec<(IpAddr, u64)>,
    ) -> std::io::Result<EnforcerHandle> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let shared = Arc::new(Mutex::new(KernelState::default()));
        let thread_state = Arc::clone(&shared);
        let avoid = sip_loop_cpus();
        std::thread::Builder::new()
            .name("nft-enforcer".into())
            .spawn(move || {
                let cpus = avoid.and_then(|a| keep_off(&a));
                thread_state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .cpus = cpus;
                EnforcerThread::new(cfg, bans, authed, thread_state).run(&rx)
            })?;
        Ok(EnforcerHandle {
            tx,
            shared,
            queue_drops: 0,
            pending_management: None,
            pending_trunks: None,
        })
    }

    /// A handle with no thread behind it whose set updates are read back from the returned
    /// [`SentOps`]: lets the callers' tests see what the kernel would be told.
    pub fn detached(capacity: usize) -> (EnforcerHandle, SentOps) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let handle = EnforcerHandle {
            tx,
            shared: Arc::new(Mutex::new(KernelState::default())),
            queue_drops: 0,
            pending_management: None,
            pending_trunks: None,
        };
        (handle, SentOps(rx))
    }

    /// Queues one set update; a full queue drops it (counted, logged at powers of two).
    pub fn send(&mut self, op: SetOp) {
        if let Err(e) = self.tx.try_send(Request::Op(op)) {
            self.queue_drops += 1;
            if self.queue_drops.is_power_of_two() {
                let why = match e {
                    TrySendError::Full(_) => "queue full",
                    TrySendError::Disconnected(_) => "thread gone",
                };
                tracing::error!(
                    dropped = self.queue_drops,
                    "firewall: kernel set update dropped ({why}); user space still drops"
                );
            }
        }
    }

    /// Queues many set updates as one request (a feed, an import).
    pub fn send_all(&mut self, ops: Vec<SetOp>) {
        if ops.is_empty() {
            return;
        }
        let n = ops.len() as u64;
        if let Err(e) = self.tx.try_send(Request::Ops(ops)) {
            self.queue_drops += n;
            let why = match e {
                TrySendError::Full(_) => "queue full",
                TrySendError::Disconnected(_) => "thread gone",
            };
            tracing::error!(
                dropped = n,
                "firewall: {n} kernel set updates dropped ({why}); user space still drops"
            );
        }
    }

    /// Queues a new management zone (the newest wins). Never lost on a full queue: it is
    /// kept here and queued again with the next [`EnforcerHandle::verify`] (the guard calls
    /// it every few seconds), because a lost change would leave the management ports open
    /// to, or closed for, the wrong networks.
    pub fn set_management(&mut self, zone: ManagementZone) {
        self.pending_management = Some(zone);
        self.flush_management();
    }

    fn flush_management(&mut self) {
        let Some(zone) = self.pending_management.take() else {
            return;
        };
        match self.tx.try_send(Request::Management(zone)) {
            Ok(()) => {}
            Err(TrySendError::Full(Request::Management(zone))) => {
                self.pending_management = Some(zone);
            }
            Err(_) => {
                tracing::error!("firewall: the management zone was not updated (thread gone)");
            }
        }
    }

    /// Queues new trunk peers (the newest wins; kept here like a management zone when the
    /// queue is full, and queued again with the next [`EnforcerHandle::verify`]).
    pub fn set_trunk_peers(&mut self, peers: Vec<TrunkPeer>) {
        self.pending_trunks = Some(peers);
        self.flush_trunks();
    }

    fn flush_trunks(&mut self) {
        let Some(peers) = self.pending_trunks.take() else {
            return;
        };
        match self.tx.try_send(Request::TrunkPeers(peers)) {
            Ok(()) => {}
            Err(TrySendError::Full(Request::TrunkPeers(peers))) => {
                self.pending_trunks = Some(peers);
            }
            Err(_) => {
                tracing::error!("firewall: the trunk peers were not updated (thread gone)");
            }
        }
    }

    /// Asks the thread to check the table (and restore it if it was changed from outside).
    pub fn verify(&mut self) {
        self.flush_management();
        self.flush_trunks();
        let _ = self.tx.try_send(Request::Verify);
    }

    /// Asks the thread to refresh the counters, without waiting for it.
    pub fn refresh_counters(&self) {
        let (tx, _rx) = mpsc::channel();
        let _ = self.tx.try_send(Request::Counters(tx));
    }

    /// The kernel's counters as of the last refresh.
    pub fn counters(&self) -> Option<Counters> {
        self.state().counters
    }

    /// When the thread last finished a round.
    pub fn last_round(&self) -> Option<Instant> {
        self.state().last_round
    }

    /// Set updates dropped because the queue was full or the thread gone.
    pub fn queue_drops(&self) -> u64 {
        self.queue_drops
    }

    /// The thread's state with counters at most ~50 ms old, or the cached ones if it is busy.
    pub fn snapshot(&self) -> KernelState {
        let (done_tx, done_rx) = mpsc::channel();
        if self.tx.try_send(Request::Counters(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(COUNTERS_WAIT);
        }
        self.state().clone()
    }

    /// The thread's state as it is, counters as last read (no waiting).
    pub fn cached(&self) -> KernelState {
        self.state().clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, KernelState> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The set updates sent to a [`EnforcerHandle::detached`] handle.
#[derive(Debug)]
pub struct SentOps(Receiver<Request>);

impl SentOps {
    /// The set updates sent since the last call, in order.
    pub fn drain(&self) -> Vec<SetOp> {
        let mut out = Vec::new();
        for r in self.0.try_iter() {
            match r {
                Request::Op(op) => out.push(op),
                Request::Ops(ops) => out.extend(ops),
                Request::Verify
                | Request::Counters(_)
                | Request::Management(_)
                | Request::TrunkPeers(_) => {}
            }
        }
        out
    }
}

/// One round of work: the requests that were queued together.
#[derive(Debug, Default)]
struct Round {
    ops: Vec<SetOp>,
    management: Option<ManagementZone>,
    trunks: Option<Vec<TrunkPeer>>,
    verify: bool,
    waiters: Vec<Sender<()>>,
}

impl Round {
    /// `first` and whatever else is queued, until [`MAX_OPS_PER_BATCH`] set updates.
    fn gather(first: Request, rx: &Receiver<Request>) -> Round {
        let mut round = Round::default();
        let mut next = Some(first);
        while let Some(r) = next {
            match r {
                Request::Op(op) => round.ops.push(op),
                Request::Ops(many) => round.ops.extend(many),
                Request::Verify => round.verify = true,
                Request::Management(zone) => round.management = Some(zone),
                Request::TrunkPeers(peers) => round.trunks = Some(peers),
                Request::Counters(tx) => round.waiters.push(tx),
            }
            next = if round.ops.len() < MAX_OPS_PER_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        round
    }

    /// The nft runs of this round: one per [`MAX_OPS_PER_BATCH`] updates, and one empty run
    /// when there are none (a verify or a counter refresh still happens).
    fn runs(&self) -> Vec<&[SetOp]> {
        if self.ops.is_empty() {
            vec![&[]]
        } else {
            self.ops.chunks(MAX_OPS_PER_BATCH).collect()
        }
    }
}

/// The thread's own state.
#[derive(Debug)]
struct EnforcerThread {
    cfg: NftConfig,
    enforcer: Option<Enforcer>,
    /// The bans the kernel should hold and when they end: what a restore re-installs.
    desired: HashMap<IpAddr, Instant>,
    shared: Arc<Mutex<KernelState>>,
    last_logged_error: Option<String>,
    /// A management zone not yet in the kernel (its replacement failed or is due).
    pending_management: Option<ManagementZone>,
    /// Trunk peers not yet in the kernel (their replacement failed or is due).
    pending_trunks: Option<Vec<TrunkPeer>>,
    /// The authenticated sources the first install carries, and when each runs out.
    first_authed: Vec<(IpAddr, Instant)>,
}

impl EnforcerThread {
    fn new(
        cfg: NftConfig,
        bans: Vec<(IpAddr, u64)>,
        authed: Vec<(IpAddr, u64)>,
        shared: Arc<Mutex<KernelState>>,
    ) -> Self {
        let now = Instant::now();
        let first_authed = authed
            .into_iter()
            .map(|(a, secs)| (a, now + Duration::from_secs(secs.min(MAX_BAN_SECS))))
            .collect();
        let desired = bans
            .into_iter()
            .map(|(a, secs)| {
                (
                    canonical(a),
                    now + Duration::from_secs(secs.min(MAX_BAN_SECS)),
                )
            })
            .collect();
        EnforcerThread {
            cfg,
            enforcer: None,
            desired,
            shared,
            last_logged_error: None,
            pending_management: None,
            pending_trunks: None,
            first_authed,
        }
    }

    fn run(mut self, rx: &Receiver<Request>) {
        self.install();
        while let Ok(first) = rx.recv() {
            let mut round = Round::gather(first, rx);
            self.track(&round.ops);
            if let Some(zone) = round.management.take() {
                // A (re)install from scratch takes the newest zone too.
                self.cfg.management = zone.clone();
                self.pending_management = Some(zone);
            }
            if let Some(peers) = round.trunks.take() {
                self.cfg.trunk_peers.clone_from(&peers);
                self.pending_trunks = Some(peers);
            }
            if self.enforcer.is_none() {
                if round.verify {
                    self.install();
                }
            } else {
                let runs = round.runs();
                let last = runs.len() - 1;
                let counters = !round.waiters.is_empty();
                for (i, run) in runs.into_iter().enumerate() {
                    if i == last {
                        self.apply_management();
                        self.apply_trunks();
                    }
                    self.apply(run, round.verify && i == last, counters && i == last);
                }
            }
            for w in round.waiters {
                let _ = w.send(());
            }
            let mut s = self.state();
            s.last_round = Some(Instant::now());
            s.nft_processes = super::runner::processes_started();
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, KernelState> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the bans the kernel should hold, whatever happens to this batch.
    fn track(&mut self, ops: &[SetOp]) {
        let now = Instant::now();
        for op in ops {
            match *op {
                SetOp::Ban { addr, timeout_secs } => {
                    let until = now + Duration::from_secs(timeout_secs.min(MAX_BAN_SECS));
                    let addr = canonical(addr);
                    if self.desired.len() >= MAX_DESIRED && !self.desired.contains_key(&addr) {
                        self.desired.retain(|_, u| *u > now);
                        if self.desired.len() >= MAX_DESIRED {
                            continue;
                        }
                    }
                    self.desired.insert(addr, until);
                }
                SetOp::Unban(addr) => {
                    self.desired.remove(&canonical(addr));
                }
                _ => {}
            }
        }
    }

    fn apply(&mut self, ops: &[SetOp], mut verify: bool, counters: bool) {
        let Some(e) = self.enforcer.as_mut() else {
            return;
        };
        let mut failed = false;
        if !ops.is_empty() {
            let result = e.apply(ops);
            let processes = e.batch_processes();
            self.state().nft_batch_processes = processes;
            match result {
                Ok(()) => {
                    let mut s = self.state();
                    s.batches += 1;
                    s.ops += ops.len() as u64;
                }
                Err(err) => {
                    self.failure("applying set updates", &err);
                    failed = true;
                    verify = true;
                }
            }
        }
        if verify {
            self.verify_and_restore();
            if failed {
                // The bans came back with the restore; the other updates are re-sent.
                let rest: Vec<SetOp> = ops
                    .iter()
                    .filter(|o| !matches!(o, SetOp::Ban { .. } | SetOp::Unban(_)))
                    .copied()
                    .collect();
                if let Some(e) = self.enforcer.as_mut() {
                    if !rest.is_empty() {
                        if let Err(err) = e.apply(&rest) {
                            self.failure("re-applying set updates", &err);
                        }
                    }
                }
            }
        }
        if verify || counters {
            self.refresh_counters();
        }
    }

    /// Puts the pending management zone into the kernel; kept pending on failure.
    fn apply_management(&mut self) {
        let Some(zone) = self.pending_management.take() else {
            return;
        };
        let Some(e) = self.enforcer.as_mut() else {
            self.pending_management = Some(zone);
            return;
        };
        match e.set_management(&zone) {
            Ok(()) => tracing::info!(
                networks = zone.networks.len(),
                ports = ?zone.ports,
                "firewall: management zone updated"
            ),
            Err(err) => {
                self.failure("updating the management zone", &err);
                self.pending_management = Some(zone);
            }
        }
    }

    /// Puts the pending trunk peers into the kernel; kept pending on failure.
    fn apply_trunks(&mut self) {
        let Some(peers) = self.pending_trunks.take() else {
            return;
        };
        let Some(e) = self.enforcer.as_mut() else {
            self.pending_trunks = Some(peers);
            return;
        };
        match e.set_trunk_peers(&peers) {
            Ok(()) => tracing::info!(entries = peers.len(), "firewall: trunk peers updated"),
            Err(err) => {
                self.failure("updating the trunk peers", &err);
                self.pending_trunks = Some(peers);
            }
        }
    }

    fn verify_and_restore(&mut self) {
        let now = Instant::now();
        self.desired.retain(|_, until| *until > now);
        let Some(e) = self.enforcer.as_mut() else {
            return;
        };
        match e.verify() {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    table = %e.config().table,
                    "firewall: the nftables table was changed from outside; restoring it"
                );
                let bans = remaining(&self.desired, now);
                match e.restore(&bans) {
                    Ok(()) => {
                        let mut s = self.state();
                        s.restores += 1;
                        s.installed = true;
                    }
                    Err(err) => self.failure("restoring the table", &err),
                }
            }
            Err(err) => self.failure("verifying the table", &err),
        }
    }

    fn refresh_counters(&mut self) {
        let Some(e) = self.enforcer.as_ref() else {
            return;
        };
        match e.counters() {
            Ok(c) => self.state().counters = Some(c),
            Err(err) => self.failure("reading the counters", &err),
        }
    }

    fn install(&mut self) {
        let now = Instant::now();
        self.desired.retain(|_, until| *until > now);
        let bans = remaining(&self.desired, now);
        // Until the first install succeeds; later ones follow the set updates.
        let authed: Vec<(IpAddr, u64)> = self
            .first_authed
            .iter()
            .map(|(a, until)| (*a, until.saturating_duration_since(now).as_secs()))
            .filter(|(_, secs)| *secs > 0)
            .collect();
        let result = Enforcer::install_with(self.cfg.clone(), &bans, &authed);
        match result {
            Ok(e) => {
                tracing::info!(
                    table = %self.cfg.table, bans = self.desired.len(),
                    "firewall: nftables table installed"
                );
                // Installed with the newest zone (`self.cfg.management`).
                self.pending_management = None;
                self.first_authed.clear();
                self.enforcer = Some(e);
                self.last_logged_error = None;
                let mut s = self.state();
                s.installed = true;
                s.last_error = None;
            }
            Err(err) => self.failure("installing the table", &err),
        }
    }

    /// Records a failed nft run; logs it unless it is the same error as last time.
    fn failure(&mut self, what: &str, err: &NftError) {
        let text = format!("{what}: {err}");
        if self.last_logged_error.as_deref() != Some(text.as_str()) {
            tracing::error!("firewall: nftables {text}");
            self.last_logged_error = Some(text.clone());
        }
        let installed = self.enforcer.is_some();
        let mut s = self.state();
        s.failures += 1;
        s.last_error = Some(text);
        if !installed {
            s.installed = false;
        }
    }
}

/// The CPUs the calling thread (the SIP loop) runs on, as the enforcer must avoid them:
/// its whole affinity when that is some but not all online CPUs, else the CPU it is on now.
/// `None` on a single-CPU machine, or when the kernel does not say.
fn sip_loop_cpus() -> Option<Vec<usize>> {
    use nix::sched::{sched_getaffinity, sched_getcpu};
    use nix::unistd::{sysconf, Pid, SysconfVar};
    let online = sysconf(SysconfVar::_NPROCESSORS_ONLN).ok().flatten()?;
    let online = usize::try_from(online).ok()?;
    let mask = sched_getaffinity(Pid::from_raw(0)).ok()?;
    let pinned: Vec<usize> = (0..online)
        .filter(|&c| mask.is_set(c).unwrap_or(false))
        .collect();
    let current = sched_getcpu().ok();
    cpus_to_avoid(online, &pinned, current)
}

/// Which CPUs to keep the enforcer off (see [`sip_loop_cpus`]): pure, for the tests.
fn cpus_to_avoid(online: usize, pinned: &[usize], current: Option<usize>) -> Option<Vec<usize>> {
    if online < 2 {
        return None;
    }
    if !pinned.is_empty() && pinned.len() < online {
        return Some(pinned.to_vec());
    }
    current.filter(|&c| c < online).map(|c| vec![c])
}

/// Pins the calling thread to every online CPU but `avoid`; returns the CPUs it may use,
/// or `None` (logged) when none is left or the kernel refuses (a cpuset, say).
fn keep_off(avoid: &[usize]) -> Option<Vec<usize>> {
    use nix::sched::{sched_setaffinity, CpuSet};
    use nix::unistd::{sysconf, Pid, SysconfVar};
    let online = sysconf(SysconfVar::_NPROCESSORS_ONLN).ok().flatten()?;
    let online = usize::try_from(online).ok()?.min(CpuSet::count());
    let allowed: Vec<usize> = (0..online).filter(|c| !avoid.contains(c)).collect();
    if allowed.is_empty() {
        return None;
    }
    let mut set = CpuSet::new();
    for &c in &allowed {
        set.set(c).ok()?;
    }
    match sched_setaffinity(Pid::from_raw(0), &set) {
        Ok(()) => {
            tracing::info!(cpus = ?allowed, sip_loop = ?avoid, "firewall: enforcer pinned off the SIP loop's CPU");
            Some(allowed)
        }
        Err(e) => {
            tracing::warn!("firewall: the enforcer cannot be pinned off CPUs {avoid:?}: {e}");
            None
        }
    }
}

/// The live bans with their remaining seconds (at least 1).
fn remaining(desired: &HashMap<IpAddr, Instant>, now: Instant) -> Vec<(IpAddr, u64)> {
    desired
        .iter()
        .filter(|(_, until)| **until > now)
        .map(|(a, until)| (*a, until.duration_since(now).as_secs().max(1)))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ban(a: &str, timeout_secs: u64) -> SetOp {
        SetOp::Ban {
            addr: ip(a),
            timeout_secs,
        }
    }

    #[test]
    fn a_round_takes_everything_queued_up_to_the_batch_limit() {
        let (tx, rx) = mpsc::sync_channel(16);
        let (done, _wait) = mpsc::channel();
        tx.send(Request::Verify).unwrap();
        tx.send(Request::Ops(vec![ban("192.0.2.2", 60); 3]))
            .unwrap();
        tx.send(Request::Counters(done)).unwrap();
        let round = Round::gather(Request::Op(ban("192.0.2.1", 60)), &rx);
        assert_eq!(round.ops.len(), 4);
        assert_eq!(round.ops[0], ban("192.0.2.1", 60));
        assert!(round.verify);
        assert_eq!(round.waiters.len(), 1);
        assert_eq!(round.runs().len(), 1);

        // A feed larger than one run is split into runs; what comes after waits for the
        // next round.
        tx.send(Request::Verify).unwrap();
        let big = Round::gather(
            Request::Ops(vec![ban("192.0.2.3", 60); MAX_OPS_PER_BATCH + 5]),
            &rx,
        );
        assert!(!big.verify, "the verify stays queued");
        let runs = big.runs();
        assert_eq!(
            runs.iter().map(|r| r.len()).collect::<Vec<_>>(),
            [MAX_OPS_PER_BATCH, 5]
        );
        assert!(matches!(rx.try_recv(), Ok(Request::Verify)));

        // A verify alone is one empty run.
        let (_tx, rx) = mpsc::sync_channel(1);
        let round = Round::gather(Request::Verify, &rx);
        assert_eq!(round.runs(), [&[] as &[SetOp]]);
    }

    #[test]
    fn bans_are_remembered_for_a_restore_until_unbanned_or_over() {
        let shared = Arc::new(Mutex::new(KernelState::default()));
        let mut t = EnforcerThread::new(
            NftConfig::default(),
            vec![(ip("::ffff:198.51.100.1"), 600)],
            Vec::new(),
            shared,
        );
        assert!(t.desired.contains_key(&ip("198.51.100.1")), "canonical");
        t.track(&[
            ban("203.0.113.9", 3_600),
            ban("2001:db8::1", u64::MAX),
            SetOp::Unban(ip("::ffff:198.51.100.1")),
            SetOp::RtpOpen {
                addr: ip("203.0.113.9"),
                port: 10_000,
            },
        ]);
        let now = Instant::now();
        let mut live = remaining(&t.desired, now);
        live.sort();
        assert_eq!(live.len(), 2, "{live:?}");
        assert_eq!(live[0].0, ip("203.0.113.9"));
        assert!((3_598..=3_600).contains(&live[0].1), "{live:?}");
        assert!(live[1].1 <= MAX_BAN_SECS, "capped at a year");

        // An ended ban is not restored; one in its last second counts as 1 s.
        let mut desired = HashMap::new();
        desired.insert(ip("192.0.2.1"), now);
        desired.insert(ip("192.0.2.2"), now + Duration::from_millis(300));
        assert_eq!(remaining(&desired, now), [(ip("192.0.2.2"), 1)]);
    }

    #[test]
    fn a_missing_nft_is_reported_and_nothing_is_installed() {
        let cfg = NftConfig {
            nft: "/nonexistent/outpost-test-nft".into(),
            ..NftConfig::default()
        };
        let mut h = EnforcerHandle::spawn(cfg, Vec::new(), Vec::new()).unwrap();
        h.send(ban("203.0.113.9", 60));
        h.verify();
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.last_round().is_none() {
            assert!(
                Instant::now() < deadline,
                "the thread did not finish a round"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let s = h.snapshot();
        assert!(!s.installed);
        assert!(s.failures >= 1, "{s:?}");
        assert!(s.last_error.unwrap().starts_with("installing the table"));
        assert_eq!((s.batches, s.ops), (0, 0));
        assert_eq!(h.queue_drops(), 0);
    }

    #[test]
    fn the_enforcer_avoids_the_sip_loops_cpus() {
        // A loop pinned to CPU 0 of 2: the enforcer gets CPU 1; unpinned: the loop's CPU.
        assert_eq!(cpus_to_avoid(2, &[0], Some(0)), Some(vec![0]));
        assert_eq!(cpus_to_avoid(4, &[0, 1, 2, 3], Some(2)), Some(vec![2]));
        assert_eq!(
            cpus_to_avoid(1, &[0], Some(0)),
            None,
            "one CPU: nothing to do"
        );
        assert_eq!(cpus_to_avoid(4, &[0, 1, 2, 3], None), None);

        // For real, on a machine with two CPUs or more: spawned from a thread pinned to
        // CPU 0, the enforcer thread may run anywhere but there.
        let online = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
            .unwrap()
            .unwrap();
        if online < 2 {
            return;
        }
        let h = std::thread::spawn(|| {
            let mut zero = nix::sched::CpuSet::new();
            zero.set(0).unwrap();
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &zero).unwrap();
            let cfg = NftConfig {
                nft: "/nonexistent/outpost-test-nft".into(),
                ..NftConfig::default()
            };
            EnforcerHandle::spawn(cfg, Vec::new(), Vec::new()).unwrap()
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.last_round().is_none() && h.state().cpus.is_none() {
            assert!(Instant::now() < deadline, "the thread did not start");
            std::thread::sleep(Duration::from_millis(2));
        }
        let cpus = h.state().cpus.clone().expect("pinned");
        assert!(!cpus.is_empty() && !cpus.contains(&0), "{cpus:?}");
    }

    #[test]
    fn a_detached_handle_hands_back_what_was_sent() {
        let (mut h, sent) = EnforcerHandle::detached(2);
        h.send(ban("203.0.113.9", 60));
        h.verify();
        h.send_all(vec![SetOp::Unban(ip("203.0.113.9"))]);
        h.send(ban("203.0.113.10", 60));
        assert_eq!(h.queue_drops(), 2, "the queue holds two requests");
        assert_eq!(sent.drain(), [ban("203.0.113.9", 60)]);
        assert!(sent.drain().is_empty());
    }
}

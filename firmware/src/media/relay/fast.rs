//! The in-kernel fast path (`[media] kernel_fast_path`): which calls the kernel forwards,
//! and the thread that tells it.
//!
//! A call qualifies while both legs are present and latched on IPv4 through a concrete
//! relay address, neither is SRTP, nothing plays to or records either leg, and both use the
//! same codec, payload type and telephone-event type (nothing to rewrite). The table's
//! `sync_fast` (each tick and after every command batch) compares what qualifies with what
//! the kernel has: a call that qualifies gets its two directions (see
//! [`firewall::nft::fastpath`]); one that no longer does (hold music, a prompt, a recording,
//! a re-latch, a re-INVITE) is taken back, and so is every call at its end. The kernel
//! thread ([`FastWorker`]) applies the changes, reads the per-direction counters every
//! second (the relay adds them to the legs' counters and counts them as media for the
//! timeout and as the latched source speaking) and refreshes the elements' expiry. A
//! direction's last counts are read just before its elements are deleted, so a closed
//! call's final `Stats` wait for that read (at most [`CLOSE_WAIT`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use firewall::nft::fastpath::{Direction, DirectionCount, FastPath, MAX_FAST_DIRECTIONS};
use pbx_core::media::session::{Leg, LegStats, SessionId};

use super::leg::LegState;

/// How long a closed call's final stats wait for the kernel's last counts.
pub(super) const CLOSE_WAIT: Duration = Duration::from_secs(3);
/// How often the kernel thread reads the counters while anything is in the kernel.
const COUNT_EVERY: Duration = Duration::from_secs(1);
/// Element lifetime without a refresh: what a crashed daemon leaves forwarding at most.
pub(super) const ELEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// IPv4 and UDP headers: the kernel counts IP bytes, the relay counts RTP bytes.
const IP_UDP_HEADERS: u64 = 28;

/// What one direction's counts are credited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FastOwner {
    /// A live call in table slot `slot`; `from` is the sending leg.
    Live { slot: u32, from: Leg },
    /// A closed call whose final stats wait for this direction's last counts.
    Closing { session: SessionId, from: Leg },
}

/// A closed call waiting for the last kernel counts of its directions.
#[derive(Debug, Clone, Copy)]
pub(super) struct Closing {
    pub(super) stats: [LegStats; 2],
    pub(super) waiting: u8,
    pub(super) since: Instant,
}

/// Changes for the kernel thread.
#[derive(Debug, Default)]
pub(super) struct FastJob {
    pub(super) add: Vec<Direction>,
    pub(super) delete: Vec<Direction>,
}

/// What the kernel thread reports.
#[derive(Debug, Default)]
pub(super) struct FastReport {
    /// Current counters, by direction id.
    pub(super) counts: Vec<(u16, DirectionCount)>,
    /// Directions no longer in the kernel (deleted, or expired); their counts above are final.
    pub(super) released: Vec<u16>,
    /// The kernel refused an update: the fast path is off from now on (why).
    pub(super) disabled: Option<String>,
}

/// The relay table's fast-path state.
#[derive(Debug)]
pub(super) struct Fast {
    /// Relay addresses by `via` number.
    addrs: Vec<IpAddr>,
    free: Vec<u16>,
    pub(super) owners: HashMap<u16, (FastOwner, DirectionCount)>,
    pub(super) closing: HashMap<SessionId, Closing>,
    pub(super) job: FastJob,
    /// Why the fast path stopped, if it did.
    pub(super) disabled: Option<String>,
}

impl Fast {
    /// Fast-path state for a relay bound on `addrs`.
    pub(super) fn new(addrs: Vec<IpAddr>) -> Self {
        Fast {
            addrs,
            // Popped from the end: ids are handed out from 1 upwards.
            free: (1..=MAX_FAST_DIRECTIONS).rev().collect(),
            owners: HashMap::new(),
            closing: HashMap::new(),
            job: FastJob::default(),
            disabled: None,
        }
    }

    /// The two directions (A→B, B→A; ids 0) that the legs qualify for, if they do.
    pub(super) fn wanted(&self, legs: &[LegState; 2]) -> Option<[Direction; 2]> {
        if self.disabled.is_some() {
            return None;
        }
        let [a, b] = legs;
        for leg in legs {
            if leg.media.is_absent()
                || leg.srtp.is_some()
                || leg.player.is_some()
                || leg.recorder.is_some()
                || leg.mix.is_some()
                || !leg.out.is_passthrough()
            {
                return None;
            }
        }
        if (a.media.codec, a.media.pt, a.media.dtmf_pt)
            != (b.media.codec, b.media.pt, b.media.dtmf_pt)
        {
            return None;
        }
        let side = |leg: &LegState| -> Option<(SocketAddrV4, SocketAddrV4)> {
            let SocketAddr::V4(phone) = leg.rtp.addr()? else {
                return None;
            };
            let IpAddr::V4(ip) = *self.addrs.get(leg.rtp.via())? else {
                return None;
            };
            if ip.is_unspecified() {
                return None;
            }
            Some((phone, SocketAddrV4::new(ip, leg.media.local_port)))
        };
        let (a_phone, a_box) = side(a)?;
        let (b_phone, b_box) = side(b)?;
        Some([
            Direction {
                id: 0,
                from: a_phone,
                box_port: a_box.port(),
                to: b_phone,
                via: b_box,
            },
            Direction {
                id: 0,
                from: b_phone,
                box_port: b_box.port(),
                to: a_phone,
                via: a_box,
            },
        ])
    }

    /// Two free ids, if there are.
    pub(super) fn take_ids(&mut self) -> Option<[u16; 2]> {
        if self.free.len() < 2 {
            return None;
        }
        Some([self.free.pop()?, self.free.pop()?])
    }

    /// Frees `id` (the kernel no longer has it).
    pub(super) fn free_id(&mut self, id: u16) {
        if self.owners.remove(&id).is_some() {
            self.free.push(id);
        }
    }

    /// Takes the changes queued for the kernel, if any.
    pub(super) fn take_job(&mut self) -> Option<FastJob> {
        if self.job.add.is_empty() && self.job.delete.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut self.job))
    }
}

/// Whether two sets of directions forward the same packets (ids aside).
pub(super) fn same_paths(a: &[Direction; 2], b: &[Direction; 2]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (x.from, x.box_port, x.to, x.via) == (y.from, y.box_port, y.to, y.via))
}

/// Credits the growth of a direction's counters (since `seen`) to the sending leg's input
/// and the receiving leg's output; returns the packets added.
pub(super) fn credit(
    seen: &mut DirectionCount,
    now: DirectionCount,
    from: &mut LegStats,
    to: &mut LegStats,
) -> u64 {
    let packets = now.packets.saturating_sub(seen.packets);
    let bytes = now
        .bytes
        .saturating_sub(seen.bytes)
        .saturating_sub(packets * IP_UDP_HEADERS);
    *seen = now;
    from.packets_in += packets;
    from.bytes_in += bytes;
    to.packets_out += packets;
    to.bytes_out += bytes;
    packets
}

/// The kernel thread: applies jobs, reads counters, refreshes expiries.
#[derive(Debug)]
pub(super) struct FastWorker {
    jobs: Option<mpsc::Sender<FastJob>>,
    thread: Option<JoinHandle<()>>,
}

impl FastWorker {
    /// Starts the thread around an installed fast path; `report` hands its reports to the
    /// relay thread. The table is removed when the worker is dropped.
    pub(super) fn start(
        fp: FastPath,
        report: impl Fn(FastReport) + Send + 'static,
    ) -> std::io::Result<FastWorker> {
        let (jobs, rx) = mpsc::channel::<FastJob>();
        let thread = std::thread::Builder::new()
            .name("rtp-kernel".into())
            .spawn(move || run(fp, &rx, &report))?;
        Ok(FastWorker {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Queues a job; never blocks.
    pub(super) fn submit(&self, job: FastJob) {
        if let Some(tx) = &self.jobs {
            // A closed channel means the thread stopped (fast path disabled): nothing to do.
            let _ = tx.send(job);
        }
    }
}

impl Drop for FastWorker {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("RTP relay: the kernel fast-path thread panicked");
            }
        }
    }
}

fn run(mut fp: FastPath, rx: &mpsc::Receiver<FastJob>, report: &dyn Fn(FastReport)) {
    let mut installed: HashMap<u16, Direction> = HashMap::new();
    let mut last: HashMap<u16, DirectionCount> = HashMap::new();
    let mut next_count = Instant::now() + COUNT_EVERY;
    let mut next_refresh = Instant::now() + ELEMENT_TIMEOUT / 3;
    let fail = |fp: FastPath, why: String| {
        tracing::error!("RTP relay: kernel fast path off: {why}");
        if let Err(e) = fp.remove() {
            tracing::error!("RTP relay: cannot remove the fast-path table: {e}");
        }
        report(FastReport {
            disabled: Some(why),
            ..FastReport::default()
        });
    };
    loop {
        let wait = next_count
            .min(next_refresh)
            .saturating_duration_since(Instant::now());
        let mut job = match rx.recv_timeout(wait) {
            Ok(job) => Some(job),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        // Coalesce what queued meanwhile into one transaction.
        while let Ok(more) = rx.try_recv() {
            let j = job.get_or_insert_with(FastJob::default);
            j.add.extend(more.add);
            j.delete.extend(more.delete);
        }
        let mut out = FastReport::default();
        if let Some(job) = job {
            // A direction added and deleted in the same batch never reaches the kernel.
            let (mut add, mut delete) = (job.add, job.delete);
            let dropped: Vec<u16> = delete
                .iter()
                .filter(|d| add.iter().any(|a| a.id == d.id))
                .map(|d| d.id)
                .collect();
            add.retain(|a| !dropped.contains(&a.id));
            delete.retain(|d| !dropped.contains(&d.id));
            out.released.extend(&dropped);
            if !delete.is_empty() {
                match fp.counts() {
                    Ok(counts) => {
                        for d in &delete {
                            if let Some(c) = counts.get(&d.id) {
                                out.counts.push((d.id, *c));
                            }
                        }
                    }
                    Err(e) => return fail(fp, e.to_string()),
                }
            }
            if let Err(e) = fp.apply(&add, &delete, ELEMENT_TIMEOUT) {
                return fail(fp, e.to_string());
            }
            for d in &delete {
                installed.remove(&d.id);
                last.remove(&d.id);
                out.released.push(d.id);
            }
            for a in add {
                installed.insert(a.id, a);
            }
        }
        let now = Instant::now();
        if now >= next_count {
            next_count = now + COUNT_EVERY;
            if !installed.is_empty() {
                match fp.counts() {
                    Ok(counts) => {
                        // An element that expired (a kernel that cannot refresh expiries):
                        // released, and the relay installs the call again.
                        installed.retain(|id, _| {
                            let present = counts.contains_key(id);
                            if !present {
                                out.released.push(*id);
                                last.remove(id);
                            }
                            present
                        });
                        for (id, c) in counts {
                            if installed.contains_key(&id) && last.get(&id) != Some(&c) {
                                last.insert(id, c);
                                out.counts.push((id, c));
                            }
                        }
                    }
                    Err(e) => return fail(fp, e.to_string()),
                }
            }
        }
        if now >= next_refresh {
            next_refresh = now + ELEMENT_TIMEOUT / 3;
            let all: Vec<Direction> = installed.values().copied().collect();
            if let Err(e) = fp.apply(&all, &[], ELEMENT_TIMEOUT) {
                return fail(fp, e.to_string());
            }
        }
        if !out.counts.is_empty() || !out.released.is_empty() {
            report(out);
        }
    }
    if let Err(e) = fp.remove() {
        tracing::error!("RTP relay: cannot remove the fast-path table: {e}");
    }
}

//! The relay's pure core: every relayed session, the ports they own, what plays to and is
//! recorded from each leg, and media timeouts. No sockets, no threads, no clock: the engine
//! passes the time in with every input.
//!
//! Inputs: [`SessionTable::command`] (the daemon's `MediaCommand`s),
//! [`SessionTable::loaded`] (a playlist the file thread resolved), [`SessionTable::handle`]
//! (one received datagram: returns what to send, in place in the same buffer),
//! [`SessionTable::play_due`] (sends the prompt frames due by now through a callback),
//! [`SessionTable::check_timeouts`] (run every tick). After each input the engine drains
//! [`SessionTable::poll_output`] (events, file jobs, snapshot changes) in order, and asks
//! [`SessionTable::next_play_due`] when it must wake next for playback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pbx_core::media::rtp;
use pbx_core::media::session::{
    Codec, Leg, LegMedia, LegStats, MediaCommand, MediaEvent, MixRole, SessionId,
};
use pbx_core::media::{g711, srtp};

use super::fast::{self, Closing, Fast, FastJob, FastOwner, FastReport};
use super::leg::{is_g711, LegState};
use super::output::{Outbox, Output};
use super::ports::{Layout, Owner, PortTable};
use super::session::{leg_index, Arrival, Session};
use crate::media::files::{self, FileJob, Loaded, Playlist};
use crate::media::mixer::{Mixer, Role};
use crate::media::player::{Player, Recorder, FRAME};
use crate::media::prompts::PromptStore;
use firewall::nft::fastpath::DirectionCount;

/// A datagram read from one of the range's sockets.
#[derive(Debug, Clone, Copy)]
pub(super) struct Datagram {
    /// The session leg that owns the port it arrived on (see [`SessionTable::owner`]).
    pub(super) owner: Owner,
    /// The number of the local address it arrived on.
    pub(super) via: usize,
    /// Its source; `None` if the kernel gave none we understand.
    pub(super) src: Option<SocketAddr>,
    /// The kernel cut it to the buffer's size.
    pub(super) truncated: bool,
    pub(super) now: Instant,
    /// `now` in microseconds on the relay's own clock.
    pub(super) now_us: u64,
}

/// What to do with a handled datagram: send `buf[..len]` out of socket `socket` to `dest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Forward {
    pub(super) socket: usize,
    pub(super) dest: SocketAddr,
    pub(super) len: usize,
    /// The leg whose phone receives it.
    pub(super) to: Leg,
    /// RTP (counted when sent, see [`SessionTable::count_sent`]), not RTCP.
    pub(super) rtp: bool,
}

/// One mix ([`MediaCommand::Join`]): the mixer of its legs and its 20 ms clock.
#[derive(Debug)]
struct Mix {
    mixer: Mixer,
    /// When the next mixed frame is due.
    next_due: Instant,
    /// When a party last sent audio into it (keeps its sessions from timing out: a paged
    /// phone that only listens may send nothing).
    last_rtp: Instant,
}

/// The period of a mix's ticks.
const MIX_TICK: Duration = Duration::from_millis(20);
/// Ticks a late mix catches up at once; beyond that it skips ahead (no burst after a stall).
const MIX_CATCH_UP: u32 = 5;

/// The mixer's id of leg `leg` of the session in `slot`.
fn party_id(slot: u32, leg: Leg) -> u32 {
    (slot << 1) | u32::from(leg == Leg::B)
}

/// The slot and leg of a mixer party id.
fn party_leg(party: u32) -> (u32, Leg) {
    (party >> 1, if party & 1 == 0 { Leg::A } else { Leg::B })
}

fn mixer_role(role: MixRole) -> Role {
    match role {
        MixRole::Both => Role::Both,
        MixRole::Talker => Role::Talker,
        MixRole::Listener => Role::Listener,
    }
}

/// Every relayed session and the state around them.
#[derive(Debug)]
pub(super) struct SessionTable {
    ports: PortTable,
    sessions: Vec<Option<Session>>,
    free_slots: Vec<u32>,
    index: HashMap<SessionId, u32>,
    media_timeout: Duration,
    prompts: Arc<PromptStore>,
    /// Legs with a player, as (slot, leg).
    playing: Vec<(u32, Leg)>,
    /// Last `Play`/`StopPlay` generation handed out.
    generation: u64,
    /// One played packet: RTP header, a 20 ms frame and room for the SRTP tag.
    play_buf: [u8; rtp::HEADER_LEN + FRAME + srtp::MAX_TRAILER],
    /// Recordings that reached their length during the last batch, as (slot, leg).
    full_recordings: Vec<(u32, Leg)>,
    out: Outbox,
    /// The kernel fast path, when the relay runs one.
    fast: Option<Fast>,
    /// The mixes by the core's id.
    mixes: HashMap<SessionId, Mix>,
}

impl SessionTable {
    /// An empty table over the ports of `layout`; a session silent for `media_timeout` is
    /// reported; `Play` resolves prompt names in `prompts`.
    pub(super) fn new(layout: Layout, media_timeout: Duration, prompts: Arc<PromptStore>) -> Self {
        SessionTable {
            ports: PortTable::new(layout),
            sessions: Vec::new(),
            free_slots: Vec::new(),
            index: HashMap::new(),
            media_timeout,
            prompts,
            playing: Vec::new(),
            generation: 0,
            play_buf: [0; rtp::HEADER_LEN + FRAME + srtp::MAX_TRAILER],
            full_recordings: Vec::new(),
            out: Outbox::default(),
            fast: None,
            mixes: HashMap::new(),
        }
    }

    /// Hands qualifying calls to the kernel from now on (relay addresses `addrs` by `via`).
    pub(super) fn enable_fast(&mut self, addrs: Vec<std::net::IpAddr>) {
        self.fast = Some(Fast::new(addrs));
    }

    /// Compares what qualifies for the fast path with what the kernel has and queues the
    /// difference (see `fast`), for every session (each tick); the engine then sends
    /// [`SessionTable::take_fast_job`].
    pub(super) fn sync_fast(&mut self) {
        for slot in 0..self.sessions.len() {
            self.sync_fast_slot(slot);
        }
    }

    /// [`SessionTable::sync_fast`] for the sessions `ids` only (those a command batch
    /// touched: a prompt or recording takes its call back at once, without a walk over
    /// every session per batch).
    pub(super) fn sync_fast_sessions(&mut self, ids: &[SessionId]) {
        for id in ids {
            if let Some(&slot) = self.index.get(id) {
                self.sync_fast_slot(slot as usize);
            }
        }
    }

    fn sync_fast_slot(&mut self, slot: usize) {
        let Some(fast) = self.fast.as_mut() else {
            return;
        };
        let Some(Some(session)) = self.sessions.get_mut(slot) else {
            return;
        };
        let wanted = fast.wanted(&session.legs);
        match (&session.fast, wanted) {
            (Some(have), Some(want)) if fast::same_paths(have, &want) => {}
            (None, None) => {}
            (have, want) => {
                if let Some(have) = have {
                    fast.job.delete.extend_from_slice(have);
                }
                session.fast = None;
                let Some(mut want) = want else { return };
                let Ok(slot) = u32::try_from(slot) else {
                    return;
                };
                // At the cap the call stays in user space.
                let Some(ids) = fast.take_ids() else { return };
                for ((dir, id), from) in want.iter_mut().zip(ids).zip([Leg::A, Leg::B]) {
                    dir.id = id;
                    fast.owners.insert(
                        id,
                        (FastOwner::Live { slot, from }, DirectionCount::default()),
                    );
                }
                fast.job.add.extend_from_slice(&want);
                session.fast = Some(want);
                for leg in &mut session.legs {
                    leg.out.kernel_took();
                }
            }
        }
    }

    /// The changes queued for the kernel, if any.
    pub(super) fn take_fast_job(&mut self) -> Option<FastJob> {
        self.fast.as_mut()?.take_job()
    }

    /// Whether the fast path runs, and if it stopped, why.
    pub(super) fn fast_state(&self) -> Option<Result<usize, String>> {
        let fast = self.fast.as_ref()?;
        Some(match &fast.disabled {
            Some(why) => Err(why.clone()),
            None => Ok(fast.owners.len()),
        })
    }

    /// The kernel thread's counts: credited to the legs (and, when they grew, counted as
    /// media and as the latched source speaking); released ids are freed, and a closed
    /// call's stats go out once both its directions are final.
    pub(super) fn kernel_report(&mut self, report: FastReport, now: Instant) {
        let Some(fast) = self.fast.as_mut() else {
            return;
        };
        for (id, count) in report.counts {
            let Some((owner, seen)) = fast.owners.get_mut(&id) else {
                continue;
            };
            match *owner {
                FastOwner::Live { slot, from } => {
                    let Some(Some(session)) = self.sessions.get_mut(slot as usize) else {
                        continue;
                    };
                    let [a, b] = &mut session.legs;
                    let (tx, rx) = match from {
                        Leg::A => (a, b),
                        Leg::B => (b, a),
                    };
                    let packets = fast::credit(seen, count, &mut tx.stats, &mut rx.stats);
                    if packets > 0 {
                        session.last_rtp = session.last_rtp.max(now);
                        let current = session
                            .fast
                            .is_some_and(|dirs| dirs.iter().any(|d| d.id == id));
                        if current {
                            tx.rtp.heard(now);
                            rx.out.kernel_forwarded(packets);
                        }
                    }
                }
                FastOwner::Closing { session, from } => {
                    if let Some(closing) = fast.closing.get_mut(&session) {
                        let [a, b] = &mut closing.stats;
                        let (tx, rx) = match from {
                            Leg::A => (a, b),
                            Leg::B => (b, a),
                        };
                        fast::credit(seen, count, tx, rx);
                    }
                }
            }
        }
        for id in report.released {
            match fast.owners.get(&id).map(|(owner, _)| *owner) {
                Some(FastOwner::Closing { session, .. }) => {
                    if let Some(closing) = fast.closing.get_mut(&session) {
                        closing.waiting = closing.waiting.saturating_sub(1);
                        if closing.waiting == 0 {
                            if let Some(c) = fast.closing.remove(&session) {
                                let [a, b] = c.stats;
                                self.out.event(MediaEvent::Stats { session, a, b });
                            }
                        }
                    }
                }
                Some(FastOwner::Live { slot, .. }) => {
                    // A live call whose direction expired in the kernel (not one we
                    // deleted) is taken back whole and installed again by the next sync.
                    if let Some(Some(session)) = self.sessions.get_mut(slot as usize) {
                        if session
                            .fast
                            .is_some_and(|dirs| dirs.iter().any(|d| d.id == id))
                        {
                            if let Some(dirs) = session.fast.take() {
                                for d in dirs.iter().filter(|d| d.id != id) {
                                    fast.job.delete.push(*d);
                                }
                            }
                        }
                    }
                }
                None => {}
            }
            fast.free_id(id);
        }
        if let Some(why) = report.disabled {
            fast.disabled = Some(why);
            for session in self.sessions.iter_mut().flatten() {
                session.fast = None;
            }
            fast.owners.clear();
            fast.job = FastJob::default();
            for (session, c) in fast.closing.drain() {
                let [a, b] = c.stats;
                self.out.event(MediaEvent::Stats { session, a, b });
            }
        }
    }

    /// The layout of the port range.
    pub(super) fn layout(&self) -> &Layout {
        self.ports.layout()
    }

    /// The next output, oldest first.
    pub(super) fn poll_output(&mut self) -> Option<Output> {
        self.out.pop()
    }

    /// The session leg that owns the port with index `port`, if a session does.
    pub(super) fn owner(&self, port: usize) -> Option<Owner> {
        let owner = self.ports.owner(port)?;
        self.sessions.get(owner.slot as usize)?.as_ref()?;
        Some(owner)
    }

    /// Checks, counts and rewrites in place the datagram `buf[..len]` that arrived on a
    /// port of `datagram.owner`; returns where to send it, if anywhere. `buf` must have
    /// room for an SRTP trailer beyond the longest datagram accepted.
    pub(super) fn handle(
        &mut self,
        datagram: &Datagram,
        buf: &mut [u8],
        len: usize,
    ) -> Option<Forward> {
        let owner = datagram.owner;
        let session = self.sessions.get_mut(owner.slot as usize)?.as_mut()?;
        let src = match datagram.src {
            Some(src) if !datagram.truncated && len <= buf.len() => src,
            _ => {
                session.legs[leg_index(owner.leg)].stats.dropped += 1;
                return None;
            }
        };
        let arrival = Arrival {
            from: owner.leg,
            on_rtcp_port: owner.rtcp,
            via: datagram.via,
            src,
            now: datagram.now,
            now_us: datagram.now_us,
        };
        let layout = self.ports.layout();
        let routed = session.handle(&arrival, buf, len, layout, &mut self.out);
        let from = &session.legs[leg_index(owner.leg)];
        if let (Some(plain), Some(mix)) = (session.to_mix.take(), from.mix) {
            if let (Some(mix), Ok(packet)) = (
                self.mixes.get_mut(&mix),
                rtp::RtpPacket::new_checked(&buf[..plain]),
            ) {
                mix.mixer.push(party_id(owner.slot, owner.leg), &packet);
                mix.last_rtp = datagram.now;
            }
        }
        if from.recorder.as_ref().is_some_and(Recorder::is_full)
            && !self.full_recordings.contains(&(owner.slot, owner.leg))
        {
            self.full_recordings.push((owner.slot, owner.leg));
        }
        let (route, len) = routed?;
        let socket = layout.socket(route.port, route.via)?;
        Some(Forward {
            socket,
            dest: route.dest,
            len,
            to: route.to,
            rtp: route.rtp,
        })
    }

    /// Counts a forwarded RTP packet of `len` bytes that the kernel took, for leg `to` of
    /// the session in `slot`.
    pub(super) fn count_sent(&mut self, slot: u32, to: Leg, len: usize) {
        if let Some(Some(session)) = self.sessions.get_mut(slot as usize) {
            let stats = &mut session.legs[leg_index(to)].stats;
            stats.packets_out += 1;
            stats.bytes_out += len as u64;
        }
    }

    /// Takes back a [`SessionTable::count_sent`] made when the send was queued (the io_uring
    /// back end counts then, so a `Close` right after the send still reports it) for a send
    /// the kernel then refused.
    pub(super) fn uncount_sent(&mut self, slot: u32, to: Leg, len: usize) {
        if let Some(Some(session)) = self.sessions.get_mut(slot as usize) {
            let stats = &mut session.legs[leg_index(to)].stats;
            stats.packets_out = stats.packets_out.saturating_sub(1);
            stats.bytes_out = stats.bytes_out.saturating_sub(len as u64);
        }
    }

    /// Carries out a command from the daemon.
    pub(super) fn command(&mut self, cmd: MediaCommand, now: Instant) {
        match cmd {
            MediaCommand::Open { session, a, b } | MediaCommand::Update { session, a, b } => {
                if self.index.contains_key(&session) {
                    self.update(session, a, b, now);
                } else {
                    self.open(session, a, b, now);
                }
            }
            MediaCommand::Close { session } => self.close(session, now),
            MediaCommand::Play {
                session,
                leg,
                clips,
                repeat,
            } => self.play(session, leg, clips, repeat, now),
            MediaCommand::StopPlay { session, leg } => {
                if let Some(&slot) = self.index.get(&session) {
                    self.stop_play(slot, leg);
                }
            }
            MediaCommand::Record {
                session,
                leg,
                path,
                max_ms,
                from_start,
            } => self.record(session, leg, path, max_ms, from_start, now),
            MediaCommand::StopRecord { session, leg } => {
                if let Some(&slot) = self.index.get(&session) {
                    self.finish_recording(slot, leg);
                }
            }
            MediaCommand::Join {
                mix,
                session,
                leg,
                role,
            } => self.join(mix, session, leg, role, now),
            MediaCommand::Leave { session, leg } => {
                if let Some(&slot) = self.index.get(&session) {
                    self.leave(slot, leg);
                }
            }
        }
    }

    /// `Join`: puts a leg into a mix (created on its first party), out of any other first.
    fn join(&mut self, mix: SessionId, id: SessionId, leg: Leg, role: MixRole, now: Instant) {
        let Some(&slot) = self.index.get(&id) else {
            tracing::warn!("RTP relay: join of unknown session {id} to mix {mix}");
            return;
        };
        self.leave(slot, leg);
        let Some(Some(session)) = self.sessions.get_mut(slot as usize) else {
            return;
        };
        let state = &mut session.legs[leg_index(leg)];
        if state.media.is_absent() {
            tracing::warn!("RTP relay: session {id} leg {leg:?} is absent; not mixed");
            return;
        }
        let mixing = self.mixes.entry(mix).or_insert_with(|| Mix {
            mixer: Mixer::new(),
            next_due: now + MIX_TICK,
            last_rtp: now,
        });
        let joined = mixing.mixer.join(
            party_id(slot, leg),
            state.media.codec,
            state.media.pt,
            mixer_role(role),
            state.out,
        );
        match joined {
            Ok(()) => state.mix = Some(mix),
            Err(e) => {
                tracing::warn!("RTP relay: session {id} leg {leg:?} not mixed into {mix}: {e}");
                if mixing.mixer.is_empty() {
                    self.mixes.remove(&mix);
                }
            }
        }
    }

    /// Takes a leg out of its mix, if it is in one; its stream continues where the mix left
    /// it. The last party's leaving drops the mix.
    fn leave(&mut self, slot: u32, leg: Leg) {
        let Some(Some(session)) = self.sessions.get_mut(slot as usize) else {
            return;
        };
        let state = &mut session.legs[leg_index(leg)];
        let Some(mix) = state.mix.take() else {
            return;
        };
        if let Some(mixing) = self.mixes.get_mut(&mix) {
            if let Some(out) = mixing.mixer.leave(party_id(slot, leg)) {
                state.out = out;
            }
            if mixing.mixer.is_empty() {
                self.mixes.remove(&mix);
            }
        }
    }

    /// Parties in mix `mix` (0: no such mix).
    #[cfg(test)]
    fn mix_len(&self, mix: SessionId) -> usize {
        self.mixes.get(&mix).map_or(0, |m| m.mixer.len())
    }

    fn open(&mut self, id: SessionId, a: LegMedia, b: LegMedia, now: Instant) {
        let Some(ports) = self.ports.claimable(&a, &b, None) else {
            tracing::warn!(
                "RTP relay: session {id} asks for ports {} and {} that are outside the range \
                 or in use; not relayed",
                a.local_port,
                b.local_port
            );
            return;
        };
        let session = Session::new(
            id,
            [LegState::new(a, now), LegState::new(b, now)],
            ports,
            now,
        );
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.sessions[slot as usize] = Some(session);
                slot
            }
            None => {
                let Ok(slot) = u32::try_from(self.sessions.len()) else {
                    return;
                };
                self.sessions.push(Some(session));
                slot
            }
        };
        self.ports.claim(ports, slot);
        self.index.insert(id, slot);
        self.out.push(Output::Opened(id));
    }

    fn update(&mut self, id: SessionId, a: LegMedia, b: LegMedia, now: Instant) {
        let Some(&slot) = self.index.get(&id) else {
            return;
        };
        let Some(ports) = self.ports.claimable(&a, &b, Some(slot)) else {
            tracing::warn!(
                "RTP relay: update of session {id} asks for ports {} and {} that are outside \
                 the range or in use; kept the old parameters",
                a.local_port,
                b.local_port
            );
            return;
        };
        if let Some(Some(session)) = self.sessions.get_mut(slot as usize) {
            self.ports.release(session.ports, slot);
            self.ports.claim(ports, slot);
            session.ports = ports;
            let [leg_a, leg_b] = &mut session.legs;
            leg_a.update(a, now);
            leg_b.update(b, now);
        }
    }

    fn close(&mut self, id: SessionId, now: Instant) {
        let Some(&slot) = self.index.get(&id) else {
            return;
        };
        self.finish_recording(slot, Leg::A);
        self.finish_recording(slot, Leg::B);
        self.leave(slot, Leg::A);
        self.leave(slot, Leg::B);
        self.playing.retain(|&(s, _)| s != slot);
        self.full_recordings.retain(|&(s, _)| s != slot);
        self.index.remove(&id);
        if let Some(session) = self.sessions.get_mut(slot as usize).and_then(Option::take) {
            self.ports.release(session.ports, slot);
            let (a, b) = session.stats();
            match (session.fast, self.fast.as_mut()) {
                (Some(dirs), Some(fast)) => {
                    // The final stats wait for the kernel's last counts of both directions.
                    for (dir, from) in dirs.iter().zip([Leg::A, Leg::B]) {
                        if let Some((owner, _)) = fast.owners.get_mut(&dir.id) {
                            *owner = FastOwner::Closing { session: id, from };
                        }
                    }
                    fast.job.delete.extend_from_slice(&dirs);
                    fast.closing.insert(
                        id,
                        Closing {
                            stats: [a, b],
                            waiting: 2,
                            since: now,
                        },
                    );
                }
                _ => self.out.event(MediaEvent::Stats { session: id, a, b }),
            }
        }
        self.free_slots.push(slot);
        self.out.push(Output::Closed(id));
    }

    /// Reports every session that has had no RTP for the media timeout (once each), and
    /// finishes recordings that ran out of wall time.
    pub(super) fn check_timeouts(&mut self, now: Instant) {
        for (slot, session) in self.sessions.iter().enumerate() {
            let Some(session) = session else { continue };
            for leg in [Leg::A, Leg::B] {
                let recorder = session.legs[leg_index(leg)].recorder.as_ref();
                if recorder.is_some_and(|r| r.expired(now)) {
                    if let Ok(slot) = u32::try_from(slot) {
                        self.full_recordings.push((slot, leg));
                    }
                }
            }
        }
        self.finish_full_recordings();
        if let Some(fast) = self.fast.as_mut() {
            // The kernel thread did not answer in time: the stats go out as they are.
            let late: Vec<SessionId> = fast
                .closing
                .iter()
                .filter(|(_, c)| now.saturating_duration_since(c.since) >= fast::CLOSE_WAIT)
                .map(|(id, _)| *id)
                .collect();
            for session in late {
                if let Some(c) = fast.closing.remove(&session) {
                    let [a, b] = c.stats;
                    self.out.event(MediaEvent::Stats { session, a, b });
                }
            }
        }
        let mixes = &self.mixes;
        for session in self.sessions.iter_mut().flatten() {
            let mixed = session
                .legs
                .iter()
                .filter_map(|l| mixes.get(&l.mix?))
                .map(|m| m.last_rtp)
                .max();
            let last_rtp = mixed.map_or(session.last_rtp, |m| m.max(session.last_rtp));
            if !session.timed_out && now.saturating_duration_since(last_rtp) >= self.media_timeout {
                session.timed_out = true;
                self.out.event(MediaEvent::Timeout {
                    session: session.id,
                });
            }
        }
    }

    /// The state of one leg of the session in `slot`.
    fn leg_state(&mut self, slot: u32, leg: Leg) -> Option<&mut LegState> {
        let session = self.sessions.get_mut(slot as usize)?.as_mut()?;
        Some(&mut session.legs[leg_index(leg)])
    }

    /// `Play`: replaces what `leg` hears with `clips` (resolved here, or by the file thread
    /// when a clip is a file).
    fn play(&mut self, id: SessionId, leg: Leg, clips: Vec<String>, repeat: bool, now: Instant) {
        let Some(&slot) = self.index.get(&id) else {
            tracing::warn!("RTP relay: play to unknown session {id}");
            return;
        };
        self.stop_play(slot, leg);
        let generation = self.generation;
        let Some(state) = self.leg_state(slot, leg) else {
            return;
        };
        if state.media.is_absent() || !is_g711(state.media.codec) {
            tracing::warn!(
                "RTP relay: cannot play to leg {leg:?} of session {id} (absent or not G.711)"
            );
            self.out.event(MediaEvent::PlayDone { session: id, leg });
            return;
        }
        state.play_generation = generation;
        if clips.iter().any(|c| files::is_file_clip(c)) {
            self.out.push(Output::File(FileJob::Load(Playlist {
                session: id,
                leg,
                generation,
                clips,
                repeat,
            })));
            return;
        }
        let audio = files::resolve(&self.prompts, &clips);
        self.start_player(slot, leg, audio, repeat, now);
    }

    /// A playlist came back from the file thread: play it if it is still wanted.
    pub(super) fn loaded(&mut self, loaded: Loaded, now: Instant) {
        let Loaded { playlist, audio } = loaded;
        let Some(&slot) = self.index.get(&playlist.session) else {
            return;
        };
        let current = self
            .leg_state(slot, playlist.leg)
            .is_some_and(|s| s.play_generation == playlist.generation);
        if current {
            self.start_player(slot, playlist.leg, audio, playlist.repeat, now);
        }
    }

    fn start_player(
        &mut self,
        slot: u32,
        leg: Leg,
        audio: Vec<Arc<[u8]>>,
        repeat: bool,
        now: Instant,
    ) {
        let Some(Some(session)) = self.sessions.get_mut(slot as usize) else {
            return;
        };
        let id = session.id;
        let state = &mut session.legs[leg_index(leg)];
        match Player::new(audio, repeat, now) {
            Some(player) => {
                state.player = Some(player);
                state.talkspurt = true;
                if !self.playing.contains(&(slot, leg)) {
                    self.playing.push((slot, leg));
                }
            }
            None => {
                tracing::warn!("RTP relay: nothing to play to session {id} leg {leg:?}");
                self.out.event(MediaEvent::PlayDone { session: id, leg });
            }
        }
    }

    /// Stops the player of a leg (no `PlayDone`) and invalidates a pending file load.
    fn stop_play(&mut self, slot: u32, leg: Leg) {
        self.generation += 1;
        let generation = self.generation;
        if let Some(state) = self.leg_state(slot, leg) {
            state.player = None;
            state.play_generation = generation;
        }
        self.playing.retain(|&e| e != (slot, leg));
    }

    /// When the next played or mixed frame is due, if anything plays or mixes.
    pub(super) fn next_play_due(&self) -> Option<Instant> {
        let mixes = self.mixes.values().map(|m| m.next_due);
        self.playing
            .iter()
            .filter_map(|&(slot, leg)| {
                let session = self.sessions.get(slot as usize)?.as_ref()?;
                session.legs[leg_index(leg)]
                    .player
                    .as_ref()
                    .map(Player::next_due)
            })
            .chain(mixes)
            .min()
    }

    /// Sends every frame that is due by `now`, on every playing leg, through `send(socket,
    /// dest, packet)`, which returns whether the kernel took it.
    pub(super) fn play_due(
        &mut self,
        now: Instant,
        send: &mut impl FnMut(usize, SocketAddr, &[u8]) -> bool,
    ) {
        let mut i = 0;
        while i < self.playing.len() {
            let (slot, leg) = self.playing[i];
            if self.play_leg(slot, leg, now, send) {
                i += 1;
            } else {
                self.playing.swap_remove(i);
            }
        }
        self.mix_due(now, send);
    }

    /// Runs every mix's ticks due by `now`: each listening party gets its mixed frame (a
    /// leg that hears a prompt gets the prompt instead).
    fn mix_due(&mut self, now: Instant, send: &mut impl FnMut(usize, SocketAddr, &[u8]) -> bool) {
        let layout = *self.ports.layout();
        let sessions = &mut self.sessions;
        let buf = &mut self.play_buf;
        for mix in self.mixes.values_mut() {
            let mut ticks = 0;
            while mix.next_due <= now {
                if ticks == MIX_CATCH_UP {
                    mix.next_due = now + MIX_TICK;
                    break;
                }
                let due = mix.next_due;
                mix.mixer.tick(due, &mut |party, packet| {
                    let (slot, leg) = party_leg(party);
                    let Some(Some(session)) = sessions.get_mut(slot as usize) else {
                        return;
                    };
                    let state = &mut session.legs[leg_index(leg)];
                    if state.player.is_some() {
                        return;
                    }
                    let Some(route) = state.rtp_route(leg, &layout) else {
                        return;
                    };
                    let Some(socket) = layout.socket(route.port, route.via) else {
                        return;
                    };
                    let n = packet.len().min(buf.len());
                    buf[..n].copy_from_slice(&packet[..n]);
                    let len = match state.srtp.as_mut() {
                        Some(srtp) => match srtp.outbound.protect_rtp(buf, n) {
                            Ok(len) => len,
                            Err(_) => return,
                        },
                        None => n,
                    };
                    if send(socket, route.dest, &buf[..len]) {
                        state.stats.packets_out += 1;
                        state.stats.bytes_out += len as u64;
                    }
                });
                mix.next_due += MIX_TICK;
                ticks += 1;
            }
        }
    }

    /// Sends the due frames of one leg; returns whether it still plays.
    fn play_leg(
        &mut self,
        slot: u32,
        leg: Leg,
        now: Instant,
        send: &mut impl FnMut(usize, SocketAddr, &[u8]) -> bool,
    ) -> bool {
        let layout = self.ports.layout();
        let Some(Some(session)) = self.sessions.get_mut(slot as usize) else {
            return false;
        };
        let id = session.id;
        let state = &mut session.legs[leg_index(leg)];
        let route = state.rtp_route(leg, layout);
        let socket = route.and_then(|r| layout.socket(r.port, r.via));
        let Some(player) = state.player.as_mut() else {
            return false;
        };
        let mut frame = [0u8; FRAME];
        for _ in 0..player.frames_due(now) {
            let due = player.next_due();
            let Some(resynced) = player.next_frame(&mut frame) else {
                break;
            };
            let talkspurt = std::mem::take(&mut state.talkspurt) || resynced;
            let header = state.out.next(due, talkspurt, state.media.pt);
            // Before the phone is known there is nowhere to send; the clock runs anyway.
            let (Some(route), Some(socket)) = (route, socket) else {
                continue;
            };
            if state.media.codec == Codec::Pcma {
                g711::transcode(&mut frame, Codec::Pcmu, Codec::Pcma);
            }
            let Ok(len) = header.emit(&mut self.play_buf, &frame) else {
                continue;
            };
            let len = match state.srtp.as_mut() {
                Some(srtp) => match srtp.outbound.protect_rtp(&mut self.play_buf, len) {
                    Ok(len) => len,
                    Err(_) => continue,
                },
                None => len,
            };
            if send(socket, route.dest, &self.play_buf[..len]) {
                state.stats.packets_out += 1;
                state.stats.bytes_out += len as u64;
            }
        }
        if player.is_done() {
            state.player = None;
            self.out.event(MediaEvent::PlayDone { session: id, leg });
            return false;
        }
        true
    }

    /// `Record`: starts collecting what `leg`'s phone sends (a recording already running
    /// on that leg is finished first).
    fn record(
        &mut self,
        id: SessionId,
        leg: Leg,
        path: PathBuf,
        max_ms: u32,
        from_start: bool,
        now: Instant,
    ) {
        let Some(&slot) = self.index.get(&id) else {
            self.out.event(MediaEvent::RecordingFailed {
                session: id,
                leg,
                path,
                reason: "no such media session".into(),
            });
            return;
        };
        self.finish_recording(slot, leg);
        if let Some(state) = self.leg_state(slot, leg) {
            let recorder = Recorder::new(path, max_ms, now);
            state.recorder = Some(if from_start {
                recorder.from_start()
            } else {
                recorder
            });
        }
    }

    /// Hands a leg's recording, if any, to the file thread, which writes and reports it.
    fn finish_recording(&mut self, slot: u32, leg: Leg) {
        let Some(Some(session)) = self.sessions.get_mut(slot as usize) else {
            return;
        };
        let id = session.id;
        let Some(recorder) = session.legs[leg_index(leg)].recorder.take() else {
            return;
        };
        let (path, samples) = recorder.finish();
        self.out.push(Output::File(FileJob::Write {
            session: id,
            leg,
            path,
            samples,
        }));
    }

    /// Finishes the recordings that filled up since the last call.
    pub(super) fn finish_full_recordings(&mut self) {
        while let Some((slot, leg)) = self.full_recordings.pop() {
            self.finish_recording(slot, leg);
        }
    }

    /// Finishes every recording (the relay stops; what was recorded is kept).
    pub(super) fn finish_all_recordings(&mut self) {
        for slot in 0..self.sessions.len() {
            let Ok(slot) = u32::try_from(slot) else {
                break;
            };
            self.finish_recording(slot, Leg::A);
            self.finish_recording(slot, Leg::B);
        }
    }

    /// Every session's counters of legs A and B.
    pub(super) fn stats(&self) -> impl Iterator<Item = (SessionId, (LegStats, LegStats))> + '_ {
        self.sessions
            .iter()
            .flatten()
            .map(|session| (session.id, session.stats()))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use pbx_core::media::rtp::{RtpPacket, RtpRepr};
    use pbx_core::media::session::SrtpKeys;
    use pbx_core::media::srtp::{SrtpContext, Suite, KEY_MATERIAL_LEN};

    use super::*;

    const A_PHONE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)), 4000);
    const B_PHONE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 20)), 5000);
    /// Ports of leg A (RTP, RTCP) and leg B.
    const A_PORT: u16 = 20_000;
    const B_PORT: u16 = 20_002;
    const TIMEOUT: Duration = Duration::from_secs(30);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn leg(port: u16, phone: SocketAddr) -> LegMedia {
        LegMedia {
            local_port: port,
            remote: Some(phone),
            allowed_ips: vec![phone.ip()],
            codec: Codec::Pcmu,
            pt: 0,
            dtmf_pt: None,
            srtp: None,
        }
    }

    fn audio(seq: u16) -> Vec<u8> {
        let mut buf = vec![0; rtp::HEADER_LEN + FRAME];
        let payload = [seq.to_be_bytes()[1]; FRAME];
        RtpRepr {
            marker: false,
            payload_type: 0,
            sequence_number: seq,
            timestamp: u32::from(seq) * 160,
            ssrc: 0x1234_5678,
        }
        .emit(&mut buf, &payload)
        .expect("fits");
        buf
    }

    fn srtp_ctx(key: u8) -> SrtpContext {
        SrtpContext::new(Suite::AesCm128HmacSha1_80, &[key; KEY_MATERIAL_LEN])
    }

    fn protected(ctx: &mut SrtpContext, packet: &[u8]) -> Vec<u8> {
        let mut buf = packet.to_vec();
        buf.resize(packet.len() + srtp::MAX_TRAILER, 0);
        let n = ctx.protect_rtp(&mut buf, packet.len()).expect("protects");
        buf.truncate(n);
        buf
    }

    /// A session table on a virtual clock that starts at `t0`.
    struct Relay {
        table: SessionTable,
        t0: Instant,
    }

    impl Relay {
        fn new() -> Self {
            let mut prompts = PromptStore::builtin();
            assert!(prompts.insert("short", vec![0x42; 800]), "5 frames");
            let layout = Layout::new(20_000, 10, &[IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))]);
            Relay {
                table: SessionTable::new(layout, TIMEOUT, Arc::new(prompts)),
                t0: Instant::now(),
            }
        }

        fn at(&self, offset: Duration) -> Instant {
            self.t0 + offset
        }

        fn command(&mut self, at: Duration, cmd: MediaCommand) {
            self.table.command(cmd, self.t0 + at);
        }

        fn open(&mut self, session: SessionId, a: LegMedia, b: LegMedia) {
            self.command(Duration::ZERO, MediaCommand::Open { session, a, b });
            assert!(matches!(self.outputs()[..], [Output::Opened(id)] if id == session));
        }

        /// A datagram from `src` to our `port` at `at`: what is sent, and its bytes.
        fn datagram(
            &mut self,
            port: u16,
            src: SocketAddr,
            at: Duration,
            bytes: &[u8],
        ) -> Option<(Forward, Vec<u8>)> {
            let idx = self.table.layout().port_index(port).expect("in range");
            let owner = self.table.owner(idx)?;
            let mut buf = [0u8; 2048];
            buf[..bytes.len()].copy_from_slice(bytes);
            let datagram = Datagram {
                owner,
                via: 0,
                src: Some(src),
                truncated: false,
                now: self.at(at),
                now_us: u64::try_from(at.as_micros()).expect("short test"),
            };
            let forward = self.table.handle(&datagram, &mut buf, bytes.len())?;
            Some((forward, buf[..forward.len].to_vec()))
        }

        fn stats(&self, session: SessionId) -> (LegStats, LegStats) {
            self.table
                .stats()
                .find(|(id, _)| *id == session)
                .map(|(_, stats)| stats)
                .expect("session exists")
        }

        fn outputs(&mut self) -> Vec<Output> {
            std::iter::from_fn(|| self.table.poll_output()).collect()
        }

        fn events(&mut self) -> Vec<MediaEvent> {
            self.outputs()
                .into_iter()
                .filter_map(|o| match o {
                    Output::Event(e) => Some(e),
                    _ => None,
                })
                .collect()
        }

        /// Prompt packets sent at `at`, as (socket, destination, bytes).
        fn play(&mut self, at: Duration) -> Vec<(usize, SocketAddr, Vec<u8>)> {
            let mut sent = Vec::new();
            self.table
                .play_due(self.t0 + at, &mut |socket, dest, packet| {
                    sent.push((socket, dest, packet.to_vec()));
                    true
                });
            sent
        }
    }

    /// A paging mix: caller (session 10, leg A, talker) and two paged phones (sessions 11
    /// and 12, leg B, listeners).
    fn paging(relay: &mut Relay) -> [SocketAddr; 2] {
        let m1 = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 31)), 6000);
        let m2 = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 32)), 6002);
        relay.open(10, leg(A_PORT, A_PHONE), LegMedia::absent());
        relay.open(11, LegMedia::absent(), leg(B_PORT, m1));
        let mut alaw = leg(20_004, m2);
        alaw.codec = Codec::Pcma;
        alaw.pt = 8;
        relay.open(12, LegMedia::absent(), alaw);
        for (session, leg, role) in [
            (10, Leg::A, MixRole::Talker),
            (11, Leg::B, MixRole::Listener),
            (12, Leg::B, MixRole::Listener),
        ] {
            let join = MediaCommand::Join {
                mix: 10,
                session,
                leg,
                role,
            };
            relay.command(Duration::ZERO, join);
        }
        assert_eq!(relay.table.mix_len(10), 3);
        [m1, m2]
    }

    /// The decoded payloads sent to each destination at `at`.
    fn mixed(relay: &mut Relay, at: Duration) -> Vec<(SocketAddr, Vec<i16>)> {
        relay
            .play(at)
            .into_iter()
            .map(|(_, dest, bytes)| {
                let view = RtpPacket::new_checked(&bytes[..]).expect("RTP");
                let alaw = view.payload_type() == 8;
                let pcm = view
                    .payload()
                    .iter()
                    .map(|&c| {
                        if alaw {
                            g711::alaw_to_linear(c)
                        } else {
                            g711::ulaw_to_linear(c)
                        }
                    })
                    .collect();
                (dest, pcm)
            })
            .collect()
    }

    #[test]
    fn a_paging_caller_is_heard_by_every_listener_in_its_law_and_hears_nothing() {
        let mut relay = Relay::new();
        let [m1, m2] = paging(&mut relay);
        let mut heard = Vec::new();
        for seq in 1..=20u16 {
            let at = ms(20 * u64::from(seq));
            // The caller's audio is mixed, not forwarded to its absent other leg.
            assert!(relay.datagram(A_PORT, A_PHONE, at, &audio(seq)).is_none());
            heard.extend(mixed(&mut relay, at));
        }
        assert!(heard.iter().all(|(dest, _)| *dest == m1 || *dest == m2));
        let loud = |to: SocketAddr| {
            heard
                .iter()
                .filter(|(d, pcm)| *d == to && pcm.iter().any(|&s| s.abs() > 8))
                .count()
        };
        // 20 ticks less the jitter buffer's fill: both listeners hear the caller.
        assert!(loud(m1) >= 15, "{}", loud(m1));
        assert!(loud(m2) >= 15, "{}", loud(m2));
        assert_eq!(relay.stats(10).0.packets_out, 0, "the talker hears nothing");
        assert_eq!(relay.stats(11).1.packets_out, 20);
    }

    #[test]
    fn a_listener_is_heard_by_nobody_and_leaves_the_mix_when_closed() {
        let mut relay = Relay::new();
        let [m1, m2] = paging(&mut relay);
        for seq in 1..=10u16 {
            let at = ms(20 * u64::from(seq));
            assert!(relay.datagram(B_PORT, m1, at, &audio(seq)).is_none());
            for (dest, pcm) in mixed(&mut relay, at) {
                assert_ne!(dest, A_PHONE);
                // Silence: A-law has no zero, its quietest step is 8.
                assert!(pcm.iter().all(|&s| s.abs() <= 8), "silence to {dest}");
            }
        }
        // A listener that only listens keeps its session alive while the caller talks.
        for seq in 11..=1600u16 {
            let at = ms(20 * u64::from(seq));
            let _ = relay.datagram(A_PORT, A_PHONE, at, &audio(seq));
        }
        relay.table.check_timeouts(relay.at(ms(20 * 1600)));
        assert!(relay.events().is_empty(), "no timeout");
        relay.command(ms(40_000), MediaCommand::Close { session: 12 });
        assert_eq!(relay.table.mix_len(10), 2);
        for session in [10, 11] {
            relay.command(ms(40_000), MediaCommand::Close { session });
        }
        assert_eq!(relay.table.mix_len(10), 0);
        assert_eq!(relay.table.next_play_due(), None, "no mix ticks left");
        assert!(
            relay.play(ms(40_020)).is_empty(),
            "nothing to {m2} or anybody"
        );
    }

    #[test]
    fn the_first_packet_from_an_allowed_source_latches_and_replies_follow_it() {
        let mut relay = Relay::new();
        relay.open(1, leg(A_PORT, A_PHONE), leg(B_PORT, B_PHONE));
        // Behind NAT: the phone's packets come from another port than its SDP says.
        let natted = SocketAddr::new(A_PHONE.ip(), 61_000);
        let (forward, bytes) = relay
            .datagram(A_PORT, natted, ms(0), &audio(1))
            .expect("relayed");
        let expected = Forward {
            socket: 2,
            dest: B_PHONE,
            len: 172,
            to: Leg::B,
            rtp: true,
        };
        assert_eq!(
            (forward, bytes),
            (expected, audio(1)),
            "to B's SDP address, unchanged"
        );
        let (sa, _) = relay.stats(1);
        assert_eq!(
            (sa.latched, sa.packets_in, sa.bytes_in),
            (Some(natted), 1, 172)
        );

        let (back, _) = relay
            .datagram(B_PORT, B_PHONE, ms(5), &audio(9))
            .expect("relayed");
        assert_eq!(
            (back.socket, back.dest, back.to),
            (0, natted, Leg::A),
            "to the latched source"
        );
        relay.table.count_sent(0, back.to, back.len);
        let (sa, _) = relay.stats(1);
        assert_eq!((sa.packets_out, sa.bytes_out), (1, 172));
    }

    #[test]
    fn a_nat_rebinding_relatches_only_after_a_second_of_silence() {
        let mut relay = Relay::new();
        relay.open(2, leg(A_PORT, A_PHONE), leg(B_PORT, B_PHONE));
        for seq in 0..=10u16 {
            let at = ms(u64::from(seq) * 20);
            assert!(relay.datagram(A_PORT, A_PHONE, at, &audio(seq)).is_some());
        }
        // The NAT gives the phone a new port at 250 ms; the old mapping last spoke at 200 ms.
        let rebound = SocketAddr::new(A_PHONE.ip(), 4100);
        for (seq, at) in [(11, 250), (12, 600), (13, 1199)] {
            assert_eq!(
                relay.datagram(A_PORT, rebound, ms(at), &audio(seq)),
                None,
                "at {at} ms"
            );
        }
        let (sa, _) = relay.stats(2);
        assert_eq!((sa.latched, sa.dropped), (Some(A_PHONE), 3));

        let (forward, _) = relay
            .datagram(A_PORT, rebound, ms(1200), &audio(14))
            .expect("taken over");
        assert_eq!(forward.dest, B_PHONE);
        let (sa, _) = relay.stats(2);
        assert_eq!(
            (sa.latched, sa.dropped, sa.packets_in),
            (Some(rebound), 3, 12)
        );
        assert_eq!(
            relay.datagram(A_PORT, A_PHONE, ms(1220), &audio(15)),
            None,
            "the old mapping is now a stranger"
        );
        let (back, _) = relay
            .datagram(B_PORT, B_PHONE, ms(1230), &audio(50))
            .expect("relayed");
        assert_eq!(back.dest, rebound, "B's audio follows the phone");
    }

    #[test]
    fn strangers_are_dropped_and_counted_while_a_leg_is_latched() {
        let mut relay = Relay::new();
        relay.open(3, leg(A_PORT, A_PHONE), leg(B_PORT, B_PHONE));
        let outsider = SocketAddr::from(([203, 0, 113, 9], 4000));
        let neighbour = SocketAddr::new(A_PHONE.ip(), 4002);
        for seq in 0..50u16 {
            let at = ms(u64::from(seq) * 20);
            assert!(relay.datagram(A_PORT, A_PHONE, at, &audio(seq)).is_some());
            assert_eq!(
                relay.datagram(A_PORT, outsider, at + ms(5), &audio(seq)),
                None
            );
            assert_eq!(
                relay.datagram(A_PORT, neighbour, at + ms(7), &audio(seq)),
                None
            );
        }
        // Long silence lets an allowed IP take over, never an outsider.
        assert_eq!(
            relay.datagram(A_PORT, outsider, ms(60_000), &audio(99)),
            None
        );
        let (sa, sb) = relay.stats(3);
        assert_eq!(
            (sa.dropped, sa.packets_in, sa.latched),
            (101, 50, Some(A_PHONE))
        );
        assert_eq!(sb.dropped, 0);
    }

    #[test]
    fn a_silent_session_times_out_at_the_media_timeout_once() {
        let mut relay = Relay::new();
        relay.open(4, leg(A_PORT, A_PHONE), leg(B_PORT, B_PHONE));
        assert!(relay
            .datagram(A_PORT, A_PHONE, ms(1000), &audio(1))
            .is_some());
        // RTCP alone does not keep a call alive.
        let rr = [0x80, 201, 0, 1, 0, 0, 0, 0xaa];
        assert!(relay
            .datagram(A_PORT + 1, A_PHONE, ms(20_000), &rr)
            .is_some());

        relay
            .table
            .check_timeouts(relay.at(ms(1000) + TIMEOUT - ms(1)));
        assert_eq!(relay.events(), []);
        relay.table.check_timeouts(relay.at(ms(1000) + TIMEOUT));
        assert_eq!(relay.events(), [MediaEvent::Timeout { session: 4 }]);
        relay.table.check_timeouts(relay.at(ms(1000) + TIMEOUT * 3));
        assert_eq!(relay.events(), [], "reported once");

        // A session that never hears a packet times out counted from its opening.
        relay.command(
            ms(5000),
            MediaCommand::Open {
                session: 5,
                a: leg(20_004, A_PHONE),
                b: leg(20_006, B_PHONE),
            },
        );
        relay.outputs();
        relay
            .table
            .check_timeouts(relay.at(ms(5000) + TIMEOUT - ms(1)));
        assert_eq!(relay.events(), []);
        relay.table.check_timeouts(relay.at(ms(5000) + TIMEOUT));
        assert_eq!(relay.events(), [MediaEvent::Timeout { session: 5 }]);
    }

    #[test]
    fn an_srtp_leg_relatches_only_to_a_source_that_authenticates() {
        let mut relay = Relay::new();
        let mut a = leg(A_PORT, A_PHONE);
        a.srtp = Some(SrtpKeys {
            suite: Suite::AesCm128HmacSha1_80,
            remote_key: [1; KEY_MATERIAL_LEN],
            local_key: [2; KEY_MATERIAL_LEN],
        });
        relay.open(6, a, leg(B_PORT, B_PHONE));
        let (mut phone_out, mut phone_in) = (srtp_ctx(1), srtp_ctx(2));
        let first = protected(&mut phone_out, &audio(1));
        let (_, plain) = relay
            .datagram(A_PORT, A_PHONE, ms(0), &first)
            .expect("authentic");
        assert_eq!(plain, audio(1), "B gets plain RTP");

        // Long after the phone went quiet, a forgery from a new port moves nothing.
        let rebound = SocketAddr::new(A_PHONE.ip(), 4100);
        let forged = protected(&mut srtp_ctx(9), &audio(2));
        assert_eq!(relay.datagram(A_PORT, rebound, ms(5000), &forged), None);
        let replayed = first.clone();
        assert_eq!(relay.datagram(A_PORT, rebound, ms(5000), &replayed), None);
        let (sa, _) = relay.stats(6);
        assert_eq!((sa.latched, sa.dropped), (Some(A_PHONE), 2));

        let genuine = protected(&mut phone_out, &audio(3));
        assert!(relay
            .datagram(A_PORT, rebound, ms(5000), &genuine)
            .is_some());
        assert_eq!(relay.stats(6).0.latched, Some(rebound));

        let (back, mut bytes) = relay
            .datagram(B_PORT, B_PHONE, ms(5010), &audio(7))
            .expect("relayed");
        assert_eq!(back.dest, rebound);
        let n = phone_in
            .unprotect_rtp(&mut bytes)
            .expect("SRTP under the relay's key");
        assert_eq!(bytes[..n], audio(7)[..]);
    }

    #[test]
    fn a_prompt_is_paced_on_the_clock_and_mutes_the_other_leg_meanwhile() {
        let mut relay = Relay::new();
        relay.open(7, leg(A_PORT, A_PHONE), leg(B_PORT, B_PHONE));
        let play = MediaCommand::Play {
            session: 7,
            leg: Leg::A,
            clips: vec!["short".into()],
            repeat: false,
        };
        relay.command(ms(100), play);
        assert_eq!(relay.table.next_play_due(), Some(relay.at(ms(100))));

        let first = relay.play(ms(100));
        assert_eq!(first.len(), 1);
        let (socket, dest, bytes) = &first[0];
        assert_eq!((*socket, *dest), (0, A_PHONE));
        let view = RtpPacket::new_checked(&bytes[..]).expect("RTP");
        assert!(view.marker(), "a talkspurt begins");
        assert_eq!(view.payload(), &[0x42; FRAME][..]);
        assert_eq!(relay.table.next_play_due(), Some(relay.at(ms(120))));
        assert!(relay.play(ms(119)).is_empty(), "not before its time");

        // B talks meanwhile: counted, not heard by A.
        assert_eq!(relay.datagram(B_PORT, B_PHONE, ms(121), &audio(1)), None);
        assert_eq!(relay.stats(7).1.packets_in, 1);

        // A late wake-up sends every frame owed; the fifth is the last.
        let rest = relay.play(ms(200));
        assert_eq!(rest.len(), 4);
        let seqs: Vec<u16> = [first, rest]
            .concat()
            .iter()
            .map(|(_, _, b)| {
                RtpPacket::new_checked(&b[..])
                    .expect("RTP")
                    .sequence_number()
            })
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
            "{seqs:?}"
        );
        assert_eq!(
            relay.events(),
            [MediaEvent::PlayDone {
                session: 7,
                leg: Leg::A
            }]
        );
        assert_eq!(relay.table.next_play_due(), None);
        assert_eq!(relay.stats(7).0.packets_out, 5);
        assert!(
            relay
                .datagram(B_PORT, B_PHONE, ms(220), &audio(2))
                .is_some(),
            "heard again"
        );
    }

    #[test]
    fn a_phone_hears_one_stream_across_the_other_phone_music_and_the_other_phone_again() {
        let mut relay = Relay::new();
        relay.open(8, leg(A_PORT, A_PHONE), leg(B_PORT, B_PHONE));
        let header = |bytes: &[u8]| {
            let view = RtpPacket::new_checked(bytes).expect("RTP");
            (
                view.ssrc(),
                view.sequence_number(),
                view.timestamp(),
                view.marker(),
            )
        };
        // B talks (ssrc 0x1234_5678, seq 1..=3, ts 160 per packet): A hears it unchanged.
        let mut heard = Vec::new();
        for seq in 1..=3u16 {
            let (_, bytes) = relay
                .datagram(B_PORT, B_PHONE, ms(20 * u64::from(seq)), &audio(seq))
                .expect("relayed");
            assert_eq!(bytes, audio(seq), "passed through");
            heard.push((ms(20 * u64::from(seq)), header(&bytes)));
        }
        // B holds A at 200 ms: music (the 5-frame prompt, repeating) to A.
        let play = MediaCommand::Play {
            session: 8,
            leg: Leg::A,
            clips: vec!["short".into()],
            repeat: true,
        };
        relay.command(ms(200), play);
        for at in (200..400).step_by(20) {
            for (_, _, bytes) in relay.play(ms(at)) {
                heard.push((ms(at), header(&bytes)));
            }
        }
        relay.command(
            ms(410),
            MediaCommand::StopPlay {
                session: 8,
                leg: Leg::A,
            },
        );
        // B resumes 600 ms later with a restarted stream: new SSRC and numbering.
        for i in 0..3u16 {
            let at = ms(1000 + 20 * u64::from(i));
            let mut packet = audio(9000 + i);
            let mut view = RtpPacket::new_checked(&mut packet[..]).expect("RTP");
            view.set_ssrc(0xDEAD_BEEF);
            let (_, bytes) = relay.datagram(B_PORT, B_PHONE, at, &packet).expect("heard");
            heard.push((at, header(&bytes)));
        }
        assert_eq!(heard.len(), 3 + 10 + 3, "{heard:?}");
        for pair in heard.windows(2) {
            let [(t1, (ssrc1, seq1, ts1, _)), (t2, (ssrc2, seq2, ts2, marker2))] = pair else {
                unreachable!("windows of two")
            };
            assert_eq!(ssrc1, ssrc2, "one SSRC: {heard:?}");
            assert_eq!(seq2.wrapping_sub(*seq1), 1, "seq +1: {heard:?}");
            let wall = u32::try_from((*t2 - *t1).as_millis() * 8).expect("short");
            assert_eq!(
                ts2.wrapping_sub(*ts1),
                wall.max(160),
                "ts follows time: {heard:?}"
            );
            if wall > 160 {
                assert!(marker2, "a switch is marked: {heard:?}");
            }
        }
        assert_eq!(heard[0].1 .0, 0x1234_5678, "the first source's SSRC");
    }

    #[test]
    fn close_hands_recordings_over_before_the_final_stats_and_frees_the_ports() {
        let mut relay = Relay::new();
        relay.open(8, leg(A_PORT, A_PHONE), leg(B_PORT, B_PHONE));
        let record = MediaCommand::Record {
            session: 8,
            leg: Leg::B,
            path: PathBuf::from("/tmp/never-written.wav"),
            max_ms: 60_000,
            from_start: false,
        };
        relay.command(ms(0), record);
        assert!(relay.datagram(B_PORT, B_PHONE, ms(20), &audio(1)).is_some());
        relay.command(ms(40), MediaCommand::Close { session: 8 });
        let outputs = relay.outputs();
        assert!(
            matches!(
                &outputs[..],
                [
                    Output::File(FileJob::Write { session: 8, leg: Leg::B, samples, .. }),
                    Output::Event(MediaEvent::Stats { session: 8, b, .. }),
                    Output::Closed(8),
                ] if samples.len() == FRAME && b.packets_in == 1
            ),
            "{outputs:?}"
        );
        let idx = relay.table.layout().port_index(A_PORT).expect("in range");
        assert_eq!(relay.table.owner(idx), None);
        assert_eq!(relay.datagram(A_PORT, A_PHONE, ms(60), &audio(2)), None);
    }

    #[test]
    fn datagrams_without_a_source_or_cut_short_are_dropped_and_counted() {
        let mut relay = Relay::new();
        relay.open(9, leg(A_PORT, A_PHONE), leg(B_PORT, B_PHONE));
        let owner = relay.table.owner(0).expect("A's RTP port");
        let mut buf = [0u8; 2048];
        let packet = audio(1);
        buf[..packet.len()].copy_from_slice(&packet);
        let mut datagram = Datagram {
            owner,
            via: 0,
            src: None,
            truncated: false,
            now: relay.t0,
            now_us: 0,
        };
        assert_eq!(relay.table.handle(&datagram, &mut buf, packet.len()), None);
        datagram.src = Some(A_PHONE);
        datagram.truncated = true;
        assert_eq!(relay.table.handle(&datagram, &mut buf, packet.len()), None);
        datagram.truncated = false;
        assert_eq!(
            relay.table.handle(&datagram, &mut buf[..100], 172),
            None,
            "longer than its buffer"
        );
        let (sa, _) = relay.stats(9);
        assert_eq!((sa.dropped, sa.latched), (3, None));
    }
}

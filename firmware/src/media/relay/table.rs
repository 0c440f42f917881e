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

use pbx_core::media::rtp as rtp_wire;
use pbx_core::media::session::{
    Codec, Leg, LegMedia, LegStats, MediaCommand, MediaEvent, SessionId,
};
use pbx_core::media::{g711, srtp};

use super::leg::{is_g711, LegState};
use super::output::{Outbox, Output};
use super::ports::{Layout, Owner, PortTable};
use super::session::{leg_index, Arrival, Session};
use crate::media::files::{self, FileJob, Loaded, Playlist};
use crate::media::player::{Player, Recorder, FRAME};
use crate::media::prompts::PromptStore;

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
    play_buf: [u8; rtp_wire::HEADER_LEN + FRAME + srtp::MAX_TRAILER],
    /// Recordings that reached their length during the last batch, as (slot, leg).
    full_recordings: Vec<(u32, Leg)>,
    out: Outbox,
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
            play_buf: [0; rtp_wire::HEADER_LEN + FRAME + srtp::MAX_TRAILER],
            full_recordings: Vec::new(),
            out: Outbox::default(),
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
            MediaCommand::Close { session } => self.close(session),
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
            } => self.record(session, leg, path, max_ms, now),
            MediaCommand::StopRecord { session, leg } => {
                if let Some(&slot) = self.index.get(&session) {
                    self.finish_recording(slot, leg);
                }
            }
        }
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

    fn close(&mut self, id: SessionId) {
        let Some(&slot) = self.index.get(&id) else {
            return;
        };
        self.finish_recording(slot, Leg::A);
        self.finish_recording(slot, Leg::B);
        self.playing.retain(|&(s, _)| s != slot);
        self.full_recordings.retain(|&(s, _)| s != slot);
        self.index.remove(&id);
        if let Some(session) = self.sessions.get_mut(slot as usize).and_then(Option::take) {
            self.ports.release(session.ports, slot);
            let (a, b) = session.stats();
            self.out.event(MediaEvent::Stats { session: id, a, b });
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
        for session in self.sessions.iter_mut().flatten() {
            if !session.timed_out
                && now.saturating_duration_since(session.last_rtp) >= self.media_timeout
            {
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

    /// When the next played frame is due, if anything plays.
    pub(super) fn next_play_due(&self) -> Option<Instant> {
        self.playing
            .iter()
            .filter_map(|&(slot, leg)| {
                let session = self.sessions.get(slot as usize)?.as_ref()?;
                session.legs[leg_index(leg)]
                    .player
                    .as_ref()
                    .map(Player::next_due)
            })
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
    fn record(&mut self, id: SessionId, leg: Leg, path: PathBuf, max_ms: u32, now: Instant) {
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
            state.recorder = Some(Recorder::new(path, max_ms, now));
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

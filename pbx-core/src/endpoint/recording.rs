//! Call recording on demand. Off unless configured; only extensions that opted in
//! (`RecordingSettings::extensions`) start or stop a recording of a call they are in: by
//! dialling the code during the call (`*1`, DTMF) or with their phone's record key (an
//! INFO with `Record: on` / `Record: off`, as Yealink and Grandstream phones send). Both
//! parties hear a beep and the announcement when it starts and when it stops. Each leg is
//! recorded by the relay into its own file from the same instant; when both are written,
//! [`Event::CallRecorded`] tells the driver, which mixes them into one recording.
//!
//! Bounded: at most one recording per call, at most `max_ms` long, at most
//! [`MAX_RECORDINGS`] calls at once; the pending parts are kept per relay session until
//! both are reported.

use std::path::PathBuf;

use crate::media::session::{Leg, MediaCommand};
use crate::sip::transaction::TxKey;
use crate::sip::{Method, Peer, Request};
use crate::Millis;

use super::call::{App, CallState};
use super::event::Event;
use super::Endpoint;

/// Prompts played to both parties when a recording starts and stops (the beep is built
/// in; the announcement comes from the prompt catalogue).
const STARTED: [&str; 2] = ["beep", "recording-started"];
const STOPPED: [&str; 2] = ["beep", "recording-stopped"];

/// Calls recording at once, at most: the relay holds each leg's recording in memory
/// until it ends (up to 4.8 MB per leg at 10 minutes: 154 MB at worst).
pub(super) const MAX_RECORDINGS: usize = 16;

/// Digits remembered per leg to spot the code, and how long apart they may be.
const DIGIT_GAP_MS: Millis = 3_000;

/// A recording of one call, from its start until both legs' files are reported.
#[derive(Debug)]
pub(super) struct CallRecording {
    call_id: String,
    caller: String,
    callee: String,
    by: String,
    started: Millis,
    /// The files asked of the relay, legs A and B.
    paths: [PathBuf; 2],
    /// What the relay reported for each leg: `Some(Some(..))` written, `Some(None)` failed.
    done: [Option<Option<(PathBuf, u32)>>; 2],
    /// Stopped (by the code, the record key, or the end of the call).
    stopped: bool,
}

/// The recent digits each leg of a call dialled, to spot the code.
#[derive(Debug, Default, Clone)]
pub(super) struct RecentDigits {
    legs: [(String, Millis); 2],
}

impl RecentDigits {
    /// Notes `digit` from `leg` at `now`; true when the digits end with `code`.
    fn push(&mut self, leg: Leg, digit: char, now: Millis, code: &str) -> bool {
        let (digits, at) = &mut self.legs[leg_index(leg)];
        if now.saturating_sub(*at) > DIGIT_GAP_MS {
            digits.clear();
        }
        *at = now;
        digits.push(digit);
        let keep = code.chars().count().max(1);
        while digits.chars().count() > keep {
            digits.remove(0);
        }
        let hit = !code.is_empty() && digits == code;
        if hit {
            digits.clear();
        }
        hit
    }
}

fn leg_index(leg: Leg) -> usize {
    match leg {
        Leg::A => 0,
        Leg::B => 1,
    }
}

/// What a `Record:` header of an INFO asks: start (`on`) or stop (`off`).
pub(super) fn record_header(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }
}

impl Endpoint {
    /// A DTMF digit from `leg` of call `session`: the code toggles the recording.
    pub(super) fn recording_digit(&mut self, now: Millis, session: u64, leg: Leg, digit: char) {
        let Some(code) = self.cfg.recording.as_ref().map(|r| r.code.clone()) else {
            return;
        };
        if !self.calls.contains_key(&session) {
            return;
        }
        let digits = self.recent_digits.entry(session).or_default();
        if digits.push(leg, digit, now, &code) {
            self.toggle_recording(now, session, leg, None);
        }
    }

    /// The party on `leg` of call `id` asks to start (`Some(true)`), stop (`Some(false)`)
    /// or toggle (`None`) the recording. Only an extension that opted in may; false when
    /// the request was not taken (not allowed, no bridged call).
    pub(super) fn toggle_recording(
        &mut self,
        now: Millis,
        id: u64,
        leg: Leg,
        want: Option<bool>,
    ) -> bool {
        let Some(settings) = self.cfg.recording.clone() else {
            return false;
        };
        let Some(call) = self.calls.get(&id) else {
            return false;
        };
        let bridged = call.state == CallState::Answered
            && call.winner.is_some()
            && call.media.is_some()
            && !matches!(call.app, Some(App::Parked { .. } | App::Transfer));
        let party = match leg {
            Leg::A => call.rec.caller.clone(),
            Leg::B => call.rec.callee.clone(),
        };
        if !bridged || !settings.extensions.contains(&party) {
            tracing::debug!(%party, "recording request not taken");
            return false;
        }
        let recording = self.recordings.get(&id).is_some_and(|r| !r.stopped);
        match (recording, want.unwrap_or(!recording)) {
            (false, true) => {
                if self.recordings.contains_key(&id) || self.recordings.len() >= MAX_RECORDINGS {
                    // One recording per call (an earlier one's files are not reported
                    // yet), and a bounded number at once.
                    tracing::warn!(%party, "call recording refused: too many at once");
                    return false;
                }
                let stem = format!("{now}-{id}");
                let paths = [
                    settings.dir.join(format!("{stem}-a.wav")),
                    settings.dir.join(format!("{stem}-b.wav")),
                ];
                let Some(call) = self.calls.get(&id) else {
                    return false;
                };
                self.recordings.insert(
                    id,
                    CallRecording {
                        call_id: call.linked_id.clone(),
                        caller: call.rec.caller.clone(),
                        callee: call.rec.callee.clone(),
                        by: party.clone(),
                        started: now,
                        paths: paths.clone(),
                        done: [None, None],
                        stopped: false,
                    },
                );
                tracing::info!(%party, "call recording started");
                for (leg, path) in [Leg::A, Leg::B].into_iter().zip(paths) {
                    self.events.push_back(Event::Media(MediaCommand::Record {
                        session: id,
                        leg,
                        path,
                        max_ms: settings.max_ms,
                        from_start: true,
                    }));
                }
                self.announce(id, &STARTED);
                true
            }
            (true, false) => {
                self.stop_recording(id);
                tracing::info!(%party, "call recording stopped");
                self.announce(id, &STOPPED);
                true
            }
            _ => true,
        }
    }

    /// An INFO with a `Record:` header from `leg` of call `id` (a phone's record key):
    /// answered here (200 when taken, 403 when not), not relayed; false for any other
    /// request.
    pub(super) fn recording_info(
        &mut self,
        now: Millis,
        id: u64,
        leg: Leg,
        key: &TxKey,
        req: &Request,
        src: Peer,
    ) -> bool {
        if req.method != Method::Info {
            return false;
        }
        let Some(want) = req.headers.get("Record").and_then(record_header) else {
            return false;
        };
        let status = if self.toggle_recording(now, id, leg, Some(want)) {
            200
        } else {
            403
        };
        self.sig.reply(now, key, req, src, status, None);
        true
    }

    /// Ends the recording of call `id`, if one runs; the relay reports both files.
    pub(super) fn stop_recording(&mut self, id: u64) {
        let Some(r) = self.recordings.get_mut(&id).filter(|r| !r.stopped) else {
            return;
        };
        r.stopped = true;
        for leg in [Leg::A, Leg::B] {
            self.events
                .push_back(Event::Media(MediaCommand::StopRecord { session: id, leg }));
        }
    }

    /// Plays `clips` to both parties of call `id`.
    fn announce(&mut self, id: u64, clips: &[&str]) {
        for leg in [Leg::A, Leg::B] {
            let clips = clips.iter().map(|c| (*c).to_string()).collect();
            self.play(id, leg, clips, false);
        }
    }

    /// The relay wrote (`Some`) or could not write (`None`) the recording of `leg` of
    /// `session` at `path`; true when it was a call recording's part (not voicemail).
    pub(super) fn recording_part_done(
        &mut self,
        session: u64,
        leg: Leg,
        path: &PathBuf,
        written: Option<u32>,
    ) -> bool {
        let i = leg_index(leg);
        let Some(r) = self.recordings.get_mut(&session) else {
            return false;
        };
        if r.paths[i] != *path {
            return false;
        }
        r.stopped = true;
        r.done[i] = Some(written.map(|ms| (path.clone(), ms)));
        if r.done.iter().all(Option::is_some) {
            if let Some(r) = self.recordings.remove(&session) {
                let [a, b] = r.done;
                self.events.push_back(Event::CallRecorded {
                    call_id: r.call_id,
                    caller: r.caller,
                    callee: r.callee,
                    by: r.by,
                    started: r.started,
                    parts: [a.flatten(), b.flatten()],
                });
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_is_spotted_in_the_digits_of_one_leg_dialled_close_together() {
        let mut d = RecentDigits::default();
        assert!(!d.push(Leg::A, '*', 0, "*1"));
        assert!(d.push(Leg::A, '1', 500, "*1"));
        // The other leg's digits are its own; a long gap starts again.
        assert!(!d.push(Leg::A, '*', 1_000, "*1"));
        assert!(!d.push(Leg::B, '1', 1_100, "*1"));
        assert!(!d.push(Leg::A, '1', 5_000, "*1"));
        // Digits before the code do not matter.
        assert!(!d.push(Leg::B, '5', 6_000, "*1"));
        assert!(!d.push(Leg::B, '*', 6_100, "*1"));
        assert!(d.push(Leg::B, '1', 6_200, "*1"));
        assert!(!d.push(Leg::B, '1', 6_300, ""));
    }

    #[test]
    fn the_record_header_says_on_or_off() {
        assert_eq!(record_header(" On "), Some(true));
        assert_eq!(record_header("off"), Some(false));
        assert_eq!(record_header("pause"), None);
    }
}

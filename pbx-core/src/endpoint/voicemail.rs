//! Voicemail: mailboxes as the driver's index knows them, PINs, the recordings in
//! progress, and the two things Outpost does with a caller: take a message ([`Deposit`]) or
//! let a mailbox owner listen ([`AccessSession`]).
//!
//! Inputs are the driver's index ([`Voicemail::set_mailbox`], [`Voicemail::set_pin`]), the
//! relay's recording reports and the owner's digits; outputs are prompts to play and
//! [`Event`]s for the driver (stored, heard, deleted). Nothing here sends SIP.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::media::session::SessionId;
use crate::Millis;

use super::event::Event;

/// Digits of a PIN kept at most (more are ignored).
const MAX_PIN_DIGITS: usize = 16;
/// Wrong PINs before the owner is sent away.
const MAX_PIN_TRIES: u8 = 3;

/// One message in a mailbox, as the driver's index knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxMessage {
    /// Index id (for delete / mark-heard events).
    pub id: u64,
    /// The WAV file played back.
    pub path: std::path::PathBuf,
    /// Not heard yet.
    pub new: bool,
}

/// The stored form of a voicemail PIN: never the digits themselves.
pub fn pin_hash(ext: &str, pin: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"outpost-vm-pin:");
    h.update(ext.as_bytes());
    h.update(b":");
    h.update(pin.as_bytes());
    hex::encode(h.finalize())
}

/// Message counts of a mailbox: (new, heard).
pub(super) type Counts = (usize, usize);

/// A recording in progress or being written.
#[derive(Debug, Clone)]
struct PendingMessage {
    mailbox: String,
    caller: String,
    /// When the call came in.
    at: Millis,
}

/// Mailboxes, PINs and recordings in progress.
#[derive(Debug, Default)]
pub(super) struct Voicemail {
    /// Recordings not yet reported, by relay session.
    recordings: HashMap<SessionId, PendingMessage>,
    /// Messages per mailbox, as the driver's index knows them.
    mailboxes: HashMap<String, Vec<MailboxMessage>>,
    /// PIN hashes per extension.
    pins: HashMap<String, String>,
}

impl Voicemail {
    /// Sets (or with `None` clears) the PIN hash of `ext`.
    pub(super) fn set_pin(&mut self, ext: &str, hash: Option<String>) {
        match hash {
            Some(h) => {
                self.pins.insert(ext.to_string(), h);
            }
            None => {
                self.pins.remove(ext);
            }
        }
    }

    /// True when `ext` has a PIN.
    pub(super) fn has_pin(&self, ext: &str) -> bool {
        self.pins.contains_key(ext)
    }

    /// Sets the messages of `mailbox`; true when its counts changed (phones must hear).
    pub(super) fn set_mailbox(&mut self, mailbox: &str, messages: Vec<MailboxMessage>) -> bool {
        let counts = |m: &[MailboxMessage]| (m.iter().filter(|x| x.new).count(), m.len());
        let changed = self
            .mailboxes
            .get(mailbox)
            .is_none_or(|old| counts(old) != counts(&messages));
        self.mailboxes.insert(mailbox.to_string(), messages);
        changed
    }

    /// The new and heard messages of `mailbox`.
    pub(super) fn counts(&self, mailbox: &str) -> Counts {
        self.mailboxes.get(mailbox).map_or((0, 0), |m| {
            let new = m.iter().filter(|x| x.new).count();
            (new, m.len() - new)
        })
    }

    /// The relay records `caller`'s message for `mailbox` in `session`.
    pub(super) fn recording_started(
        &mut self,
        session: SessionId,
        mailbox: &str,
        caller: &str,
        at: Millis,
    ) {
        let message = PendingMessage {
            mailbox: mailbox.to_string(),
            caller: caller.to_string(),
            at,
        };
        self.recordings.insert(session, message);
    }

    /// The relay wrote the recording of `session` to `path`: the event that indexes it.
    pub(super) fn recording_done(
        &mut self,
        session: SessionId,
        path: PathBuf,
        duration_ms: u32,
    ) -> Option<Event> {
        let p = self.recordings.remove(&session)?;
        Some(Event::VoicemailStored {
            mailbox: p.mailbox,
            caller: p.caller,
            path,
            duration_ms,
            at: p.at,
        })
    }

    /// The recording of `session` could not be stored.
    pub(super) fn recording_failed(&mut self, session: SessionId) {
        self.recordings.remove(&session);
    }
}

/// Where a caller leaving a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DepositStage {
    Greeting,
    Recording,
    Goodbye,
}

/// A caller leaving a message.
#[derive(Debug, Clone)]
pub(super) struct Deposit {
    /// The mailbox that gets the message.
    pub(super) mailbox: String,
    /// Where the relay writes it.
    pub(super) path: PathBuf,
    pub(super) stage: DepositStage,
}

/// Where a mailbox owner is in the access menu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AccessStage {
    Pin,
    Menu,
    Goodbye,
}

/// A mailbox owner listening to messages: PIN first, then one message after the other
/// (7 deletes, 9 saves, # skips, each then plays the next).
#[derive(Debug, Clone)]
pub(super) struct AccessSession {
    mailbox: String,
    stage: AccessStage,
    /// PIN digits so far.
    digits: String,
    /// Wrong PINs so far.
    tries: u8,
    /// Messages still to play, the next one last.
    queue: Vec<MailboxMessage>,
    /// The message playing.
    current: Option<MailboxMessage>,
}

impl AccessSession {
    /// A session for the owner of `mailbox`, and the prompts it hears first. Without a
    /// PIN the owner is sent away (`outpostctl vm pin EXT` sets one).
    pub(super) fn start(mailbox: String, has_pin: bool) -> (Self, Vec<String>) {
        let (stage, clips) = if has_pin {
            (AccessStage::Pin, vec!["enter-pin".to_string()])
        } else {
            (
                AccessStage::Goodbye,
                vec!["invalid".to_string(), "goodbye".to_string()],
            )
        };
        let session = AccessSession {
            mailbox,
            stage,
            digits: String::new(),
            tries: 0,
            queue: Vec::new(),
            current: None,
        };
        (session, clips)
    }

    /// The last prompt says goodbye: hang up when it ends.
    pub(super) fn saying_goodbye(&self) -> bool {
        self.stage == AccessStage::Goodbye
    }

    /// A digit from the owner: the event for the driver (a message heard or deleted) and
    /// the prompts to play, or `None` when there is nothing to play.
    pub(super) fn digit(
        &mut self,
        digit: char,
        vm: &Voicemail,
    ) -> Option<(Option<Event>, Vec<String>)> {
        let mut clips: Vec<String> = Vec::new();
        let mut event = None;
        match self.stage {
            AccessStage::Pin if digit == '#' => {
                let ok = vm
                    .pins
                    .get(self.mailbox.as_str())
                    .is_some_and(|h| *h == pin_hash(&self.mailbox, &self.digits));
                self.digits.clear();
                if ok {
                    self.open_mailbox(vm, &mut clips);
                } else {
                    self.tries += 1;
                    if self.tries >= MAX_PIN_TRIES {
                        clips.extend(["invalid", "goodbye"].map(String::from));
                        self.stage = AccessStage::Goodbye;
                    } else {
                        clips.extend(["invalid", "enter-pin"].map(String::from));
                    }
                }
            }
            AccessStage::Pin => {
                if digit.is_ascii_digit() && self.digits.len() < MAX_PIN_DIGITS {
                    self.digits.push(digit);
                }
                return None;
            }
            AccessStage::Menu if matches!(digit, '7' | '9' | '#') => {
                if let Some(m) = self.current.take() {
                    event = Some(if digit == '7' {
                        clips.push("deleted".to_string());
                        Event::VoicemailDeleted { id: m.id }
                    } else {
                        if digit == '9' {
                            clips.push("message-saved".to_string());
                        }
                        Event::VoicemailHeard { id: m.id }
                    });
                }
                self.play_next(&mut clips);
            }
            AccessStage::Menu | AccessStage::Goodbye => return None,
        }
        Some((event, clips))
    }

    /// The right PIN: how many messages wait, then the first one.
    fn open_mailbox(&mut self, vm: &Voicemail, clips: &mut Vec<String>) {
        let msgs = vm
            .mailboxes
            .get(self.mailbox.as_str())
            .cloned()
            .unwrap_or_default();
        let new = msgs.iter().filter(|m| m.new).count();
        // New messages first, then the saved ones, oldest first.
        let mut ordered: Vec<MailboxMessage> = msgs.iter().filter(|m| m.new).cloned().collect();
        ordered.extend(msgs.iter().filter(|m| !m.new).cloned());
        self.queue = ordered;
        self.queue.reverse();
        if self.queue.is_empty() {
            clips.extend(["no-messages", "goodbye"].map(String::from));
            self.stage = AccessStage::Goodbye;
            return;
        }
        clips.push("you-have".to_string());
        clips.extend(number_clips(new));
        clips.push(if new == 1 { "message" } else { "new-messages" }.to_string());
        self.stage = AccessStage::Menu;
        self.current = self.queue.pop();
        if let Some(m) = self.current.as_ref() {
            clips.push(m.path.display().to_string());
            clips.push("next-message-menu".to_string());
        }
    }

    /// The next message, or goodbye when none is left.
    fn play_next(&mut self, clips: &mut Vec<String>) {
        self.current = self.queue.pop();
        match self.current.as_ref() {
            Some(m) => {
                clips.push(m.path.display().to_string());
                clips.push("next-message-menu".to_string());
            }
            None => {
                clips.push("goodbye".to_string());
                self.stage = AccessStage::Goodbye;
            }
        }
    }
}

/// The prompts that say a number (digit by digit: "1" "2" for twelve).
fn number_clips(n: usize) -> Vec<String> {
    n.to_string().chars().map(|c| c.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u64, new: bool) -> MailboxMessage {
        MailboxMessage {
            id,
            path: PathBuf::from(format!("/vm/100/{id}.wav")),
            new,
        }
    }

    fn clips(list: &[&str]) -> Vec<String> {
        list.iter().map(|c| c.to_string()).collect()
    }

    fn enter(
        s: &mut AccessSession,
        vm: &Voicemail,
        pin: &str,
    ) -> Option<(Option<Event>, Vec<String>)> {
        for d in pin.chars() {
            assert_eq!(s.digit(d, vm), None, "digits are collected silently");
        }
        s.digit('#', vm)
    }

    #[test]
    fn mailbox_counts_and_changes() {
        let mut vm = Voicemail::default();
        assert_eq!(vm.counts("100"), (0, 0));
        assert!(vm.set_mailbox("100", vec![msg(1, true), msg(2, false)]));
        assert_eq!(vm.counts("100"), (1, 1));
        // Other messages, same counts: the phones need not hear.
        assert!(!vm.set_mailbox("100", vec![msg(3, true), msg(4, false)]));
        assert!(vm.set_mailbox("100", vec![msg(3, false), msg(4, false)]));
        assert_eq!(vm.counts("100"), (0, 2));
    }

    #[test]
    fn a_recording_is_reported_once() {
        let mut vm = Voicemail::default();
        vm.recording_started(7, "100", "200", 1_000);
        let path = PathBuf::from("/vm/100/1000-7.wav");
        assert_eq!(
            vm.recording_done(7, path.clone(), 4_200),
            Some(Event::VoicemailStored {
                mailbox: "100".to_string(),
                caller: "200".to_string(),
                path: path.clone(),
                duration_ms: 4_200,
                at: 1_000,
            })
        );
        assert_eq!(vm.recording_done(7, path.clone(), 4_200), None);
        vm.recording_started(8, "100", "200", 2_000);
        vm.recording_failed(8);
        assert_eq!(vm.recording_done(8, path, 1), None);
    }

    #[test]
    fn no_pin_means_goodbye() {
        let (s, first) = AccessSession::start("100".to_string(), false);
        assert_eq!(first, clips(&["invalid", "goodbye"]));
        assert!(s.saying_goodbye());
    }

    #[test]
    fn three_wrong_pins_end_the_session() {
        let mut vm = Voicemail::default();
        vm.set_pin("100", Some(pin_hash("100", "1234")));
        let (mut s, first) = AccessSession::start("100".to_string(), vm.has_pin("100"));
        assert_eq!(first, clips(&["enter-pin"]));
        for _ in 0..2 {
            assert_eq!(
                enter(&mut s, &vm, "9999"),
                Some((None, clips(&["invalid", "enter-pin"])))
            );
            assert!(!s.saying_goodbye());
        }
        assert_eq!(
            enter(&mut s, &vm, "12x35"),
            Some((None, clips(&["invalid", "goodbye"]))),
            "three strikes (non-digits are not part of a PIN)"
        );
        assert!(s.saying_goodbye());
        assert_eq!(s.digit('#', &vm), None);
    }

    #[test]
    fn new_messages_first_then_delete_save_skip() {
        let mut vm = Voicemail::default();
        vm.set_pin("100", Some(pin_hash("100", "1234")));
        vm.set_mailbox("100", vec![msg(1, false), msg(2, true), msg(3, true)]);
        let (mut s, _) = AccessSession::start("100".to_string(), true);
        let path = |id: u64| format!("/vm/100/{id}.wav");
        assert_eq!(
            enter(&mut s, &vm, "1234"),
            Some((
                None,
                vec![
                    "you-have".into(),
                    "2".into(),
                    "new-messages".into(),
                    path(2),
                    "next-message-menu".into()
                ]
            ))
        );
        assert_eq!(s.digit('5', &vm), None, "not a menu choice");
        assert_eq!(
            s.digit('7', &vm),
            Some((
                Some(Event::VoicemailDeleted { id: 2 }),
                vec!["deleted".into(), path(3), "next-message-menu".into()]
            ))
        );
        assert_eq!(
            s.digit('9', &vm),
            Some((
                Some(Event::VoicemailHeard { id: 3 }),
                vec!["message-saved".into(), path(1), "next-message-menu".into()]
            ))
        );
        assert_eq!(
            s.digit('#', &vm),
            Some((Some(Event::VoicemailHeard { id: 1 }), clips(&["goodbye"])))
        );
        assert!(s.saying_goodbye());
    }

    #[test]
    fn an_empty_mailbox_and_one_new_message() {
        let mut vm = Voicemail::default();
        vm.set_pin("100", Some(pin_hash("100", "1")));
        let (mut s, _) = AccessSession::start("100".to_string(), true);
        assert_eq!(
            enter(&mut s, &vm, "1"),
            Some((None, clips(&["no-messages", "goodbye"])))
        );
        vm.set_mailbox("100", vec![msg(1, true)]);
        let (mut s, _) = AccessSession::start("100".to_string(), true);
        let (_, heard) = enter(&mut s, &vm, "1").expect("prompts");
        assert_eq!(&heard[..3], &clips(&["you-have", "1", "message"])[..]);
    }
}

//! The auto attendant: a caller's place in an [`IvrMenu`] and what each input leads to.
//!
//! Inputs, for one answered caller: the end of a prompt ([`MenuSession::play_done`]), a
//! digit ([`MenuSession::digit`]), the digit deadline ([`MenuSession::timeout`]) and a
//! transfer nobody took ([`MenuSession::transfer_failed`]). Each returns what the endpoint
//! must do (play prompts, arm or cancel the deadline, ring an extension, hang up); this
//! module sends nothing and reads no clock.

use crate::Millis;

use super::config::IvrMenu;

/// A caller in an auto-attendant menu (or being transferred from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MenuSession {
    /// Index of the menu in the configuration.
    menu: usize,
    /// Timeouts and invalid digits so far.
    tries: u32,
    /// Waiting for a digit until then.
    deadline: Option<Millis>,
    /// Extension being rung for the caller.
    transfer: Option<String>,
}

/// What the end of a prompt leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PlayDone {
    /// Nothing (the menu is gone from the configuration).
    Nothing,
    /// An extension rings for the caller: play ringback until it answers.
    Ringback,
    /// Wait for a digit until this deadline.
    WaitDigit(Millis),
    /// The retries are used up: hang up.
    HangUp,
}

/// What a digit leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Digit {
    /// Ignored (a transfer is under way, or the menu is gone).
    Ignored,
    /// Play these prompts (invalid or unavailable choice, then the greeting or goodbye).
    Play(Vec<String>),
    /// Ring this extension for the caller.
    Transfer(String),
}

impl MenuSession {
    /// A caller entering menu `index`, and the prompts it hears first.
    pub(super) fn start(index: usize, menu: &IvrMenu) -> (Self, Vec<String>) {
        let session = MenuSession {
            menu: index,
            tries: 0,
            deadline: None,
            transfer: None,
        };
        (session, vec![menu.greeting.clone()])
    }

    /// Index of the menu in the configuration.
    pub(super) fn menu(&self) -> usize {
        self.menu
    }

    /// An extension is being rung for the caller.
    pub(super) fn transferring(&self) -> bool {
        self.transfer.is_some()
    }

    /// A prompt ended at `now`.
    pub(super) fn play_done(&mut self, now: Millis, menu: Option<&IvrMenu>) -> PlayDone {
        if self.transfer.is_some() {
            return PlayDone::Ringback;
        }
        let Some(m) = menu else {
            return PlayDone::Nothing;
        };
        if self.tries > m.retries {
            return PlayDone::HangUp;
        }
        let at = now.saturating_add(m.timeout_ms);
        self.deadline = Some(at);
        PlayDone::WaitDigit(at)
    }

    /// The digit deadline `at` passed: the prompts to play (the greeting again, or goodbye
    /// once the retries are used up), or `None` when `at` is no longer this session's.
    pub(super) fn timeout(&mut self, at: Millis, menu: Option<&IvrMenu>) -> Option<Vec<String>> {
        if self.transfer.is_some() || self.deadline != Some(at) {
            return None;
        }
        self.deadline = None;
        self.tries += 1;
        let m = menu?;
        Some(if self.tries > m.retries {
            vec!["goodbye".to_string()]
        } else {
            vec![m.greeting.clone()]
        })
    }

    /// A digit from the caller; `reachable` says whether an extension has a phone to ring.
    /// Also returns the digit deadline it cancelled, if any.
    pub(super) fn digit(
        &mut self,
        digit: char,
        menu: Option<&IvrMenu>,
        reachable: impl Fn(&str) -> bool,
    ) -> (Option<Millis>, Digit) {
        if self.transfer.is_some() {
            return (None, Digit::Ignored);
        }
        let Some(m) = menu else {
            return (None, Digit::Ignored);
        };
        let cancelled = self.deadline.take();
        let Some(target) = m.options.get(&digit).cloned() else {
            self.tries += 1;
            let then = if self.tries > m.retries {
                "goodbye".to_string()
            } else {
                m.greeting.clone()
            };
            return (cancelled, Digit::Play(vec!["invalid".to_string(), then]));
        };
        if !reachable(&target) {
            let clips = vec!["unavailable".to_string(), m.greeting.clone()];
            return (cancelled, Digit::Play(clips));
        }
        self.transfer = Some(target.clone());
        (cancelled, Digit::Transfer(target))
    }

    /// Nobody answered the transfer: the caller is back in the menu; the prompts to play.
    pub(super) fn transfer_failed(&mut self, menu: Option<&IvrMenu>) -> Vec<String> {
        self.transfer = None;
        let greeting = menu.map_or_else(|| "goodbye".to_string(), |m| m.greeting.clone());
        vec!["unavailable".to_string(), greeting]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn menu() -> IvrMenu {
        IvrMenu {
            number: "500".to_string(),
            greeting: "welcome".to_string(),
            options: BTreeMap::from([('1', "100".to_string()), ('2', "200".to_string())]),
            timeout_ms: 5_000,
            retries: 1,
        }
    }

    fn clips(list: &[&str]) -> Vec<String> {
        list.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn greeting_then_wait_then_retry_then_hang_up() {
        let m = menu();
        let (mut s, first) = MenuSession::start(0, &m);
        assert_eq!(first, clips(&["welcome"]));
        assert_eq!(s.play_done(1_000, Some(&m)), PlayDone::WaitDigit(6_000));
        // A stale deadline does nothing.
        assert_eq!(s.timeout(5_999, Some(&m)), None);
        assert_eq!(s.timeout(6_000, Some(&m)), Some(clips(&["welcome"])));
        assert_eq!(s.timeout(6_000, Some(&m)), None, "fires once");
        assert_eq!(s.play_done(8_000, Some(&m)), PlayDone::WaitDigit(13_000));
        assert_eq!(s.timeout(13_000, Some(&m)), Some(clips(&["goodbye"])));
        assert_eq!(s.play_done(14_000, Some(&m)), PlayDone::HangUp);
    }

    #[test]
    fn invalid_digits_count_as_tries() {
        let m = menu();
        let (mut s, _) = MenuSession::start(0, &m);
        assert_eq!(s.play_done(0, Some(&m)), PlayDone::WaitDigit(5_000));
        let (cancelled, d) = s.digit('9', Some(&m), |_| true);
        assert_eq!(cancelled, Some(5_000));
        assert_eq!(d, Digit::Play(clips(&["invalid", "welcome"])));
        let (cancelled, d) = s.digit('#', Some(&m), |_| true);
        assert_eq!(cancelled, None, "no deadline while the prompt plays");
        assert_eq!(d, Digit::Play(clips(&["invalid", "goodbye"])));
        assert_eq!(s.play_done(1_000, Some(&m)), PlayDone::HangUp);
    }

    #[test]
    fn a_digit_transfers_to_a_reachable_extension_only() {
        let m = menu();
        let (mut s, _) = MenuSession::start(0, &m);
        let (_, d) = s.digit('2', Some(&m), |ext| ext == "100");
        assert_eq!(d, Digit::Play(clips(&["unavailable", "welcome"])));
        assert!(!s.transferring());
        // Unreachable is not a try.
        assert_eq!(s.play_done(0, Some(&m)), PlayDone::WaitDigit(5_000));
        let (cancelled, d) = s.digit('1', Some(&m), |ext| ext == "100");
        assert_eq!(cancelled, Some(5_000));
        assert_eq!(d, Digit::Transfer("100".to_string()));
        assert!(s.transferring());
        // While the extension rings: ringback, digits and deadlines are ignored.
        assert_eq!(s.digit('2', Some(&m), |_| true), (None, Digit::Ignored));
        assert_eq!(s.play_done(1_000, Some(&m)), PlayDone::Ringback);
        assert_eq!(s.timeout(5_000, Some(&m)), None);
        assert_eq!(
            s.transfer_failed(Some(&m)),
            clips(&["unavailable", "welcome"])
        );
        assert!(!s.transferring());
        assert_eq!(s.play_done(2_000, Some(&m)), PlayDone::WaitDigit(7_000));
    }

    #[test]
    fn a_menu_removed_by_reconfiguration() {
        let m = menu();
        let (mut s, _) = MenuSession::start(3, &m);
        assert_eq!(s.menu(), 3);
        assert_eq!(s.play_done(0, None), PlayDone::Nothing);
        assert_eq!(s.digit('1', None, |_| true), (None, Digit::Ignored));
        assert_eq!(s.transfer_failed(None), clips(&["unavailable", "goodbye"]));
    }
}

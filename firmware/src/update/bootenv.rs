//! `boot.env` on the boot-data partition, and its boot-time copy `/run/outpost-boot`.
//!
//! Both are `key=value` lines. The initramfs reads `slot=` (the committed slot) and the
//! one-shot `try=`; `tried=` marks a trial boot in progress; `release_a=`/`release_b=` say
//! what each slot holds; `last=` is the outcome of the latest update. The copy in `/run`
//! adds `booted=` and `trial=`. Lines this code does not know are kept as they are; lines
//! that are not `key=value` are dropped (a torn or hand-edited file must still boot).

use std::fmt;

use outpost_bundle::Release;
use serde::{Deserialize, Serialize};

/// One of the two root filesystem slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Partition `outpost-root-a`.
    A,
    /// Partition `outpost-root-b`.
    B,
}

impl Slot {
    /// `a` or `b`.
    pub fn parse(text: &str) -> Option<Slot> {
        match text.trim() {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `a` or `b`, as boot.env writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The GPT partition name of the slot.
    pub fn partition(self) -> &'static str {
        match self {
            Slot::A => "outpost-root-a",
            Slot::B => "outpost-root-b",
        }
    }

    /// The boot.env key of what the slot holds (`release_a`).
    pub fn release_key(self) -> &'static str {
        match self {
            Slot::A => "release_a",
            Slot::B => "release_b",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `key=value` lines of boot.env, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootEnv {
    lines: Vec<(String, String)>,
}

/// A key boot.env may hold: what a shell `sed '^key='` can match safely.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A value as one line: control characters (a newline would forge another key) become
/// spaces.
fn one_line(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

impl BootEnv {
    /// Parses the text, keeping every `key=value` line and dropping anything else.
    pub fn parse(text: &str) -> BootEnv {
        let lines = text
            .lines()
            .filter_map(|line| {
                let (k, v) = line.split_once('=')?;
                let k = k.trim();
                valid_key(k).then(|| (k.to_owned(), v.trim().to_owned()))
            })
            .collect();
        BootEnv { lines }
    }

    /// The value of `key` (the last one, should the file repeat it).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.lines
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key` (in place of its first occurrence; repeats are removed), making `value`
    /// one line.
    pub fn set(&mut self, key: &str, value: &str) {
        debug_assert!(valid_key(key), "boot.env keys are fixed names");
        let value = one_line(value);
        match self.lines.iter().position(|(k, _)| k == key) {
            Some(at) => {
                self.lines[at].1 = value;
                let mut seen = 0;
                self.lines.retain(|(k, _)| {
                    if k == key {
                        seen += 1;
                        seen == 1
                    } else {
                        true
                    }
                });
            }
            None => self.lines.push((key.to_owned(), value)),
        }
    }

    /// Removes every `key` line; true if there was one.
    pub fn remove(&mut self, key: &str) -> bool {
        let before = self.lines.len();
        self.lines.retain(|(k, _)| k != key);
        self.lines.len() != before
    }

    /// The file text.
    pub fn render(&self) -> String {
        self.lines
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }

    /// `slot=`: the committed slot.
    pub fn slot(&self) -> Option<Slot> {
        self.get("slot").and_then(Slot::parse)
    }

    /// `try=`: the slot armed for one trial boot.
    pub fn try_slot(&self) -> Option<Slot> {
        self.get("try").and_then(Slot::parse)
    }

    /// `tried=`: the slot whose trial boot has not reached its verdict.
    pub fn tried(&self) -> Option<Slot> {
        self.get("tried").and_then(Slot::parse)
    }

    /// What `slot` holds (`release_<slot>=<version> <build>`).
    pub fn release(&self, slot: Slot) -> Option<Release> {
        let mut words = self.get(slot.release_key())?.split_whitespace();
        let version = words.next()?.to_owned();
        let build = words.next().and_then(|b| b.parse().ok()).unwrap_or(0);
        Some(Release { version, build })
    }

    /// Records what `slot` holds.
    pub fn set_release(&mut self, slot: Slot, release: &Release) {
        self.set(slot.release_key(), &release_words(release));
    }

    /// `last=`: the latest update's outcome.
    pub fn last(&self) -> Option<LastOutcome> {
        self.get("last").and_then(LastOutcome::parse)
    }

    /// Records the latest update's outcome.
    pub fn set_last(&mut self, last: &LastOutcome) {
        self.set("last", &last.render());
    }
}

/// `<version> <build>`, the version made one word.
fn release_words(release: &Release) -> String {
    let version: String = release
        .version
        .chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let version = if version.is_empty() {
        "unknown".to_owned()
    } else {
        version
    };
    format!("{version} {}", release.build)
}

/// How the latest update ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Written to the inactive slot and armed for one trial boot.
    Installed,
    /// The trial boot passed its health check: the slot is the committed one.
    Committed,
    /// The trial failed: the box went back to the committed slot.
    RolledBack,
}

impl Outcome {
    /// The word boot.env uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Installed => "installed",
            Outcome::Committed => "committed",
            Outcome::RolledBack => "rolled-back",
        }
    }

    fn parse(word: &str) -> Option<Outcome> {
        match word {
            "installed" => Some(Outcome::Installed),
            "committed" => Some(Outcome::Committed),
            "rolled-back" => Some(Outcome::RolledBack),
            _ => None,
        }
    }
}

/// `last=<outcome> <slot> <version> <build> <unix time> [reason words...]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastOutcome {
    /// What happened.
    pub outcome: Outcome,
    /// The slot the update went to.
    pub slot: Slot,
    /// The release in that slot.
    pub release: Release,
    /// When, seconds since the epoch.
    pub time: u64,
    /// Why (rollbacks), else empty.
    pub reason: String,
}

impl LastOutcome {
    /// Parses the value of a `last=` line.
    pub fn parse(value: &str) -> Option<LastOutcome> {
        let mut words = value.split_whitespace();
        let outcome = Outcome::parse(words.next()?)?;
        let slot = Slot::parse(words.next()?)?;
        let version = words.next()?.to_owned();
        let build = words.next()?.parse().ok()?;
        let time = words.next()?.parse().ok()?;
        let reason = words.collect::<Vec<_>>().join(" ");
        Some(LastOutcome {
            outcome,
            slot,
            release: Release { version, build },
            time,
            reason,
        })
    }

    /// The value of the `last=` line.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} {} {} {}",
            self.outcome.as_str(),
            self.slot,
            release_words(&self.release),
            self.time
        );
        let reason = one_line(&self.reason);
        if !reason.is_empty() {
            out.push(' ');
            out.push_str(&reason);
        }
        out
    }
}

/// `/run/outpost-boot`: boot.env as the initramfs read it, plus the slot it booted and
/// whether that boot is a trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootState {
    /// boot.env as it was at boot (after the initramfs consumed `try=`).
    pub env: BootEnv,
    /// The slot running now.
    pub booted: Slot,
    /// This boot is an update's trial.
    pub trial: bool,
}

impl BootState {
    /// Parses the file; `None` without a valid `booted=` line.
    pub fn parse(text: &str) -> Option<BootState> {
        let env = BootEnv::parse(text);
        let booted = env.get("booted").and_then(Slot::parse)?;
        let trial = env.get("trial") == Some("1");
        Some(BootState { env, booted, trial })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(v: &str, b: u64) -> Release {
        Release {
            version: v.to_owned(),
            build: b,
        }
    }

    #[test]
    fn garbage_lines_are_dropped_and_unknown_keys_kept() {
        let env = BootEnv::parse(
            "slot=b\n\u{0}\u{1}garbage\n\nnot a line\n=x\nFOO=bar\nfuture_key=1 2 3\r\ntry=a\n",
        );
        assert_eq!(env.slot(), Some(Slot::B));
        assert_eq!(env.try_slot(), Some(Slot::A));
        assert_eq!(env.get("future_key"), Some("1 2 3"));
        assert_eq!(env.get("FOO"), None, "keys are lowercase names");
        assert_eq!(env.render(), "slot=b\nfuture_key=1 2 3\ntry=a\n");
        // A value that is not a slot reads as none.
        let env = BootEnv::parse("slot=c\ntry=\ntried=ab\n");
        assert_eq!(
            (env.slot(), env.try_slot(), env.tried()),
            (None, None, None)
        );
    }

    #[test]
    fn set_replaces_in_place_and_removes_repeats() {
        let mut env = BootEnv::parse("slot=a\ntry=b\nslot=b\nx=1\n");
        assert_eq!(
            env.slot(),
            Some(Slot::B),
            "the last repeat wins when reading"
        );
        env.set("slot", "a");
        assert_eq!(env.render(), "slot=a\ntry=b\nx=1\n");
        env.set("last", "rolled-back b 0.2.0 5 9 reason\nslot=b");
        assert_eq!(env.slot(), Some(Slot::A), "a newline cannot forge a key");
        assert!(env.remove("try"));
        assert!(!env.remove("try"));
        assert_eq!(env.try_slot(), None);
    }

    #[test]
    fn releases_and_outcomes_round_trip() {
        let mut env = BootEnv::default();
        env.set_release(Slot::B, &rel("0.2.0", 1_700_000_100));
        assert_eq!(env.release(Slot::B), Some(rel("0.2.0", 1_700_000_100)));
        assert_eq!(env.release(Slot::A), None);
        let last = LastOutcome {
            outcome: Outcome::RolledBack,
            slot: Slot::B,
            release: rel("0.2.0", 1_700_000_100),
            time: 1_750_000_000,
            reason: "outpostd did not answer\non its admin socket".to_owned(),
        };
        env.set_last(&last);
        assert_eq!(
            env.get("last"),
            Some("rolled-back b 0.2.0 1700000100 1750000000 outpostd did not answer on its admin socket")
        );
        let back = env.last().expect("parses");
        assert_eq!(back.reason, "outpostd did not answer on its admin socket");
        assert_eq!(back.release, last.release);
        assert_eq!(LastOutcome::parse("committed a 0.1.0 7 8"), {
            Some(LastOutcome {
                outcome: Outcome::Committed,
                slot: Slot::A,
                release: rel("0.1.0", 7),
                time: 8,
                reason: String::new(),
            })
        });
        assert_eq!(LastOutcome::parse("exploded a 0.1.0 7 8"), None);
        assert_eq!(LastOutcome::parse("committed a 0.1.0 seven 8"), None);
        // A version with spaces stays one word.
        assert_eq!(release_words(&rel("1 2", 3)), "1_2 3");
    }

    #[test]
    fn boot_state_needs_the_booted_slot() {
        let s = BootState::parse("slot=a\ntried=b\nbooted=b\ntrial=1\n").expect("valid");
        assert_eq!((s.booted, s.trial), (Slot::B, true));
        assert_eq!(s.env.tried(), Some(Slot::B));
        let s = BootState::parse("slot=a\nbooted=a\ntrial=\n").expect("valid");
        assert!(!s.trial);
        assert_eq!(BootState::parse("slot=a\ntrial=0\n"), None);
    }
}

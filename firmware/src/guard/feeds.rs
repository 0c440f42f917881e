//! Blocklist feed reconciliation: which addresses the `[firewall] feeds` list now, and the
//! bans with rule `feed` that follow them.
//!
//! Each feed (a file, or an HTTPS URL) is read by the `feed-reader` thread ([`FeedReader`]) when [`Feeds::tick`]
//! finds it due (at start, then every `refresh_secs`); a later tick (within
//! [`FEED_POLL_MS`], see [`Feeds::poll_timeout`]) takes the result. Its addresses are
//! banned with rule `feed` for `ban_secs` (renewed once half of that has passed, while they
//! stay listed) and lifted at the first good read that no longer lists them. A read that
//! fails (file missing, too large, not a feed) changes nothing: the bans of the last good
//! read stay until they end. Trusted addresses ([`RuntimeAllow::trusts`]) are never banned.
//! An address already banned by a rule for longer keeps that ban; one banned for less is
//! taken over by the feed and gets its old ban back (if still running) when it leaves the
//! feed. Feed bans are not stored (the file is their record and is read again at start).
//!
//! The detector holds the bans; each tick returns the kernel set updates that match.
//! Bounds: every feed's parse is bounded ([`MAX_FEED_ENTRIES`]); all feeds together ban at
//! most half the detector's ban table.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use firewall::detect::{Detector, Rule};
use firewall::net::Cidr;
use firewall::nft::SetOp;
use pbx_core::Millis;

use super::allow::RuntimeAllow;
use super::api::FwFeedInfo;
use super::config::FeedConfig;
use super::feed::{FeedError, FeedReader, FeedSource, ParsedFeed, MAX_FEED_ENTRIES};

/// How often a feed read in flight is looked for.
pub const FEED_POLL_MS: u64 = 20;

/// One blocklist feed: its settings, what its last good read listed, and its health.
#[derive(Debug)]
struct FeedState {
    source: FeedSource,
    refresh_ms: u64,
    ban_ms: u64,
    /// The addresses to ban from the last good read (trusted ones left out).
    listed: HashSet<IpAddr>,
    next_read: Millis,
    in_flight: bool,
    health: FwFeedInfo,
}

/// The blocklist feeds, their reader thread and the bans they took over.
#[derive(Debug)]
pub struct Feeds {
    /// In configuration order.
    feeds: Vec<FeedState>,
    /// Reads feed files off the daemon's loop (None without feeds).
    reader: Option<FeedReader>,
    /// When to look for a finished read (while one is in flight).
    poll_at: Option<Millis>,
    /// Bans a feed took over, to give back when the address leaves the feeds.
    displaced: HashMap<IpAddr, (Rule, Millis)>,
    /// Listed addresses past the feeds' overall limit at the last reconciliation.
    overflow: usize,
}

impl Feeds {
    /// The feeds of the configuration, all due at `now`; starts the reader thread when
    /// there are any (if it cannot start, each feed's health says so and none is read).
    pub fn new(cfgs: &[FeedConfig], now: Millis) -> Feeds {
        let mut feeds = Feeds {
            feeds: cfgs
                .iter()
                .map(|f| FeedState {
                    source: FeedSource::of(&f.source, f.ca.as_deref()),
                    refresh_ms: f.refresh_secs.saturating_mul(1_000),
                    ban_ms: f.ban_secs.saturating_mul(1_000),
                    listed: HashSet::new(),
                    next_read: now,
                    in_flight: false,
                    health: FwFeedInfo {
                        source: f.source.clone(),
                        refresh_secs: f.refresh_secs,
                        ban_secs: f.ban_secs,
                        entries: 0,
                        ignored: 0,
                        invalid: 0,
                        too_wide: 0,
                        truncated: 0,
                        last_refresh: None,
                        reads: 0,
                        failures: 0,
                        last_error: None,
                    },
                })
                .collect(),
            reader: None,
            poll_at: None,
            displaced: HashMap::new(),
            overflow: 0,
        };
        if !feeds.feeds.is_empty() {
            match FeedReader::spawn(feeds.feeds.len()) {
                Ok(reader) => feeds.reader = Some(reader),
                Err(err) => {
                    tracing::error!(%err, "firewall: cannot start the feed reader thread; blocklist feeds are off");
                    for f in &mut feeds.feeds {
                        f.health.last_error =
                            Some(format!("cannot start the feed reader thread: {err}"));
                    }
                }
            }
        }
        feeds
    }

    /// How many feeds are configured.
    pub fn len(&self) -> usize {
        self.feeds.len()
    }

    /// Whether no feed is configured.
    pub fn is_empty(&self) -> bool {
        self.feeds.is_empty()
    }

    /// When [`Feeds::tick`] next has work: a read due, or one in flight to look for.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.reader.as_ref()?;
        self.feeds
            .iter()
            .filter(|f| !f.in_flight)
            .map(|f| f.next_read)
            .chain(self.poll_at)
            .min()
    }

    /// Starts the feed reads that are due and applies the finished ones to `detector`;
    /// returns the kernel set updates that follow.
    pub fn tick(
        &mut self,
        now: Millis,
        detector: &mut Detector,
        allow: &RuntimeAllow,
    ) -> Vec<SetOp> {
        let Some(reader) = self.reader.as_ref() else {
            return Vec::new();
        };
        let mut done = Vec::new();
        while let Some(result) = reader.poll() {
            done.push(result);
        }
        let mut unavailable = Vec::new();
        for (i, f) in self.feeds.iter_mut().enumerate() {
            if f.in_flight || f.next_read > now {
                continue;
            }
            f.next_read = now.saturating_add(f.refresh_ms);
            if reader.request(i, &f.source, now) {
                f.in_flight = true;
            } else {
                unavailable.push(i);
            }
        }
        for i in unavailable {
            self.failed(i, "the feed reader thread is not running".to_string());
        }
        let mut ops = Vec::new();
        if !done.is_empty() {
            for (i, result) in done {
                let trusted = |a: IpAddr| allow.trusts(detector.config(), a);
                self.read(now, i, result, trusted);
            }
            ops = self.reconcile(now, detector);
        }
        self.poll_at = self
            .feeds
            .iter()
            .any(|f| f.in_flight)
            .then(|| now.saturating_add(FEED_POLL_MS));
        ops
    }

    /// The feeds (by source) that list `ip` now.
    pub fn listing(&self, ip: IpAddr) -> Vec<&str> {
        self.feeds
            .iter()
            .filter(|f| f.listed.contains(&ip))
            .map(|f| f.health.source.as_str())
            .collect()
    }

    /// The admin unbanned or banned `ip` himself: a ban the feeds took over from it is not
    /// given back.
    pub fn forget(&mut self, ip: IpAddr) {
        self.displaced.remove(&ip);
    }

    /// `net` was allowed: the next reconciliation must not ban its addresses again.
    pub fn exclude(&mut self, net: Cidr) {
        for f in &mut self.feeds {
            f.listed.retain(|a| !net.contains(*a));
        }
    }

    /// Each feed's health, in configuration order.
    pub fn health(&self) -> Vec<FwFeedInfo> {
        self.feeds.iter().map(|f| f.health.clone()).collect()
    }

    /// Whether a read is in flight (tests wait for it).
    #[cfg(test)]
    pub fn in_flight(&self) -> bool {
        self.feeds.iter().any(|f| f.in_flight)
    }

    /// Records one finished read of feed `i`.
    fn read(
        &mut self,
        now: Millis,
        i: usize,
        result: Result<ParsedFeed, FeedError>,
        trusted: impl Fn(IpAddr) -> bool,
    ) {
        let parsed = match result {
            Ok(parsed) => parsed,
            Err(err) => {
                if let Some(f) = self.feeds.get_mut(i) {
                    f.in_flight = false;
                }
                self.failed(i, err.to_string());
                return;
            }
        };
        let listed: HashSet<IpAddr> = parsed
            .addrs
            .iter()
            .copied()
            .filter(|a| !trusted(*a))
            .collect();
        let Some(f) = self.feeds.get_mut(i) else {
            return;
        };
        f.in_flight = false;
        let h = &mut f.health;
        let problems_changed = (h.invalid, h.too_wide, h.truncated)
            != (parsed.invalid, parsed.too_wide, parsed.truncated);
        h.reads += 1;
        h.entries = parsed.addrs.len();
        h.ignored = parsed.addrs.len() - listed.len();
        h.invalid = parsed.invalid;
        h.too_wide = parsed.too_wide;
        h.truncated = parsed.truncated;
        h.last_refresh = Some(now);
        if h.last_error.take().is_some() {
            tracing::info!(feed = %h.source, "firewall: blocklist feed readable again");
        }
        if problems_changed && !parsed.problems.is_empty() {
            tracing::warn!(
                feed = %h.source,
                invalid = parsed.invalid,
                too_wide = parsed.too_wide,
                truncated = parsed.truncated,
                "firewall: blocklist feed: entries skipped: {}",
                parsed.problems.join("; ")
            );
        }
        if problems_changed && parsed.truncated > 0 {
            tracing::warn!(
                feed = %h.source,
                "firewall: blocklist feed lists more than {MAX_FEED_ENTRIES} addresses; {} skipped",
                parsed.truncated
            );
        }
        f.listed = listed;
    }

    /// Records a failed read of feed `i`; its bans stay until they end.
    fn failed(&mut self, i: usize, text: String) {
        let Some(f) = self.feeds.get_mut(i) else {
            return;
        };
        let h = &mut f.health;
        h.reads += 1;
        h.failures += 1;
        if h.last_error.as_deref() != Some(text.as_str()) {
            tracing::error!(
                feed = %h.source,
                "firewall: blocklist feed cannot be used: {text}; the bans of its last good read stay until they end"
            );
        }
        h.last_error = Some(text);
    }

    /// Makes the bans with rule `feed` match what the feeds list now: bans the new
    /// addresses, renews those past half their time, lifts those no feed lists any more.
    fn reconcile(&mut self, now: Millis, detector: &mut Detector) -> Vec<SetOp> {
        let cap = MAX_FEED_ENTRIES
            .min(detector.config().limits.max_bans / 2)
            .max(1);
        let mut desired: HashMap<IpAddr, u64> = HashMap::new();
        let mut overflow = 0;
        for f in &self.feeds {
            for &addr in &f.listed {
                let room = desired.len() < cap;
                match desired.get_mut(&addr) {
                    Some(ms) => *ms = (*ms).max(f.ban_ms),
                    None if room => {
                        desired.insert(addr, f.ban_ms);
                    }
                    None => overflow += 1,
                }
            }
        }
        if overflow != self.overflow && overflow > 0 {
            tracing::warn!(
                "firewall: blocklist feeds list {overflow} addresses past the limit of {cap}; those are not banned"
            );
        }
        self.overflow = overflow;

        let current: HashMap<IpAddr, (Rule, Millis)> = detector
            .bans(now)
            .into_iter()
            .map(|b| (b.addr, (b.rule, b.until)))
            .collect();
        let (mut added, mut renewed, mut lifted) = (0usize, 0usize, 0usize);
        let mut ops = Vec::new();
        for (&addr, &ban_ms) in &desired {
            let until = now.saturating_add(ban_ms);
            match current.get(&addr) {
                Some(&(Rule::Feed, old)) => {
                    if old.saturating_sub(now) >= ban_ms / 2 {
                        continue;
                    }
                    renewed += 1;
                }
                Some(&(rule, old)) => {
                    if old >= until {
                        continue;
                    }
                    if self.displaced.len() < cap {
                        self.displaced.insert(addr, (rule, old));
                    }
                    added += 1;
                }
                None => added += 1,
            }
            detector.restore_ban(now, addr, until, Rule::Feed, 1);
            ops.push(SetOp::Ban {
                addr,
                timeout_secs: ban_ms.div_ceil(1_000),
            });
        }
        for (&addr, &(rule, _)) in &current {
            if rule != Rule::Feed || desired.contains_key(&addr) {
                continue;
            }
            lifted += 1;
            match self.displaced.remove(&addr) {
                Some((old_rule, old_until)) if old_until > now => {
                    detector.restore_ban(now, addr, old_until, old_rule, 1);
                    ops.push(SetOp::Ban {
                        addr,
                        timeout_secs: (old_until - now).div_ceil(1_000),
                    });
                }
                _ => {
                    detector.unban(addr);
                    ops.push(SetOp::Unban(addr));
                }
            }
        }
        self.displaced
            .retain(|addr, (_, until)| *until > now && desired.contains_key(addr));
        if added + renewed + lifted > 0 {
            tracing::info!(
                listed = desired.len(),
                added,
                renewed,
                lifted,
                "firewall: blocklist feeds applied"
            );
        }
        ops
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use std::time::{Duration, Instant};

    use firewall::detect::DetectConfig;

    use super::*;

    const T0: Millis = 1_700_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn feeds_of(path: &std::path::Path) -> Feeds {
        Feeds::new(
            &[FeedConfig {
                source: path.to_str().unwrap().to_string(),
                ca: None,
                refresh_secs: 2,
                ban_secs: 600,
            }],
            T0,
        )
    }

    /// Ticks at `now` until the reads it starts are applied (the reader is a real thread;
    /// the virtual clock stands still meanwhile); returns every set update.
    fn refresh(f: &mut Feeds, now: Millis, d: &mut Detector, allow: &RuntimeAllow) -> Vec<SetOp> {
        let mut ops = f.tick(now, d, allow);
        let deadline = Instant::now() + Duration::from_secs(5);
        while f.in_flight() {
            assert!(Instant::now() < deadline, "the feed read did not finish");
            std::thread::sleep(Duration::from_millis(2));
            ops.extend(f.tick(now, d, allow));
        }
        ops
    }

    #[test]
    fn listed_addresses_are_banned_renewed_and_lifted_with_set_updates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drop.txt");
        std::fs::write(&path, "203.0.113.9\n127.0.0.1\n192.0.2.7\n").unwrap();
        let mut d = Detector::new(DetectConfig::default());
        let mut allow = RuntimeAllow::default();
        allow.add("192.0.2.0/24".parse().unwrap());
        let mut f = feeds_of(&path);
        assert_eq!(f.len(), 1);
        assert_eq!(f.poll_timeout(), Some(T0), "due at start");

        let ban = |secs| SetOp::Ban {
            addr: ip("203.0.113.9"),
            timeout_secs: secs,
        };
        assert_eq!(refresh(&mut f, T0, &mut d, &allow), [ban(600)]);
        assert!(d.is_banned(T0, ip("203.0.113.9")));
        assert_eq!(f.listing(ip("203.0.113.9")), [path.to_str().unwrap()]);
        assert!(
            f.listing(ip("192.0.2.7")).is_empty(),
            "trusted: never listed"
        );
        let h = &f.health()[0];
        assert_eq!((h.entries, h.ignored, h.reads), (3, 2, 1));
        assert_eq!(f.poll_timeout(), Some(T0 + 2_000));

        // Unchanged within half the ban: nothing sent; past half of it: renewed.
        assert!(refresh(&mut f, T0 + 2_000, &mut d, &allow).is_empty());
        assert_eq!(refresh(&mut f, T0 + 301_000, &mut d, &allow), [ban(600)]);

        // Gone from the file: lifted.
        std::fs::write(&path, "").unwrap();
        assert_eq!(
            refresh(&mut f, T0 + 303_000, &mut d, &allow),
            [SetOp::Unban(ip("203.0.113.9"))]
        );
        assert!(!d.is_banned(T0 + 303_000, ip("203.0.113.9")));

        // A failed read changes nothing and is counted.
        std::fs::remove_file(&path).unwrap();
        assert!(refresh(&mut f, T0 + 305_000, &mut d, &allow).is_empty());
        let h = &f.health()[0];
        assert_eq!((h.reads, h.failures), (5, 1));
        assert!(h.last_error.as_deref().unwrap().contains("drop.txt"));
    }

    #[test]
    fn a_shorter_ban_is_taken_over_and_given_back_a_longer_one_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drop.txt");
        std::fs::write(&path, "203.0.113.9\n203.0.113.10\n").unwrap();
        let mut d = Detector::new(DetectConfig::default());
        let allow = RuntimeAllow::default();
        d.restore_ban(T0, ip("203.0.113.9"), T0 + 86_400_000, Rule::Scanner, 1);
        d.restore_ban(T0, ip("203.0.113.10"), T0 + 60_000, Rule::Manual, 1);
        let mut f = feeds_of(&path);
        let ops = refresh(&mut f, T0, &mut d, &allow);
        assert_eq!(
            ops,
            [SetOp::Ban {
                addr: ip("203.0.113.10"),
                timeout_secs: 600
            }]
        );
        let rule_of = |d: &Detector, a: &str, now| {
            d.bans(now)
                .into_iter()
                .find(|b| b.addr == ip(a))
                .map(|b| (b.rule, b.until))
        };
        assert_eq!(
            rule_of(&d, "203.0.113.9", T0).unwrap().0,
            Rule::Scanner,
            "longer: kept"
        );
        std::fs::write(&path, "").unwrap();
        let ops = refresh(&mut f, T0 + 2_000, &mut d, &allow);
        assert_eq!(
            ops,
            [SetOp::Ban {
                addr: ip("203.0.113.10"),
                timeout_secs: 58
            }]
        );
        assert_eq!(
            rule_of(&d, "203.0.113.10", T0 + 2_000),
            Some((Rule::Manual, T0 + 60_000)),
            "the shorter ban is back with its own end"
        );
        // Once forgotten (the admin acted on it), nothing is given back.
        std::fs::write(&path, "203.0.113.10\n").unwrap();
        refresh(&mut f, T0 + 4_000, &mut d, &allow);
        f.forget(ip("203.0.113.10"));
        std::fs::write(&path, "").unwrap();
        assert_eq!(
            refresh(&mut f, T0 + 6_000, &mut d, &allow),
            [SetOp::Unban(ip("203.0.113.10"))]
        );
    }

    #[test]
    fn without_feeds_there_is_no_thread_and_no_deadline() {
        let mut f = Feeds::new(&[], T0);
        let mut d = Detector::new(DetectConfig::default());
        assert_eq!(f.poll_timeout(), None);
        assert!(f.tick(T0, &mut d, &RuntimeAllow::default()).is_empty());
        assert!(f.health().is_empty());
    }
}

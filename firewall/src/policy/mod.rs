//! Toll-fraud policy: every outbound call attempt is checked before it reaches a trunk.
//!
//! Pure and deterministic like [`crate::detect`]: time is the `now` argument, local time is
//! UTC plus `local_offset_minutes`. The call core asks [`CallPolicy::check`] for each call
//! attempt of an authenticated extension and reports [`CallPolicy::call_ended`] for every
//! attempt that was allowed (with 0 talk seconds when it never connected): each `Allow`
//! must be paired with exactly one `call_ended`, or the concurrency counts drift.
//!
//! # Order of the checks
//! 1. **Emergency** numbers are always allowed and bypass every limit, even for a locked
//!    extension (they still occupy a concurrency slot while they last).
//! 2. **Internal** destinations (extensions, names, feature codes) are always allowed and
//!    never counted; a locked extension is "locked to internal".
//! 3. A **locked** extension is refused every other destination.
//! 4. **Call rate**: more than `calls_per_minute` external attempts (allowed or not) within
//!    the window — the 6th in a minute by default — locks the extension and raises an alert.
//! 5. **Destination class** not allowed for the extension (international is off by default;
//!    premium and high-risk are denied unless listed explicitly; attempting them also locks
//!    the extension by default, see `lock_on`).
//! 6. **Business hours** for international and high-risk calls, when configured.
//! 7. **Daily international minutes**, per extension and for the site (minutes of ended
//!    calls; the day changes at local midnight; a call is refused once the budget is used up).
//! 8. **Concurrent calls** per extension (external calls) and per trunk.
//!
//! The **burst alarm** watches all extensions together: `burst.calls` external attempts to
//! the same number prefix (first 6 digits) within `burst.window_ms` raise an alert, without
//! refusing anything.
//!
//! # Alerts
//! Every refusal with `alert: true`, every lock and every burst queues a [`PolicyAlert`];
//! drain them with [`CallPolicy::poll_alert`]. `Refuse::alert` only says one was queued.

mod hours;
mod plan;

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::table::LruTable;
use crate::window::{fnv1a, Window};
use crate::Millis;

pub use hours::{BusinessHours, LocalTime, TimeWindow, Weekday};
pub use plan::{classify, DestClass, LenRange, NumberingPlan};

/// Why a policy setting was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// A daily window is not `HH:MM-HH:MM` with distinct, valid times.
    #[error("bad time window {0:?}: expected HH:MM-HH:MM")]
    TimeWindow(String),
}

/// Everything [`CallPolicy`] can be told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// How numbers are dialled here.
    pub plan: NumberingPlan,
    /// Destination classes every extension may call unless it has its own list.
    /// Default: internal, emergency, local, national, mobile.
    pub allowed: Vec<DestClass>,
    /// Per-extension overrides, by extension.
    pub extensions: BTreeMap<String, ExtensionPolicy>,
    /// External call attempts allowed per extension within `rate_window_ms`; one more locks
    /// the extension to internal calls. 0 disables the rule.
    pub calls_per_minute: u32,
    /// Window of the call-rate rule, ms.
    pub rate_window_ms: u64,
    /// Concurrent external calls per extension.
    pub max_concurrent_per_extension: u32,
    /// Concurrent calls per trunk, unless the trunk has its own cap in `trunks`.
    pub max_concurrent_per_trunk: u32,
    /// Per-trunk concurrency caps, by trunk name.
    pub trunks: BTreeMap<String, u32>,
    /// When international (and allowed high-risk) calls may be made; `None` = always.
    pub business_hours: Option<BusinessHours>,
    /// Local time = UTC + this many minutes (business hours, day boundary of budgets).
    pub local_offset_minutes: i32,
    /// International minutes per extension and local day; `None` = unlimited.
    pub intl_minutes_per_extension: Option<u32>,
    /// International minutes for the whole site and local day; `None` = unlimited.
    pub intl_minutes_global: Option<u32>,
    /// Alarm for many calls to one prefix.
    pub burst: BurstRule,
    /// Refusals that also lock the extension to internal calls. Default: the call rate
    /// (always locks, whatever this says), premium-rate and high-risk attempts; an
    /// international call from an extension without international is a common mistake and
    /// only alerts.
    pub lock_on: Vec<PolicyRule>,
    /// Table sizes.
    pub limits: PolicyLimits,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            plan: NumberingPlan::default(),
            allowed: vec![
                DestClass::Internal,
                DestClass::Emergency,
                DestClass::Local,
                DestClass::National,
                DestClass::Mobile,
            ],
            extensions: BTreeMap::new(),
            calls_per_minute: 5,
            rate_window_ms: 60_000,
            max_concurrent_per_extension: 4,
            max_concurrent_per_trunk: 30,
            trunks: BTreeMap::new(),
            business_hours: None,
            local_offset_minutes: 0,
            intl_minutes_per_extension: Some(60),
            intl_minutes_global: Some(240),
            burst: BurstRule::default(),
            lock_on: vec![
                PolicyRule::CallRate,
                PolicyRule::Premium,
                PolicyRule::HighRisk,
            ],
            limits: PolicyLimits::default(),
        }
    }
}

/// Settings of one extension; unset fields fall back to the site-wide ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtensionPolicy {
    /// Destination classes this extension may call (replaces the site-wide list).
    pub allowed: Option<Vec<DestClass>>,
    /// Concurrent external calls.
    pub max_concurrent: Option<u32>,
    /// External call attempts per rate window.
    pub calls_per_minute: Option<u32>,
    /// International minutes per local day.
    pub intl_minutes_per_day: Option<u32>,
}

/// Burst alarm: `calls` attempts to one `prefix_len`-digit prefix within `window_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BurstRule {
    /// Attempts that raise the alarm; 0 disables it.
    pub calls: u32,
    /// Window length, ms.
    pub window_ms: u64,
    /// Digits of the prefix.
    pub prefix_len: usize,
}

impl Default for BurstRule {
    fn default() -> Self {
        BurstRule {
            calls: 10,
            window_ms: 10 * 60_000,
            prefix_len: 6,
        }
    }
}

/// Table sizes of the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyLimits {
    /// Extensions with live state (idle, unlocked ones are evicted when full).
    pub max_extensions: usize,
    /// Number prefixes watched by the burst alarm (least recently dialled evicted).
    pub max_prefixes: usize,
    /// Alerts waiting for `poll_alert`; the oldest are dropped beyond this.
    pub max_alerts: usize,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        PolicyLimits {
            max_extensions: 10_000,
            max_prefixes: 4_096,
            max_alerts: 1_024,
        }
    }
}

/// The toll-fraud rules, for refusals, alerts and hit counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyRule {
    /// The extension is locked to internal calls.
    Locked,
    /// Too many external call attempts per minute (locks the extension).
    CallRate,
    /// The destination class is not allowed for the extension.
    ClassNotAllowed,
    /// A premium-rate number.
    Premium,
    /// A high-risk country code.
    HighRisk,
    /// International call outside business hours.
    BusinessHours,
    /// The extension's daily international minutes are used up.
    IntlBudget,
    /// The site's daily international minutes are used up.
    IntlBudgetGlobal,
    /// Too many concurrent calls of the extension.
    ConcurrentExtension,
    /// Too many concurrent calls on the trunk.
    ConcurrentTrunk,
    /// Many calls to one prefix (alarm only).
    Burst,
}

impl PolicyRule {
    /// Every rule, in the order [`CallPolicy::rule_hits`] reports them.
    pub const ALL: [PolicyRule; 11] = [
        PolicyRule::Locked,
        PolicyRule::CallRate,
        PolicyRule::ClassNotAllowed,
        PolicyRule::Premium,
        PolicyRule::HighRisk,
        PolicyRule::BusinessHours,
        PolicyRule::IntlBudget,
        PolicyRule::IntlBudgetGlobal,
        PolicyRule::ConcurrentExtension,
        PolicyRule::ConcurrentTrunk,
        PolicyRule::Burst,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// The answer to a call attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Place the call (and report `call_ended` for it later).
    Allow,
    /// Refuse the call (403 with `reason`).
    Refuse {
        /// Human-readable cause, fit for a SIP reason phrase.
        reason: String,
        /// The rule that refused.
        rule: PolicyRule,
        /// The extension has just been locked to internal calls (persist it; the driver may
        /// also ban the caller's source with `Detector::ban_source(.., Rule::TollFraud, ..)`).
        lock_extension: bool,
        /// An alert was queued for this refusal.
        alert: bool,
    },
}

/// A toll-fraud alert for the admin and syslog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyAlert {
    /// When, ms since the epoch.
    pub at: Millis,
    /// The rule that fired.
    pub rule: PolicyRule,
    /// The calling extension (`None` for the site-wide burst alarm).
    pub ext: Option<String>,
    /// The number dialled (the prefix, for a burst).
    pub dialled: String,
    /// Human-readable text.
    pub message: String,
}

#[derive(Debug, Default)]
struct DayCounter {
    day: i64,
    secs: u64,
}

impl DayCounter {
    fn used(&mut self, day: i64) -> u64 {
        if self.day != day {
            self.day = day;
            self.secs = 0;
        }
        self.secs
    }

    fn add(&mut self, day: i64, secs: u64) {
        self.used(day);
        self.secs = self.secs.saturating_add(secs);
    }
}

#[derive(Debug, Default)]
struct ExtState {
    locked: bool,
    /// Times of recent external attempts (at most the rate limit + 1).
    attempts: VecDeque<Millis>,
    /// External calls in progress.
    active: u32,
    intl: DayCounter,
}

/// Per-extension and per-trunk toll-fraud state.
#[derive(Debug)]
pub struct CallPolicy {
    cfg: PolicyConfig,
    exts: HashMap<String, ExtState>,
    trunks: HashMap<String, u32>,
    prefixes: LruTable<u64, Window>,
    global_intl: DayCounter,
    alerts: VecDeque<PolicyAlert>,
    hits: [u64; PolicyRule::ALL.len()],
    alerts_dropped: u64,
}

impl CallPolicy {
    /// A policy with no state.
    pub fn new(cfg: PolicyConfig) -> Self {
        CallPolicy {
            prefixes: LruTable::new(cfg.limits.max_prefixes),
            exts: HashMap::new(),
            trunks: HashMap::new(),
            global_intl: DayCounter::default(),
            alerts: VecDeque::new(),
            hits: [0; PolicyRule::ALL.len()],
            alerts_dropped: 0,
            cfg,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// Judges a call attempt by `ext` to `dialled` over `trunk` (if already chosen).
    pub fn check(
        &mut self,
        now: Millis,
        ext: &str,
        dialled: &str,
        trunk: Option<&str>,
    ) -> Decision {
        let class = classify(&self.cfg.plan, dialled);
        match class {
            DestClass::Emergency => {
                self.start_call(ext, trunk);
                return Decision::Allow;
            }
            DestClass::Internal => return Decision::Allow,
            _ => {}
        }
        self.watch_burst(now, dialled);

        let over = self.ext_override(ext).cloned().unwrap_or_default();
        let rate_limit = over.calls_per_minute.unwrap_or(self.cfg.calls_per_minute);
        let rate_window = self.cfg.rate_window_ms;
        let Some(st) = self.ext_state(ext) else {
            return self.refuse(
                now,
                ext,
                dialled,
                PolicyRule::ConcurrentExtension,
                "policy table full".into(),
                false,
                false,
            );
        };
        if st.locked {
            return self.refuse(
                now,
                ext,
                dialled,
                PolicyRule::Locked,
                "extension locked to internal calls".into(),
                false,
                false,
            );
        }
        if rate_limit > 0 {
            while st
                .attempts
                .front()
                .is_some_and(|&t| t.saturating_add(rate_window) <= now)
            {
                st.attempts.pop_front();
            }
            st.attempts.push_back(now);
            let limit = rate_limit as usize;
            while st.attempts.len() > limit + 1 {
                st.attempts.pop_front();
            }
            if st.attempts.len() > limit {
                st.locked = true;
                st.attempts.clear();
                let reason = format!(
                    "more than {rate_limit} external calls within {} s: extension locked to internal calls",
                    rate_window / 1_000
                );
                return self.refuse(now, ext, dialled, PolicyRule::CallRate, reason, true, true);
            }
        }

        let allowed = over.allowed.as_ref().unwrap_or(&self.cfg.allowed);
        if !allowed.contains(&class) {
            let (rule, what) = match class {
                DestClass::Premium => (PolicyRule::Premium, "premium-rate numbers"),
                DestClass::HighRisk => (PolicyRule::HighRisk, "high-risk destinations"),
                DestClass::International => (PolicyRule::ClassNotAllowed, "international calls"),
                DestClass::Mobile => (PolicyRule::ClassNotAllowed, "mobile calls"),
                DestClass::National => (PolicyRule::ClassNotAllowed, "national calls"),
                _ => (PolicyRule::ClassNotAllowed, "local calls"),
            };
            let alert = matches!(
                class,
                DestClass::International | DestClass::Premium | DestClass::HighRisk
            );
            let reason = format!("{what} not allowed for this extension");
            return self.refuse(now, ext, dialled, rule, reason, false, alert);
        }

        let international = matches!(class, DestClass::International | DestClass::HighRisk);
        if international {
            let local = LocalTime::at(now, self.cfg.local_offset_minutes);
            if let Some(bh) = &self.cfg.business_hours {
                if !bh.contains(local) {
                    let reason = format!("international calls only {} on business days", bh.hours);
                    return self.refuse(
                        now,
                        ext,
                        dialled,
                        PolicyRule::BusinessHours,
                        reason,
                        false,
                        true,
                    );
                }
            }
            let ext_budget = over
                .intl_minutes_per_day
                .or(self.cfg.intl_minutes_per_extension);
            let global_budget = self.cfg.intl_minutes_global;
            let ext_used = self.ext_state(ext).map_or(0, |s| s.intl.used(local.day));
            if let Some(b) = ext_budget {
                if ext_used >= u64::from(b) * 60 {
                    let reason = format!("daily international budget of {b} min used up");
                    return self.refuse(
                        now,
                        ext,
                        dialled,
                        PolicyRule::IntlBudget,
                        reason,
                        false,
                        true,
                    );
                }
            }
            if let Some(b) = global_budget {
                if self.global_intl.used(local.day) >= u64::from(b) * 60 {
                    let reason = format!("site-wide daily international budget of {b} min used up");
                    return self.refuse(
                        now,
                        ext,
                        dialled,
                        PolicyRule::IntlBudgetGlobal,
                        reason,
                        false,
                        true,
                    );
                }
            }
        }

        let ext_cap = over
            .max_concurrent
            .unwrap_or(self.cfg.max_concurrent_per_extension);
        if self.exts.get(ext).map_or(0, |s| s.active) >= ext_cap {
            let reason = format!("at most {ext_cap} concurrent external calls per extension");
            return self.refuse(
                now,
                ext,
                dialled,
                PolicyRule::ConcurrentExtension,
                reason,
                false,
                false,
            );
        }
        if let Some(t) = trunk {
            let cap = self.trunk_cap(t);
            if self.trunks.get(t).copied().unwrap_or(0) >= cap {
                let reason = format!("trunk {t} is at its limit of {cap} concurrent calls");
                return self.refuse(
                    now,
                    ext,
                    dialled,
                    PolicyRule::ConcurrentTrunk,
                    reason,
                    false,
                    false,
                );
            }
        }
        self.start_call(ext, trunk);
        Decision::Allow
    }

    /// Reports the end of a call that `check` allowed (`talk_secs` 0 if it never connected).
    pub fn call_ended(
        &mut self,
        now: Millis,
        ext: &str,
        dialled: &str,
        trunk: Option<&str>,
        talk_secs: u64,
    ) {
        let class = classify(&self.cfg.plan, dialled);
        if class == DestClass::Internal {
            return;
        }
        let day = LocalTime::at(now, self.cfg.local_offset_minutes).day;
        let international = matches!(class, DestClass::International | DestClass::HighRisk);
        if let Some(st) = self.exts.get_mut(ext) {
            st.active = st.active.saturating_sub(1);
            if international {
                st.intl.add(day, talk_secs);
            }
        }
        if international {
            self.global_intl.add(day, talk_secs);
        }
        if let Some(t) = trunk {
            if let Some(n) = self.trunks.get_mut(t) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.trunks.remove(t);
                }
            }
        }
    }

    /// Locks `ext` to internal (and emergency) calls, e.g. from the admin or the store.
    pub fn lock_to_internal(&mut self, ext: &str) {
        if let Some(st) = self.ext_state(ext) {
            st.locked = true;
        }
    }

    /// Lifts the lock of `ext` and forgets its recent attempts. Returns whether it was locked.
    pub fn unlock(&mut self, ext: &str) -> bool {
        match self.exts.get_mut(ext) {
            Some(st) => {
                st.attempts.clear();
                std::mem::replace(&mut st.locked, false)
            }
            None => false,
        }
    }

    /// Whether `ext` is locked to internal calls.
    pub fn is_locked(&self, ext: &str) -> bool {
        self.exts.get(ext).is_some_and(|s| s.locked)
    }

    /// Every locked extension, sorted (for the store and `outpostctl`).
    pub fn locked(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .exts
            .iter()
            .filter(|(_, s)| s.locked)
            .map(|(e, _)| e.clone())
            .collect();
        v.sort();
        v
    }

    /// External calls in progress of `ext`.
    pub fn active_calls(&self, ext: &str) -> u32 {
        self.exts.get(ext).map_or(0, |s| s.active)
    }

    /// Calls in progress on `trunk`.
    pub fn trunk_calls(&self, trunk: &str) -> u32 {
        self.trunks.get(trunk).copied().unwrap_or(0)
    }

    /// International seconds talked today (local day of `now`) by `ext` and by the site.
    pub fn intl_seconds_today(&mut self, now: Millis, ext: &str) -> (u64, u64) {
        let day = LocalTime::at(now, self.cfg.local_offset_minutes).day;
        let ext_secs = self.exts.get_mut(ext).map_or(0, |s| s.intl.used(day));
        (ext_secs, self.global_intl.used(day))
    }

    /// The next alert, oldest first.
    pub fn poll_alert(&mut self) -> Option<PolicyAlert> {
        self.alerts.pop_front()
    }

    /// Alerts dropped because nobody drained `poll_alert`.
    pub fn alerts_dropped(&self) -> u64 {
        self.alerts_dropped
    }

    /// How often each rule fired, in [`PolicyRule::ALL`] order.
    pub fn rule_hits(&self) -> Vec<(PolicyRule, u64)> {
        PolicyRule::ALL
            .iter()
            .map(|&r| (r, self.hits[r.index()]))
            .collect()
    }

    fn ext_override(&self, ext: &str) -> Option<&ExtensionPolicy> {
        self.cfg.extensions.get(ext)
    }

    fn trunk_cap(&self, trunk: &str) -> u32 {
        self.cfg
            .trunks
            .get(trunk)
            .copied()
            .unwrap_or(self.cfg.max_concurrent_per_trunk)
    }

    /// The state of `ext`, created if needed; `None` only when the table is full of
    /// extensions that are locked or have calls in progress.
    fn ext_state(&mut self, ext: &str) -> Option<&mut ExtState> {
        if !self.exts.contains_key(ext) {
            if self.exts.len() >= self.cfg.limits.max_extensions.max(1) {
                let idle = self
                    .exts
                    .iter()
                    .find(|(_, s)| !s.locked && s.active == 0)
                    .map(|(e, _)| e.clone())?;
                self.exts.remove(&idle);
            }
            self.exts.insert(ext.to_string(), ExtState::default());
        }
        self.exts.get_mut(ext)
    }

    fn start_call(&mut self, ext: &str, trunk: Option<&str>) {
        if let Some(st) = self.ext_state(ext) {
            st.active = st.active.saturating_add(1);
        }
        if let Some(t) = trunk {
            *self.trunks.entry(t.to_string()).or_insert(0) += 1;
        }
    }

    fn watch_burst(&mut self, now: Millis, dialled: &str) {
        let rule = self.cfg.burst.clone();
        if rule.calls == 0 || rule.prefix_len == 0 {
            return;
        }
        let plan::Dialled::Digits { digits, plus } = plan::normalize(dialled) else {
            return;
        };
        // "+53..." and "0053..." are the same destination.
        let full = if plus {
            format!("{}{digits}", self.cfg.plan.international_prefix)
        } else {
            digits
        };
        let prefix: String = full.chars().take(rule.prefix_len).collect();
        let key = fnv1a(prefix.as_bytes());
        let n = self
            .prefixes
            .get_or_insert_with(key, Window::default)
            .add(now, rule.window_ms, 1);
        if n >= rule.calls {
            self.prefixes.remove(&key);
            self.hits[PolicyRule::Burst.index()] += 1;
            let message = format!(
                "{n} calls to prefix {prefix} within {} s from all extensions",
                rule.window_ms / 1_000
            );
            self.push_alert(now, PolicyRule::Burst, None, prefix, message);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn refuse(
        &mut self,
        now: Millis,
        ext: &str,
        dialled: &str,
        rule: PolicyRule,
        reason: String,
        lock_extension: bool,
        alert: bool,
    ) -> Decision {
        self.hits[rule.index()] += 1;
        // A locked extension is refused for being locked: nothing more to lock.
        let lock_extension =
            lock_extension || (rule != PolicyRule::Locked && self.cfg.lock_on.contains(&rule));
        if lock_extension {
            if let Some(st) = self.exts.get_mut(ext) {
                st.locked = true;
                st.attempts.clear();
            }
        }
        if alert {
            let message = format!("refused call from {ext} to {dialled}: {reason}");
            self.push_alert(
                now,
                rule,
                Some(ext.to_string()),
                dialled.to_string(),
                message,
            );
        }
        Decision::Refuse {
            reason,
            rule,
            lock_extension,
            alert,
        }
    }

    fn push_alert(
        &mut self,
        now: Millis,
        rule: PolicyRule,
        ext: Option<String>,
        dialled: String,
        message: String,
    ) {
        if self.alerts.len() >= self.cfg.limits.max_alerts.max(1) {
            self.alerts.pop_front();
            self.alerts_dropped += 1;
        }
        self.alerts.push_back(PolicyAlert {
            at: now,
            rule,
            ext,
            dialled,
            message,
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::field_reassign_with_default)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    /// 2024-01-01 10:00 UTC, a Monday.
    const T0: Millis = 1_704_067_200_000 + 10 * HOUR;
    const SECOND: Millis = 1_000;
    const MINUTE: Millis = 60 * SECOND;
    const HOUR: Millis = 60 * MINUTE;

    fn intl_ext(cfg: &mut PolicyConfig, ext: &str) {
        let mut allowed = cfg.allowed.clone();
        allowed.push(DestClass::International);
        cfg.extensions.insert(
            ext.into(),
            ExtensionPolicy {
                allowed: Some(allowed),
                ..ExtensionPolicy::default()
            },
        );
    }

    fn rule_of(d: &Decision) -> Option<PolicyRule> {
        match d {
            Decision::Allow => None,
            Decision::Refuse { rule, .. } => Some(*rule),
        }
    }

    #[test]
    fn international_is_refused_by_default() {
        let mut p = CallPolicy::new(PolicyConfig::default());
        let d = p.check(T0, "100", "0044 20 7946 0000", Some("sip1"));
        assert_eq!(rule_of(&d), Some(PolicyRule::ClassNotAllowed));
        let Decision::Refuse {
            alert,
            lock_extension,
            ..
        } = d
        else {
            unreachable!()
        };
        assert!(alert && !lock_extension);
        assert!(p.poll_alert().is_some());
        // National and local calls go through.
        assert_eq!(
            p.check(T0, "100", "030 1234567", Some("sip1")),
            Decision::Allow
        );
        assert_eq!(p.check(T0, "100", "7654321", Some("sip1")), Decision::Allow);
        assert_eq!(p.check(T0, "100", "101", None), Decision::Allow);
    }

    #[test]
    fn premium_and_high_risk_are_refused_even_with_international_on() {
        let mut cfg = PolicyConfig::default();
        intl_ext(&mut cfg, "100");
        cfg.lock_on = vec![];
        let mut p = CallPolicy::new(cfg.clone());
        assert_eq!(
            rule_of(&p.check(T0, "100", "0900 123456", None)),
            Some(PolicyRule::Premium)
        );
        assert_eq!(
            rule_of(&p.check(T0, "100", "+53 7 1234567", None)),
            Some(PolicyRule::HighRisk)
        );
        assert_eq!(
            rule_of(&p.check(T0, "100", "00371 1234567", None)),
            Some(PolicyRule::HighRisk)
        );
        assert_eq!(
            p.check(T0, "100", "+44 20 7946 0000", None),
            Decision::Allow
        );
        // By default a premium attempt also locks the extension.
        cfg.lock_on = PolicyConfig::default().lock_on;
        let mut p = CallPolicy::new(cfg);
        let d = p.check(T0, "100", "0900 123456", None);
        assert!(matches!(
            d,
            Decision::Refuse {
                rule: PolicyRule::Premium,
                lock_extension: true,
                alert: true,
                ..
            }
        ));
        assert!(p.is_locked("100"));
        let d = p.check(T0 + 1, "100", "+44 20 7946 0000", None);
        assert_eq!(rule_of(&d), Some(PolicyRule::Locked));
        assert_eq!(p.check(T0 + 2, "100", "112", None), Decision::Allow);
        // Unless listed explicitly for that extension.
        let mut cfg = PolicyConfig::default();
        cfg.extensions.insert(
            "200".into(),
            ExtensionPolicy {
                allowed: Some(vec![DestClass::Premium]),
                ..ExtensionPolicy::default()
            },
        );
        let mut p = CallPolicy::new(cfg);
        assert_eq!(p.check(T0, "200", "0900 123456", None), Decision::Allow);
        assert_eq!(
            rule_of(&p.check(T0, "201", "0900 123456", None)),
            Some(PolicyRule::Premium)
        );
    }

    #[test]
    fn the_6th_call_in_a_minute_locks_to_internal() {
        let mut p = CallPolicy::new(PolicyConfig::default());
        for i in 0..5 {
            assert_eq!(
                p.check(T0 + i * SECOND, "100", "030 1234567", None),
                Decision::Allow,
                "call {}",
                i + 1
            );
            p.call_ended(T0 + i * SECOND, "100", "030 1234567", None, 1);
        }
        let d = p.check(T0 + 5 * SECOND, "100", "030 1234567", None);
        assert_eq!(
            d,
            Decision::Refuse {
                reason:
                    "more than 5 external calls within 60 s: extension locked to internal calls"
                        .into(),
                rule: PolicyRule::CallRate,
                lock_extension: true,
                alert: true
            }
        );
        assert!(p.is_locked("100"));
        assert_eq!(p.locked(), vec!["100".to_string()]);
        let alert = p.poll_alert().unwrap();
        assert_eq!(
            (alert.rule, alert.ext.as_deref()),
            (PolicyRule::CallRate, Some("100"))
        );
        // Locked to internal: internal calls work, external ones do not, long after the minute.
        assert_eq!(p.check(T0 + HOUR, "100", "101", None), Decision::Allow);
        assert_eq!(
            rule_of(&p.check(T0 + HOUR, "100", "030 1234567", None)),
            Some(PolicyRule::Locked)
        );
        assert!(p.unlock("100"));
        assert_eq!(
            p.check(T0 + HOUR, "100", "030 1234567", None),
            Decision::Allow
        );
        // Another extension is not affected, and internal calls never count.
        for i in 0..50 {
            assert_eq!(p.check(T0 + i, "102", "103", None), Decision::Allow);
        }
    }

    #[test]
    fn five_calls_spread_over_more_than_a_minute_do_not_lock() {
        let mut p = CallPolicy::new(PolicyConfig::default());
        for i in 0..20 {
            let now = T0 + i * 13 * SECOND;
            assert_eq!(
                p.check(now, "100", "030 1234567", None),
                Decision::Allow,
                "call {i}"
            );
            p.call_ended(now, "100", "030 1234567", None, 5);
        }
    }

    #[test]
    fn emergency_passes_with_everything_exhausted() {
        let mut cfg = PolicyConfig::default();
        intl_ext(&mut cfg, "100");
        cfg.max_concurrent_per_extension = 1;
        cfg.max_concurrent_per_trunk = 1;
        cfg.intl_minutes_per_extension = Some(1);
        cfg.intl_minutes_global = Some(1);
        cfg.business_hours = Some(BusinessHours {
            days: vec![Weekday::Sun],
            hours: "01:00-02:00".parse().unwrap(),
        });
        let mut p = CallPolicy::new(cfg);
        assert_eq!(
            p.check(T0, "100", "030 1234567", Some("sip1")),
            Decision::Allow
        );
        p.lock_to_internal("100");
        for i in 0..10 {
            assert_eq!(p.check(T0 + i, "100", "112", Some("sip1")), Decision::Allow);
            assert_eq!(p.check(T0 + i, "100", "911", Some("sip1")), Decision::Allow);
        }
        assert_eq!(p.trunk_calls("sip1"), 21);
        p.call_ended(T0 + 20, "100", "112", Some("sip1"), 60);
        assert_eq!(p.trunk_calls("sip1"), 20);
        assert!(
            p.rule_hits().iter().all(|(_, n)| *n == 0),
            "emergency calls hit no rule"
        );
    }

    #[test]
    fn daily_international_budget_per_extension_and_site() {
        let mut cfg = PolicyConfig::default();
        intl_ext(&mut cfg, "100");
        intl_ext(&mut cfg, "101");
        cfg.intl_minutes_per_extension = Some(10);
        cfg.intl_minutes_global = Some(15);
        let mut p = CallPolicy::new(cfg);
        let intl = "0044 20 7946 0000";
        assert_eq!(p.check(T0, "100", intl, None), Decision::Allow);
        p.call_ended(T0 + 9 * MINUTE, "100", intl, None, 9 * 60 + 59);
        // 9:59 used of 10: one more call may start.
        assert_eq!(
            p.check(T0 + 10 * MINUTE, "100", intl, None),
            Decision::Allow
        );
        p.call_ended(T0 + 11 * MINUTE, "100", intl, None, 1);
        assert_eq!(
            rule_of(&p.check(T0 + 12 * MINUTE, "100", intl, None)),
            Some(PolicyRule::IntlBudget)
        );
        assert_eq!(p.intl_seconds_today(T0 + 12 * MINUTE, "100"), (600, 600));
        // National calls are not budgeted.
        assert_eq!(
            p.check(T0 + 12 * MINUTE, "100", "030 1234567", None),
            Decision::Allow
        );
        // The site budget (15 min) stops the second extension after 5 more minutes.
        assert_eq!(
            p.check(T0 + 13 * MINUTE, "101", intl, None),
            Decision::Allow
        );
        p.call_ended(T0 + 18 * MINUTE, "101", intl, None, 5 * 60);
        assert_eq!(
            rule_of(&p.check(T0 + 19 * MINUTE, "101", intl, None)),
            Some(PolicyRule::IntlBudgetGlobal)
        );
        // A new local day brings new budgets.
        let tomorrow = T0 + 24 * HOUR;
        assert_eq!(p.check(tomorrow, "100", intl, None), Decision::Allow);
        assert_eq!(p.check(tomorrow, "101", intl, None), Decision::Allow);
    }

    #[test]
    fn business_hours_for_international_calls() {
        let mut cfg = PolicyConfig::default();
        intl_ext(&mut cfg, "100");
        cfg.business_hours = Some(BusinessHours {
            days: vec![
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri,
            ],
            hours: "08:00-18:00".parse().unwrap(),
        });
        // UTC+2: T0 (10:00 UTC) is 12:00 local.
        cfg.local_offset_minutes = 120;
        let mut p = CallPolicy::new(cfg);
        let intl = "+44 20 7946 0000";
        assert_eq!(p.check(T0, "100", intl, None), Decision::Allow);
        // 17:59 local: still open. 18:00 local: closed.
        assert_eq!(
            p.check(T0 + 5 * HOUR + 59 * MINUTE, "100", intl, None),
            Decision::Allow
        );
        let d = p.check(T0 + 6 * HOUR, "100", intl, None);
        assert_eq!(rule_of(&d), Some(PolicyRule::BusinessHours));
        assert!(matches!(d, Decision::Refuse { alert: true, .. }));
        // Saturday noon: closed. National calls are not restricted by the window.
        let saturday = T0 + 5 * 24 * HOUR;
        assert_eq!(
            rule_of(&p.check(saturday, "100", intl, None)),
            Some(PolicyRule::BusinessHours)
        );
        assert_eq!(
            p.check(saturday, "100", "030 1234567", None),
            Decision::Allow
        );
    }

    #[test]
    fn burst_of_calls_to_one_prefix_raises_an_alarm() {
        let mut cfg = PolicyConfig::default();
        cfg.burst = BurstRule {
            calls: 4,
            window_ms: 5 * MINUTE,
            prefix_len: 6,
        };
        let mut p = CallPolicy::new(cfg);
        // Four extensions, one call each, all to numbers under 030123.
        for (i, ext) in ["100", "101", "102"].iter().enumerate() {
            assert_eq!(
                p.check(T0 + i as u64, ext, &format!("030123456{i}"), None),
                Decision::Allow
            );
        }
        assert!(p.poll_alert().is_none());
        // A different prefix does not count.
        p.check(T0 + 5, "104", "0301999999", None);
        assert!(p.poll_alert().is_none());
        assert_eq!(
            p.check(T0 + 10, "103", "030 123 4599", None),
            Decision::Allow,
            "alarm only, no refusal"
        );
        let alert = p.poll_alert().unwrap();
        assert_eq!(
            (alert.rule, alert.ext, alert.dialled.as_str()),
            (PolicyRule::Burst, None, "030123")
        );
        assert!(p.poll_alert().is_none());
        // "+53..." and "0053..." are one prefix.
        for i in 0..4 {
            let dialled = if i % 2 == 0 {
                "+53 71 234567"
            } else {
                "0053 71 234567"
            };
            p.check(T0 + 20 + i, "105", dialled, None);
        }
        let bursts: Vec<_> = std::iter::from_fn(|| p.poll_alert())
            .filter(|a| a.rule == PolicyRule::Burst)
            .map(|a| a.dialled)
            .collect();
        assert_eq!(bursts, vec!["005371".to_string()]);
    }

    #[test]
    fn concurrency_caps_per_extension_and_trunk() {
        let mut cfg = PolicyConfig::default();
        cfg.max_concurrent_per_extension = 2;
        cfg.trunks.insert("sip1".into(), 3);
        cfg.calls_per_minute = 0;
        let mut p = CallPolicy::new(cfg);
        let n = "030 1234567";
        assert_eq!(p.check(T0, "100", n, Some("sip1")), Decision::Allow);
        assert_eq!(p.check(T0, "100", n, Some("sip1")), Decision::Allow);
        assert_eq!(
            rule_of(&p.check(T0, "100", n, Some("sip1"))),
            Some(PolicyRule::ConcurrentExtension)
        );
        assert_eq!(p.active_calls("100"), 2);
        assert_eq!(p.check(T0, "101", n, Some("sip1")), Decision::Allow);
        assert_eq!(
            rule_of(&p.check(T0, "102", n, Some("sip1"))),
            Some(PolicyRule::ConcurrentTrunk)
        );
        // Another trunk has the default cap.
        assert_eq!(p.check(T0, "102", n, Some("sip2")), Decision::Allow);
        // Internal calls do not occupy slots.
        assert_eq!(p.check(T0, "100", "101", None), Decision::Allow);
        p.call_ended(T0 + MINUTE, "100", n, Some("sip1"), 60);
        assert_eq!(p.active_calls("100"), 1);
        assert_eq!(p.trunk_calls("sip1"), 2);
        assert_eq!(
            p.check(T0 + MINUTE, "100", n, Some("sip1")),
            Decision::Allow
        );
        // Ending more calls than were allowed never underflows.
        for _ in 0..5 {
            p.call_ended(T0 + 2 * MINUTE, "100", n, Some("sip1"), 0);
        }
        assert_eq!((p.active_calls("100"), p.trunk_calls("sip1")), (0, 0));
    }

    #[test]
    fn per_extension_overrides() {
        let mut cfg = PolicyConfig::default();
        cfg.extensions.insert(
            "300".into(),
            ExtensionPolicy {
                allowed: Some(vec![DestClass::Internal]),
                max_concurrent: Some(1),
                calls_per_minute: Some(1),
                intl_minutes_per_day: None,
            },
        );
        let mut p = CallPolicy::new(cfg);
        assert_eq!(
            rule_of(&p.check(T0, "300", "030 1234567", None)),
            Some(PolicyRule::ClassNotAllowed)
        );
        // The second external attempt in a minute locks (limit 1).
        assert_eq!(
            rule_of(&p.check(T0 + 1, "300", "030 1234567", None)),
            Some(PolicyRule::CallRate)
        );
    }

    #[test]
    fn config_from_toml() {
        let cfg: PolicyConfig = toml::from_str(
            r#"
            local_offset_minutes = 60
            intl_minutes_global = 100
            [business_hours]
            days = ["mon", "tue"]
            hours = "08:00-17:00"
            [trunks]
            sip1 = 10
            [extensions.100]
            allowed = ["internal", "emergency", "national", "international"]
            "#,
        )
        .unwrap();
        assert_eq!(cfg.trunks["sip1"], 10);
        assert_eq!(cfg.intl_minutes_global, Some(100));
        assert_eq!(cfg.extensions["100"].allowed.as_ref().unwrap().len(), 4);
        assert!(
            toml::from_str::<PolicyConfig>("business_hours = { days = [], hours = \"8-5\" }")
                .is_err()
        );
        assert!(toml::from_str::<PolicyConfig>("calls_per_minit = 3").is_err());
    }

    #[test]
    fn the_extension_table_is_bounded() {
        let mut cfg = PolicyConfig::default();
        cfg.limits.max_extensions = 10;
        let mut p = CallPolicy::new(cfg);
        p.lock_to_internal("locked");
        for i in 0..1_000 {
            let ext = format!("{i}");
            p.check(T0, &ext, "030 1234567", None);
            p.call_ended(T0, &ext, "030 1234567", None, 1);
        }
        assert!(p.exts.len() <= 10);
        assert!(p.is_locked("locked"), "locked extensions are never evicted");
    }
}

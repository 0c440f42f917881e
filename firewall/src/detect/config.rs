//! Detector configuration: one serde struct per rule, defaults as in docs/firewall.md's rule table.
//!
//! Counting convention for every rule: "N events / T" fires on the N-th event within T (the
//! 10th auth failure bans, the 9th does not). The one exception is enumeration, which the
//! table defines as "> 20 distinct users", so it fires on the 21st. A limit of 0 disables
//! the rule.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::net::Cidr;

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// Everything [`super::Detector`] can be told; `Default` is docs/firewall.md's rule table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    /// Detect and alert only: Ban, Drop and LockAccount verdicts become Pass (for rollout).
    pub monitor: bool,
    /// Networks that are never dropped, banned or counted (LAN, VPN, admin hosts).
    pub allow: Vec<Cidr>,
    /// Addresses of trunk peers: never banned, but what reaches the detector from them
    /// (anything that is not the trunk's own traffic) is inspected like any source's.
    pub trunk_peers: Vec<IpAddr>,
    /// Per-source request flood (Kamailio ANTIFLOOD's default).
    pub flood: FloodRule,
    /// Sources that have not yet authenticated successfully.
    pub unknown_host: UnknownHostRule,
    /// Failures per source: auth failures, failed SSH and web logins, malformed and oversized messages.
    pub auth_source: AuthSourceRule,
    /// Sources banned again and again within a day.
    pub repeat: RepeatRule,
    /// Auth failures per account, whatever the source (distributed guessing).
    pub auth_account: AccountRule,
    /// Distinct unknown users asked for by one source.
    pub enumeration: EnumerationRule,
    /// User-Agent and header fingerprints of scanning tools.
    pub scanner: ScannerRule,
    /// Size limits; a breach drops the message and counts as a failure.
    pub sanity: SanityRule,
    /// TCP/TLS connections refused at the per-source cap, or opened, by one source.
    pub connection_flood: ConnectionFloodRule,
    /// Table sizes: the memory bound under attack.
    pub limits: Limits,
}

/// Request flood: `limit` requests (responses are not counted) within `window_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FloodRule {
    /// Requests that trigger the ban.
    pub limit: u32,
    /// Window length, ms.
    pub window_ms: u64,
    /// Ban duration, ms.
    pub ban_ms: u64,
}

impl Default for FloodRule {
    fn default() -> Self {
        FloodRule {
            limit: 16,
            window_ms: 2 * SECOND,
            ban_ms: 300 * SECOND,
        }
    }
}

/// The gate in front of sources that never authenticated: first rejected, then banned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UnknownHostRule {
    /// Messages within `reject_window_ms` after which the source is rejected (Drop).
    pub reject_limit: u32,
    /// Window of the reject count, ms.
    pub reject_window_ms: u64,
    /// How long the source stays rejected, ms.
    pub reject_ms: u64,
    /// Messages within `ban_window_ms` that ban the source.
    pub ban_limit: u32,
    /// Window of the ban count, ms.
    pub ban_window_ms: u64,
    /// Ban duration, ms.
    pub ban_ms: u64,
    /// How long a successful authentication exempts the source from this gate, ms
    /// (refreshed by every success; phones re-register well within it).
    pub pass_ms: u64,
}

impl Default for UnknownHostRule {
    fn default() -> Self {
        UnknownHostRule {
            reject_limit: 10,
            reject_window_ms: 60 * SECOND,
            reject_ms: 5 * MINUTE,
            ban_limit: 50,
            ban_window_ms: 10 * SECOND,
            ban_ms: DAY,
            pass_ms: 2 * HOUR,
        }
    }
}

/// Failures per source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSourceRule {
    /// Failures that trigger the ban.
    pub limit: u32,
    /// Window length, ms.
    pub window_ms: u64,
    /// Ban duration, ms.
    pub ban_ms: u64,
}

impl Default for AuthSourceRule {
    fn default() -> Self {
        AuthSourceRule {
            limit: 10,
            window_ms: 10 * MINUTE,
            ban_ms: 10 * MINUTE,
        }
    }
}

/// Repeat offenders: the `bans`-th ban of one source within `window_ms` lasts `ban_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepeatRule {
    /// Bans (of any rule) that make a repeat offender.
    pub bans: u32,
    /// Window length, ms.
    pub window_ms: u64,
    /// Ban duration for a repeat offender, ms.
    pub ban_ms: u64,
}

impl Default for RepeatRule {
    fn default() -> Self {
        RepeatRule {
            bans: 5,
            window_ms: DAY,
            ban_ms: 7 * DAY,
        }
    }
}

/// Auth failures per account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountRule {
    /// Failures that lock the account.
    pub limit: u32,
    /// Window length, ms.
    pub window_ms: u64,
    /// Lock duration, ms.
    pub lock_ms: u64,
}

impl Default for AccountRule {
    fn default() -> Self {
        AccountRule {
            limit: 3,
            window_ms: 15 * MINUTE,
            lock_ms: 15 * MINUTE,
        }
    }
}

/// Enumeration: more than `limit` distinct unknown users within `window_ms` from one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnumerationRule {
    /// Distinct unknown users tolerated; one more bans (at most 1024).
    pub limit: u32,
    /// Window length, ms.
    pub window_ms: u64,
    /// Ban duration, ms.
    pub ban_ms: u64,
}

impl Default for EnumerationRule {
    fn default() -> Self {
        EnumerationRule {
            limit: 20,
            window_ms: 60 * SECOND,
            ban_ms: HOUR,
        }
    }
}

/// Scanner fingerprints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScannerRule {
    /// User-Agent substrings (matched case-insensitively) of scanning tools.
    pub user_agents: Vec<String>,
    /// Also match the header fingerprints of SIPVicious (From tag encoding, header order).
    pub tool_fingerprints: bool,
    /// Ban duration, ms.
    pub ban_ms: u64,
}

impl Default for ScannerRule {
    fn default() -> Self {
        ScannerRule {
            user_agents: [
                "friendly-scanner",
                "sipvicious",
                "sipcli",
                "VaxSIPUserAgent",
                "pplsip",
                "sundayddr",
                "iWar",
                "sipsak",
                "sip-scan",
                "smap",
            ]
            .iter()
            .map(|s| (*s).to_string())
            .collect(),
            tool_fingerprints: true,
            ban_ms: DAY,
        }
    }
}

/// Connection flood: TCP/TLS connections of one source within `window_ms`, as the
/// transports report them: those refused because the source already held its cap of
/// concurrent connections (`[firewall.connections]`), and those opened. A phone holds one
/// connection and opens a new one now and then; a NATed office a few hundred at most.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionFloodRule {
    /// Refused connections that ban a source (0: not counted).
    pub refused_limit: u32,
    /// Opened connections that ban a source (0: not counted).
    pub open_limit: u32,
    /// Both limits are multiplied by this for a source that authenticated recently (it
    /// holds an `unknown_host` pass): only far beyond a phone's behaviour is it banned.
    pub authenticated_factor: u32,
    /// Window length, ms.
    pub window_ms: u64,
    /// Ban duration, ms.
    pub ban_ms: u64,
}

impl Default for ConnectionFloodRule {
    fn default() -> Self {
        ConnectionFloodRule {
            refused_limit: 8,
            open_limit: 100,
            authenticated_factor: 32,
            window_ms: 10 * SECOND,
            ban_ms: HOUR,
        }
    }
}

/// Size limits for a single message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SanityRule {
    /// Largest message accepted, bytes.
    pub max_message: usize,
    /// Longest Request-URI accepted, bytes.
    pub max_ruri: usize,
}

impl Default for SanityRule {
    fn default() -> Self {
        SanityRule {
            max_message: 16 * 1024,
            max_ruri: 512,
        }
    }
}

/// Table sizes. Worst-case memory at the defaults is about 32 MB for sources (~320 B each:
/// counters plus the keys of the last 8 malformed messages counted; ~400 B more for a source
/// that produced unknown-user events), 20 MB for bans (~100 B each), and well under 1 MB
/// for the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Sources with live counters; the least recently seen is evicted when full.
    pub max_sources: usize,
    /// Ban records (active bans and the day's ban history of expired ones); when full, the
    /// record closest to being forgotten is dropped (the kernel set keeps its own copy).
    pub max_bans: usize,
    /// Sources holding an authentication pass; the least recently authenticated is evicted.
    pub max_passes: usize,
    /// Accounts with live failure counters.
    pub max_accounts: usize,
    /// Locked accounts.
    pub max_locks: usize,
    /// Alerts waiting for `poll_alert`; the oldest are dropped (and counted) beyond this.
    pub max_alerts: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sources: 100_000,
            max_bans: 200_000,
            max_passes: 4_096,
            max_accounts: 10_000,
            max_locks: 10_000,
            max_alerts: 1_024,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::field_reassign_with_default)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_design_table() {
        let c = DetectConfig::default();
        assert!(!c.monitor);
        assert_eq!(
            (c.flood.limit, c.flood.window_ms, c.flood.ban_ms),
            (16, 2_000, 300_000)
        );
        let u = &c.unknown_host;
        assert_eq!(
            (u.reject_limit, u.reject_window_ms, u.reject_ms),
            (10, 60_000, 300_000)
        );
        assert_eq!(
            (u.ban_limit, u.ban_window_ms, u.ban_ms),
            (50, 10_000, 86_400_000)
        );
        let a = &c.auth_source;
        assert_eq!((a.limit, a.window_ms, a.ban_ms), (10, 600_000, 600_000));
        assert_eq!((c.repeat.bans, c.repeat.ban_ms), (5, 604_800_000));
        assert_eq!((c.auth_account.limit, c.auth_account.lock_ms), (3, 900_000));
        assert_eq!(
            (
                c.enumeration.limit,
                c.enumeration.window_ms,
                c.enumeration.ban_ms
            ),
            (20, 60_000, 3_600_000)
        );
        assert_eq!(c.scanner.user_agents.len(), 10);
        assert_eq!((c.sanity.max_message, c.sanity.max_ruri), (16_384, 512));
    }

    #[test]
    fn config_reads_from_toml_and_rejects_unknown_fields() {
        let c: DetectConfig = toml::from_str(
            r#"
            monitor = true
            allow = ["192.168.1.0/24", "2001:db8::/32"]
            trunk_peers = ["203.0.113.5"]
            [flood]
            limit = 30
            "#,
        )
        .unwrap();
        assert!(c.monitor);
        assert_eq!(c.allow.len(), 2);
        assert_eq!(c.flood.limit, 30);
        assert_eq!(c.flood.window_ms, 2_000);
        assert!(toml::from_str::<DetectConfig>("bogus = 1").is_err());
        assert!(toml::from_str::<DetectConfig>("[flood]\nlimt = 3").is_err());
        assert!(toml::from_str::<DetectConfig>("allow = [\"10.0.0.0/99\"]").is_err());
    }
}

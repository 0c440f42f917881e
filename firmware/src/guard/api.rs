//! The firewall's control plane: the `fw` commands ([`FwCommand`]), what they answer
//! ([`FwReply`] and the `Fw*` records it carries) and why they fail ([`FwError`]).
//!
//! The records are part of the admin protocol's wire format (the admin layer re-exports
//! them from `admin::proto` and alone turns an `FwReply` or `FwError` into its `Reply`);
//! this module also holds the pure builders that turn the detector's state into them.

use std::collections::HashMap;
use std::net::IpAddr;

use firewall::detect::{fmt_ms, Alert, BanInfo, DetectConfig, LockInfo, Rule};
use firewall::net::CidrError;
use pbx_core::Millis;
use serde::{Deserialize, Serialize};

use super::feed::{FeedError, ParsedFeed, MAX_FEED_BYTES, MAX_FEED_ENTRIES, MAX_NETWORK_ADDRS};
use crate::driver::conn::ConnStats;
use crate::store::StoreError;

/// Most bans, locks or alerts in one listing (a reply line is at most 4 MiB).
pub const MAX_LISTED: usize = 10_000;

/// A firewall command; travels inside [`Command::Fw`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "fw", rename_all = "snake_case", deny_unknown_fields)]
pub enum FwCommand {
    /// Mode, counters, kernel counters and rule hits.
    Status {
        /// The kernel's counters as last read, without waiting for a fresh read (which
        /// holds the daemon's loop for one `nft` run, ~7 ms): for pages that refresh by
        /// themselves. A fresh read is asked for in the background.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cached: bool,
    },
    /// Active bans and account locks.
    Bans,
    /// Lift a ban everywhere (detector and its counters, kernel set, store).
    Unban {
        /// The address, IPv4 or IPv6.
        addr: String,
    },
    /// Add a network to the allow list at runtime (kernel and detector; not kept across a
    /// restart: put it in `[firewall.detect] allow` for that).
    Allow {
        /// The network, `10.0.0.0/8` or a bare address.
        cidr: String,
    },
    /// Lift an account lock.
    Unlock {
        /// The account (extension).
        user: String,
    },
    /// The newest alerts, newest first.
    Alerts {
        /// How many at most.
        limit: usize,
    },
    /// Every rule with its threshold, action and hit counter.
    Rules,
    /// Ban every address of a blocklist once (rule `manual`; same formats as a feed: one
    /// address or network per line, or JSON). The daemon parses and checks it.
    Import {
        /// The blocklist text (at most 1 MiB).
        text: String,
        /// How long each address is banned.
        ban_secs: u64,
    },
    /// Our current bans in the exchange format, for other sites' feeds or `fw import`.
    Export,
}

impl FwCommand {
    /// The wire name of the command, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            FwCommand::Status { .. } => "fw_status",
            FwCommand::Bans => "fw_bans",
            FwCommand::Unban { .. } => "fw_unban",
            FwCommand::Allow { .. } => "fw_allow",
            FwCommand::Unlock { .. } => "fw_unlock",
            FwCommand::Alerts { .. } => "fw_alerts",
            FwCommand::Rules => "fw_rules",
            FwCommand::Import { .. } => "fw_import",
            FwCommand::Export => "fw_export",
        }
    }
}

/// The firewall at a glance.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FwStatusInfo {
    /// `enforcing` (nftables), `user-space` (inspect and drop in the daemon only) or
    /// `monitor` (detect and alert, nothing dropped).
    pub mode: String,
    /// Why the kernel does not enforce, when it does not.
    pub reason: Option<String>,
    /// Bans in force.
    pub bans: usize,
    /// Accounts locked.
    pub locks: usize,
    /// Sources with live counters.
    pub sources: usize,
    /// Sources holding a pass after a successful authentication.
    pub passes: usize,
    /// Messages inspected.
    pub inspected: u64,
    /// Messages dropped in user space because their source is banned.
    pub dropped_banned: u64,
    /// Messages dropped in user space by a rule (reject stage, malformed, oversized, ...).
    pub dropped_rule: u64,
    /// Alerts stored (the newest 10,000 are kept).
    pub alerts_stored: u64,
    /// Networks added with `fw allow` since the start.
    pub runtime_allow: Vec<String>,
    /// The kernel side, when enforcing.
    pub kernel: Option<FwKernelInfo>,
    /// Hits per rule, in rule order.
    pub rule_hits: Vec<FwRuleHits>,
    /// Monitor mode: bans and locks that enforcing would have made (every firing, also
    /// of a source already shadow-banned).
    #[serde(default)]
    pub would_be_bans: u64,
    /// Monitor mode: messages that enforcing would have dropped because their source was
    /// banned.
    #[serde(default)]
    pub would_be_dropped: u64,
    /// Health of each blocklist feed, in configuration order.
    #[serde(default)]
    pub feeds: Vec<FwFeedInfo>,
    /// TCP/TLS connections: caps, open, refused and closed (filled in by the daemon).
    #[serde(default)]
    pub connections: Option<Box<ConnStats>>,
}

/// One blocklist feed's health.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FwFeedInfo {
    /// The file.
    pub source: String,
    /// Seconds between reads.
    pub refresh_secs: u64,
    /// Ban length of its entries.
    pub ban_secs: u64,
    /// Addresses listed by the last good read (networks expanded), the ignored ones included.
    pub entries: usize,
    /// Of those, allow-listed, trunk-peer or loopback addresses, never banned.
    pub ignored: usize,
    /// Lines or JSON items of the last good read that are not an address or network.
    pub invalid: usize,
    /// Networks of the last good read wider than 256 addresses, skipped.
    pub too_wide: usize,
    /// Entries of the last good read past the 100,000-address limit, skipped.
    pub truncated: usize,
    /// When the last good read finished (ms since the epoch); None before the first.
    pub last_refresh: Option<u64>,
    /// Reads done, good or not.
    pub reads: u64,
    /// Reads that failed (file missing, unreadable, too large, not a feed); the bans of
    /// the last good read stay until they end.
    pub failures: u64,
    /// Why the last read failed, while it is the latest read.
    pub last_error: Option<String>,
}

/// Bans in the exchange format: `{"generated": ms, "bans": [{"addr", "until", "rule",
/// "reason"}]}` (`outpostctl fw export`; `fw import` and feeds read it back).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FwExport {
    /// When it was made (ms since the epoch).
    pub generated: u64,
    /// The bans, longest-lasting first.
    pub bans: Vec<FwExportBan>,
    /// Bans left out so the document stays importable (at most 1 MiB).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: usize,
}

/// One ban of an [`FwExport`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FwExportBan {
    /// The banned address.
    pub addr: String,
    /// When the ban ends (ms since the epoch).
    pub until: u64,
    /// The rule that banned.
    pub rule: String,
    /// Why.
    pub reason: String,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The nftables side of the firewall.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FwKernelInfo {
    /// The table, `inet outpost`.
    pub table: String,
    /// Whether the table is installed (as of the last check).
    pub installed: bool,
    /// The kernel's counters (None until first read).
    pub counters: Option<firewall::nft::Counters>,
    /// Batches of set updates applied (one kernel transaction each).
    pub batches: u64,
    /// Set updates applied.
    pub ops: u64,
    /// Times the table was found changed from outside and restored.
    pub restores: u64,
    /// nft runs that failed.
    pub failures: u64,
    /// Set updates dropped because the enforcer's queue was full.
    pub queue_drops: u64,
    /// The last nft error, if any.
    pub last_error: Option<String>,
    /// nft processes started to apply the batches (one long-lived process, started again
    /// when it dies or has been fed its share).
    #[serde(default)]
    pub nft_batch_processes: u64,
    /// nft processes started in all: the batches', the table's loads and its listings
    /// (the check every 5 s, counters when asked).
    #[serde(default)]
    pub nft_processes: u64,
    /// The CPUs the enforcer thread may use, when it was pinned off the SIP loop's.
    #[serde(default)]
    pub enforcer_cpus: Option<Vec<usize>>,
}

/// One rule's hit counter.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FwRuleHits {
    /// Rule name (`flood`, `auth_failures`, ...).
    pub rule: String,
    /// Times it fired.
    pub hits: u64,
}

/// Active bans and locks.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FwBansInfo {
    /// Bans in force (the list holds at most 10,000).
    pub total_bans: usize,
    /// Locked accounts (the list holds at most 10,000).
    pub total_locks: usize,
    /// Bans, soonest to end first.
    pub bans: Vec<FwBanInfo>,
    /// Locked accounts, soonest to end first.
    pub locks: Vec<FwLockInfo>,
}

/// One ban.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FwBanInfo {
    /// The banned address.
    pub addr: String,
    /// When it ends (ms since the epoch).
    pub until: u64,
    /// Seconds left.
    pub remaining_secs: u64,
    /// The rule that banned.
    pub rule: String,
    /// Why.
    pub reason: String,
    /// Bans of this address within the day, this one included.
    pub count_today: u32,
    /// False for a monitor-mode ban that was only recorded.
    pub enforced: bool,
}

/// One locked account.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FwLockInfo {
    /// The account.
    pub user: String,
    /// When the lock ends (ms since the epoch).
    pub until: u64,
    /// Seconds left.
    pub remaining_secs: u64,
    /// The rule that locked it.
    pub rule: String,
    /// False for a monitor-mode lock that was only recorded.
    pub enforced: bool,
    /// What the lock refuses, in words: `all sources except 10.0.0.5, 10.0.0.6`, or
    /// `outside calls` for a toll-fraud lock.
    #[serde(default)]
    pub blocks: String,
    /// The sources the lock does not apply to (they authenticated as the account within the
    /// last week): `10.0.0.5`, or `198.51.100.7:31000` behind NAT.
    #[serde(default)]
    pub except: Vec<String>,
}

/// One alert.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FwAlertInfo {
    /// When (ms since the epoch).
    pub at: u64,
    /// The rule that fired.
    pub rule: String,
    /// The source concerned.
    pub addr: Option<String>,
    /// The account concerned.
    pub user: Option<String>,
    /// What happened.
    pub message: String,
    /// False in monitor mode: the action was not taken.
    pub enforced: bool,
}

/// One rule's settings and hits.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FwRuleInfo {
    /// Rule name.
    pub rule: String,
    /// When it fires (`10 failures / 10 min`), or `off`.
    pub threshold: String,
    /// What it does (`ban 10 min`, `lock 15 min`, `drop`).
    pub action: String,
    /// Times it fired.
    pub hits: u64,
}

/// What a [`FwCommand`] answers when it succeeds.
#[derive(Debug, Clone, PartialEq)]
pub enum FwReply {
    /// Answer to [`FwCommand::Status`].
    Status(Box<FwStatusInfo>),
    /// Answer to [`FwCommand::Bans`].
    Bans(FwBansInfo),
    /// Answer to [`FwCommand::Alerts`].
    Alerts(Vec<FwAlertInfo>),
    /// Answer to [`FwCommand::Rules`].
    Rules(Vec<FwRuleInfo>),
    /// Answer to [`FwCommand::Export`].
    Export(FwExport),
    /// A change was made (unban, allow, unlock, import): what, for a human.
    Done(String),
}

/// Why a [`FwCommand`] failed; the text is what the admin reads.
#[derive(Debug, thiserror::Error)]
pub enum FwError {
    /// `fw unban` of something that is not an address.
    #[error("`{}` is not an IP address", .0.escape_default())]
    NotAnAddress(String),
    /// `fw allow` of something that is not a network.
    #[error("`{}`: {source}", text.escape_default())]
    NotANetwork {
        /// What was given.
        text: String,
        /// Why it is not a network.
        source: CidrError,
    },
    /// `fw allow` past the runtime limit of networks.
    #[error(
        "at most {max} networks can be allowed at runtime; put them in [firewall.detect] allow"
    )]
    TooManyAllowed {
        /// The limit.
        max: usize,
    },
    /// `fw unlock` of something that is not an account name.
    #[error("not an account name")]
    NotAnAccount,
    /// `fw import` with a ban length out of range.
    #[error("ban length must be between 1 and {max} seconds")]
    BanLength {
        /// The longest ban.
        max: u64,
    },
    /// `fw import` in monitor mode.
    #[error("monitor mode: nothing is banned, so nothing was imported")]
    Monitor,
    /// `fw import` of a text that is not a blocklist.
    #[error("not a blocklist: {0}")]
    NotABlocklist(#[source] FeedError),
    /// `fw import` of a blocklist without one usable address (what was skipped, and why).
    #[error("no addresses to import: {0}")]
    NothingToImport(String),
    /// The alerts could not be read.
    #[error("cannot read the alerts: {0}")]
    ReadAlerts(#[source] StoreError),
    /// The toll-fraud locks could not be updated.
    #[error("cannot update the store: {0}")]
    TollStore(#[source] StoreError),
    /// The lock was lifted but could not be deleted from the store.
    #[error("cannot delete the lock from the store: {0}")]
    DeleteLock(#[source] StoreError),
    /// The ban was lifted in the kernel and in memory but not in the store.
    #[error("{addr} unbanned in the kernel and in memory, but the store failed: {source}")]
    UnbanNotStored {
        /// The address.
        addr: IpAddr,
        /// The store's error.
        source: StoreError,
    },
    /// The import banned (`done` says what) but the bans could not be stored.
    #[error(
        "{done}; but writing them to the store failed ({source}): they end at the next restart"
    )]
    ImportNotStored {
        /// What the import did.
        done: String,
        /// The store's error.
        source: StoreError,
    },
}

impl From<Alert> for FwAlertInfo {
    fn from(a: Alert) -> FwAlertInfo {
        FwAlertInfo {
            at: a.at,
            rule: a.rule.to_string(),
            addr: a.addr.map(|ip| ip.to_string()),
            user: a.user,
            message: a.message,
            enforced: a.enforced,
        }
    }
}

/// `fw bans`: the bans and locks, each list cut at [`MAX_LISTED`]; `toll_locked` are the
/// extensions the toll-fraud policy locked to internal calls (until unlocked).
pub fn ban_list(
    now: Millis,
    bans: Vec<BanInfo>,
    locks: Vec<LockInfo>,
    toll_locked: Vec<String>,
) -> FwBansInfo {
    let secs = |until: Millis| until.saturating_sub(now).div_ceil(1_000);
    let toll: Vec<FwLockInfo> = toll_locked
        .into_iter()
        .map(|user| FwLockInfo {
            user,
            until: u64::MAX,
            remaining_secs: u64::MAX,
            rule: Rule::TollFraud.to_string(),
            enforced: true,
            blocks: "outside calls (internal calls still work)".to_string(),
            except: Vec::new(),
        })
        .collect();
    FwBansInfo {
        total_bans: bans.len(),
        total_locks: locks.len() + toll.len(),
        bans: bans
            .into_iter()
            .take(MAX_LISTED)
            .map(|b| FwBanInfo {
                addr: b.addr.to_string(),
                until: b.until,
                remaining_secs: secs(b.until),
                rule: b.rule.to_string(),
                reason: b.reason,
                count_today: b.count_today,
                enforced: b.enforced,
            })
            .collect(),
        locks: locks
            .into_iter()
            .take(MAX_LISTED)
            .map(|l| FwLockInfo {
                user: l.user,
                until: l.until,
                remaining_secs: secs(l.until),
                rule: l.rule.to_string(),
                enforced: l.enforced,
                // The daemon fills in the sources the call core exempts.
                blocks: "all sources".to_string(),
                except: Vec::new(),
            })
            .chain(toll)
            .collect(),
    }
}

/// `fw export`: the enforced bans (not the feeds'), longest-lasting first, as many as fit
/// in a document a feed or `fw import` accepts ([`MAX_FEED_BYTES`], [`MAX_FEED_ENTRIES`]).
pub fn export(now: Millis, bans: Vec<BanInfo>) -> FwExport {
    let mut bans: Vec<BanInfo> = bans
        .into_iter()
        .filter(|b| b.enforced && b.rule != Rule::Feed)
        .collect();
    bans.sort_by_key(|b| std::cmp::Reverse((b.until, b.addr)));
    // `{"generated":<ms>,"bans":[` ... `]}` and a newline per ban (see outpostctl).
    let mut size: usize = 48;
    let mut out = Vec::new();
    let mut omitted = 0;
    for b in bans {
        let ban = FwExportBan {
            addr: b.addr.to_string(),
            until: b.until,
            rule: b.rule.to_string(),
            reason: b.reason,
        };
        let len = serde_json::to_string(&ban).map_or(usize::MAX, |s| s.len().saturating_add(2));
        if omitted > 0 || out.len() >= MAX_FEED_ENTRIES || size.saturating_add(len) > MAX_FEED_BYTES
        {
            omitted += 1;
            continue;
        }
        size += len;
        out.push(ban);
    }
    FwExport {
        generated: now,
        bans: out,
        omitted,
    }
}

/// What an import skipped, for the admin.
pub fn import_summary(p: &ParsedFeed) -> String {
    let mut s = format!(
        "{} invalid entries, {} networks wider than {} addresses, {} ended bans and {} addresses past the {MAX_FEED_ENTRIES}-address limit skipped",
        p.invalid, p.too_wide, MAX_NETWORK_ADDRS, p.expired, p.truncated
    );
    if !p.problems.is_empty() {
        s.push_str(&format!(" ({})", p.problems.join("; ")));
    }
    s
}

/// `fw rules`: every rule's threshold and action in words, and its hits; `feeds` is the
/// number of configured blocklist feeds.
pub fn rule_table(c: &DetectConfig, hits: &HashMap<Rule, u64>, feeds: usize) -> Vec<FwRuleInfo> {
    let per = |n: u32, what: &str, window: u64| {
        if n == 0 {
            "off".to_string()
        } else {
            format!("{n} {what} / {}", fmt_ms(window))
        }
    };
    let ban = |ms: u64| format!("ban {}", fmt_ms(ms));
    Rule::ALL
        .iter()
        .map(|&rule| {
            let (threshold, action) = match rule {
                Rule::Flood => (
                    per(c.flood.limit, "requests", c.flood.window_ms),
                    ban(c.flood.ban_ms),
                ),
                Rule::UnknownHost => (
                    per(
                        c.unknown_host.reject_limit,
                        "messages before a successful auth",
                        c.unknown_host.reject_window_ms,
                    ),
                    format!("drop for {}", fmt_ms(c.unknown_host.reject_ms)),
                ),
                Rule::UnknownHostFlood => (
                    per(
                        c.unknown_host.ban_limit,
                        "messages before a successful auth",
                        c.unknown_host.ban_window_ms,
                    ),
                    ban(c.unknown_host.ban_ms),
                ),
                Rule::AuthFailures => (
                    per(
                        c.auth_source.limit,
                        "failures per source",
                        c.auth_source.window_ms,
                    ),
                    ban(c.auth_source.ban_ms),
                ),
                Rule::RepeatOffender => (
                    per(c.repeat.bans, "bans", c.repeat.window_ms),
                    ban(c.repeat.ban_ms),
                ),
                Rule::AccountGuessing => (
                    per(
                        c.auth_account.limit,
                        "failures per account",
                        c.auth_account.window_ms,
                    ),
                    format!("lock account {}", fmt_ms(c.auth_account.lock_ms)),
                ),
                Rule::Enumeration => (
                    if c.enumeration.limit == 0 {
                        "off".to_string()
                    } else {
                        format!(
                            "> {} distinct unknown users / {}",
                            c.enumeration.limit,
                            fmt_ms(c.enumeration.window_ms)
                        )
                    },
                    ban(c.enumeration.ban_ms),
                ),
                Rule::Scanner => (
                    format!(
                        "{} User-Agent patterns{}",
                        c.scanner.user_agents.len(),
                        if c.scanner.tool_fingerprints {
                            " + tool header fingerprints"
                        } else {
                            ""
                        }
                    ),
                    ban(c.scanner.ban_ms),
                ),
                Rule::Malformed => (
                    "message does not parse".to_string(),
                    "drop, counts as a failure".to_string(),
                ),
                Rule::Oversized => (
                    format!(
                        "message > {} B or Request-URI > {} B",
                        c.sanity.max_message, c.sanity.max_ruri
                    ),
                    "drop, counts as a failure".to_string(),
                ),
                Rule::Manual => ("admin (`fw import`)".to_string(), "ban".to_string()),
                Rule::Feed => (
                    format!("listed by one of {} blocklist feeds", feeds),
                    "ban while listed".to_string(),
                ),
                Rule::TollFraud => (
                    "toll-fraud policy refused a call".to_string(),
                    "ban".to_string(),
                ),
                Rule::ConnectionFlood => {
                    let r = &c.connection_flood;
                    let part = |n: u32, what: &str| {
                        (n > 0).then(|| format!("{n} TCP/TLS connections {what}"))
                    };
                    let parts: Vec<String> = [
                        part(r.refused_limit, "refused at the per-source cap"),
                        part(r.open_limit, "opened"),
                    ]
                    .into_iter()
                    .flatten()
                    .collect();
                    (
                        if parts.is_empty() {
                            "off".to_string()
                        } else {
                            format!(
                                "{} / {} (x{} after a successful auth)",
                                parts.join(" or "),
                                fmt_ms(r.window_ms),
                                r.authenticated_factor.max(1)
                            )
                        },
                        ban(r.ban_ms),
                    )
                }
            };
            FwRuleInfo {
                rule: rule.to_string(),
                threshold,
                action,
                hits: hits.get(&rule).copied().unwrap_or(0),
            }
        })
        .collect()
}

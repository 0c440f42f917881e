//! The firewall's replies: status and counters, bans and locks, alerts, rules, and the
//! export document other sites import.

use firmware::admin::proto::{FwAlertInfo, FwBansInfo, FwExport, FwRuleInfo, FwStatusInfo};

use super::json::to_json;
use super::table::Table;
use super::text::{fmt_duration, fmt_time, sanitize};
use crate::cli::ExportFormat;

/// `fw status`: mode, counters, kernel and connection figures, rule hits, feeds.
pub fn status(s: &FwStatusInfo) -> String {
    let mode = match &s.reason {
        Some(reason) => format!("{} (kernel enforcement off: {reason})", s.mode),
        None => s.mode.clone(),
    };
    let mut t = Table::plain();
    t.pair("mode", mode);
    t.pair("bans", s.bans.to_string());
    t.pair("locked accounts", s.locks.to_string());
    t.pair("tracked sources", s.sources.to_string());
    t.pair("authenticated sources", s.passes.to_string());
    t.pair("messages inspected", s.inspected.to_string());
    t.pair("dropped (banned)", s.dropped_banned.to_string());
    t.pair("dropped (rules)", s.dropped_rule.to_string());
    t.pair("alerts stored", s.alerts_stored.to_string());
    if s.mode == "monitor" {
        t.pair("would-be bans and locks", s.would_be_bans.to_string());
        t.pair("would-be drops (banned)", s.would_be_dropped.to_string());
    }
    if !s.runtime_allow.is_empty() {
        t.pair("allowed at runtime", s.runtime_allow.join(", "));
    }
    if let Some(k) = &s.kernel {
        t.pair(
            "kernel table",
            format!(
                "{} ({})",
                k.table,
                if k.installed {
                    "installed"
                } else {
                    "NOT installed"
                }
            ),
        );
        if let Some(c) = &k.counters {
            t.pair(
                "kernel: banned",
                format!("{} packets, {} bytes", c.banned_packets, c.banned_bytes),
            );
            t.pair("kernel: flood meter", format!("{} packets", c.meter_drops));
            t.pair(
                "kernel: closed RTP ports",
                format!("{} packets", c.rtp_drops),
            );
            t.pair(
                "kernel: connection caps",
                format!("{} new connections dropped", c.conn_drops),
            );
            t.pair(
                "kernel: management zone",
                format!("{} packets dropped", c.mgmt_drops),
            );
        }
        t.pair(
            "kernel updates",
            format!(
                "{} batches, {} set updates, {} restores, {} failures, {} dropped",
                k.batches, k.ops, k.restores, k.failures, k.queue_drops
            ),
        );
        if let Some(e) = &k.last_error {
            t.pair("kernel: last error", e.clone());
        }
    }
    if let Some(c) = &s.connections {
        t.pair("TCP/TLS connections", format!(
                "{} open of {} ({} unauthenticated, {} reserved for authenticated sources), {} sources",
                c.open, c.max, c.open_unauthenticated, c.reserved_authenticated, c.sources
            ));
        t.pair(
            "connections per source",
            format!(
                "{} ({} after a successful auth; {} sources authenticated)",
                c.per_source, c.per_source_authenticated, c.authenticated_sources
            ),
        );
        t.pair(
            "connections refused",
            format!(
                "{} at a source's cap, {} pool full, {} all taken, {} banned ({} accepted)",
                c.refused_source_cap, c.refused_pool, c.refused_full, c.refused_banned, c.accepted
            ),
        );
        t.pair(
            "connections closed",
            format!(
                "{} no first message in time, {} message not complete in time, {} idle, {} banned",
                c.closed_first_message, c.closed_message, c.closed_idle, c.closed_banned
            ),
        );
    }
    let mut out = t.render();
    let hits = Table::new(&["RULE", "HITS"]).rows(
        s.rule_hits
            .iter()
            .map(|h| vec![h.rule.clone(), h.hits.to_string()]),
    );
    out.push('\n');
    out.push_str(&hits.render());
    if !s.feeds.is_empty() {
        let feeds = Table::new(&[
            "FEED",
            "ENTRIES",
            "IGNORED",
            "SKIPPED",
            "LAST REFRESH (UTC)",
            "FAILED READS",
        ])
        .rows(s.feeds.iter().map(|f| {
            vec![
                f.source.clone(),
                f.entries.to_string(),
                f.ignored.to_string(),
                (f.invalid + f.too_wide + f.truncated).to_string(),
                f.last_refresh.map_or_else(|| "never".to_owned(), fmt_time),
                format!("{}/{}", f.failures, f.reads),
            ]
        }));
        out.push('\n');
        out.push_str(&feeds.render());
        for f in &s.feeds {
            if let Some(e) = &f.last_error {
                out.push_str(&format!(
                    "feed {}: last read failed: {}\n",
                    sanitize(&f.source),
                    sanitize(e)
                ));
            }
        }
    }
    out
}

/// `fw bans`: banned addresses, then locked accounts.
pub fn bans(b: &FwBansInfo) -> String {
    let mut out = String::new();
    if b.bans.is_empty() {
        out.push_str("no bans\n");
    } else {
        let bans = Table::new(&[
            "ADDRESS",
            "REMAINING",
            "RULE",
            "TODAY",
            "ENFORCED",
            "REASON",
        ])
        .rows(b.bans.iter().map(|x| {
            vec![
                x.addr.clone(),
                fmt_duration(x.remaining_secs),
                x.rule.clone(),
                x.count_today.to_string(),
                if x.enforced { "yes" } else { "no (monitor)" }.to_owned(),
                x.reason.clone(),
            ]
        }));
        out.push_str(&bans.render());
        if b.total_bans > b.bans.len() {
            out.push_str(&format!(
                "({} more not shown)\n",
                b.total_bans - b.bans.len()
            ));
        }
    }
    if !b.locks.is_empty() {
        let locks = Table::new(&["LOCKED ACCOUNT", "REMAINING", "RULE", "ENFORCED", "BLOCKS"])
            .rows(b.locks.iter().map(|l| {
                vec![
                    l.user.clone(),
                    if l.until == u64::MAX {
                        "until `fw unlock`".to_owned()
                    } else {
                        fmt_duration(l.remaining_secs)
                    },
                    l.rule.clone(),
                    if l.enforced { "yes" } else { "no (monitor)" }.to_owned(),
                    sanitize(&l.blocks),
                ]
            }));
        out.push('\n');
        out.push_str(&locks.render());
        if b.total_locks > b.locks.len() {
            out.push_str(&format!(
                "({} more not shown)\n",
                b.total_locks - b.locks.len()
            ));
        }
    }
    out
}

/// `fw alerts`: the newest alerts first.
pub fn alerts(v: &[FwAlertInfo]) -> String {
    Table::new(&[
        "TIME (UTC)",
        "RULE",
        "ADDRESS",
        "ACCOUNT",
        "ENFORCED",
        "MESSAGE",
    ])
    .rows(v.iter().map(|a| {
        vec![
            fmt_time(a.at),
            a.rule.clone(),
            a.addr.clone().unwrap_or_else(|| "-".to_owned()),
            a.user.clone().unwrap_or_else(|| "-".to_owned()),
            if a.enforced { "yes" } else { "no (monitor)" }.to_owned(),
            a.message.clone(),
        ]
    }))
    .render_or("no alerts\n")
}

/// `fw rules`: every rule with its threshold, action and hits (the header even when none).
pub fn rules(v: &[FwRuleInfo]) -> String {
    Table::new(&["RULE", "THRESHOLD", "ACTION", "HITS"])
        .rows(v.iter().map(|r| {
            vec![
                r.rule.clone(),
                r.threshold.clone(),
                r.action.clone(),
                r.hits.to_string(),
            ]
        }))
        .render()
}

/// The export document: JSON with one ban per line, or one address per line.
pub fn export(doc: &FwExport, format: ExportFormat) -> String {
    match format {
        ExportFormat::Json => {
            if doc.bans.is_empty() {
                return format!("{{\"generated\":{},\"bans\":[]}}\n", doc.generated);
            }
            let bans: Vec<String> = doc.bans.iter().map(to_json).collect();
            format!(
                "{{\"generated\":{},\"bans\":[\n{}\n]}}\n",
                doc.generated,
                bans.join(",\n")
            )
        }
        ExportFormat::Lines => {
            let mut out = format!(
                "# outpost bans exported {} UTC ({} addresses)\n",
                fmt_time(doc.generated),
                doc.bans.len()
            );
            for b in &doc.bans {
                out.push_str(&sanitize(&b.addr));
                out.push('\n');
            }
            out
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use firmware::admin::proto::FwExportBan;
    use firmware::guard::feed;

    use super::*;

    #[test]
    fn export_formats_read_back() {
        let doc = FwExport {
            generated: 1_000,
            bans: vec![
                FwExportBan {
                    addr: "203.0.113.9".into(),
                    until: 90_000_000,
                    rule: "scanner".into(),
                    reason: "scanner fingerprint".into(),
                },
                FwExportBan {
                    addr: "2001:db8::66".into(),
                    until: 5_000,
                    rule: "flood".into(),
                    reason: "request flood".into(),
                },
            ],
            omitted: 0,
        };
        let json = export(&doc, ExportFormat::Json);
        let back: FwExport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, doc);
        assert_eq!(json.lines().count(), 4, "{json}");
        let lines = export(&doc, ExportFormat::Lines);
        assert!(
            lines.starts_with("# outpost bans exported 1970-01-01"),
            "{lines}"
        );
        // Both formats read back as the same addresses.
        let a = feed::parse(&json, 2_000).unwrap().addrs;
        let b = feed::parse(&lines, 2_000).unwrap().addrs;
        assert_eq!(a, b);
        assert_eq!(a.len(), 2);
        let empty = FwExport {
            generated: 7,
            bans: vec![],
            omitted: 0,
        };
        assert_eq!(
            export(&empty, ExportFormat::Json),
            "{\"generated\":7,\"bans\":[]}\n"
        );
    }
}

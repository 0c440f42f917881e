//! The call core's replies: extensions, registrations, calls with their media, voicemail,
//! call records and trunks.

use firmware::admin::proto::{
    CallInfo, ExtensionDetail, ExtensionInfo, PhoneAdded, PhoneInfo, RegistrationInfo,
};
use firmware::store::VoicemailRecord;
use pbx_core::cdr::{Cdr, Disposition};
use pbx_core::media::session::LegStats;
use pbx_core::trunk::{Health, TrunkStatus};

use super::table::Table;
use super::text::{fmt_duration, fmt_length_ms, fmt_time, now_ms, sanitize};

/// A trunk's addresses, the one in use marked `*`; beyond four, a count.
fn trunk_addresses(t: &TrunkStatus) -> String {
    const SHOWN: usize = 4;
    if t.targets.is_empty() {
        return "(not resolved)".to_owned();
    }
    let mut parts: Vec<String> = t
        .targets
        .iter()
        .take(SHOWN)
        .map(|a| {
            if Some(*a) == t.current {
                format!("*{a}")
            } else {
                a.to_string()
            }
        })
        .collect();
    if t.targets.len() > SHOWN {
        let current_hidden = t
            .current
            .filter(|c| !t.targets.iter().take(SHOWN).any(|a| a == c));
        parts.push(format!("+{} more", t.targets.len() - SHOWN));
        if let Some(c) = current_hidden {
            parts.push(format!("(in use: {c})"));
        }
    }
    parts.join(" ")
}

/// `trunks`: health, registration, round trip, since when and why, and the provider's
/// addresses with the one in use.
pub fn trunks(v: &[TrunkStatus]) -> String {
    let now = now_ms();
    Table::new(&[
        "TRUNK",
        "HEALTH",
        "REGISTERED",
        "RTT",
        "SINCE",
        "REASON",
        "ADDRESSES",
    ])
    .rows(v.iter().map(|t| {
        vec![
            sanitize(&t.name),
            match t.health {
                Health::Up => "up".to_owned(),
                Health::Down => "DOWN".to_owned(),
            },
            match t.registered {
                None => "-".to_owned(),
                Some(true) => match t.registered_until {
                    Some(until) => format!(
                        "yes ({} left)",
                        fmt_duration(until.saturating_sub(now) / 1000)
                    ),
                    None => "yes".to_owned(),
                },
                Some(false) => "no".to_owned(),
            },
            t.last_rtt_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms")),
            format!("{} ago", fmt_duration(now.saturating_sub(t.since) / 1000)),
            sanitize(&t.reason),
            trunk_addresses(t),
        ]
    }))
    .render_or("no trunks configured\n")
}

/// `ext list`.
pub fn extensions(v: &[ExtensionInfo]) -> String {
    Table::new(&["EXT", "NAME", "REGISTERED", "DND"])
        .rows(v.iter().map(|e| {
            vec![
                e.ext.clone(),
                e.name.clone().unwrap_or_else(|| "-".to_owned()),
                e.registered.to_string(),
                if e.dnd { "on" } else { "-" }.to_owned(),
            ]
        }))
        .render_or("no extensions\n")
}

/// `phone list`: the provisioned phones.
pub fn phones(v: &[PhoneInfo]) -> String {
    Table::new(&[
        "MAC",
        "VENDOR",
        "MODEL",
        "EXT",
        "BLF KEYS",
        "ADDED (UTC)",
        "FETCHED (UTC)",
    ])
    .rows(v.iter().map(|p| {
        vec![
            p.mac.clone(),
            p.vendor.clone(),
            p.model.clone(),
            p.ext.clone(),
            if p.keys.is_empty() {
                "-".to_owned()
            } else {
                p.keys.join(",")
            },
            fmt_time(p.created_ms),
            p.fetched_ms.map_or_else(|| "never".to_owned(), fmt_time),
        ]
    }))
    .render_or("no phones (add one with `outpostctl phone add MAC MODEL EXT`)\n")
}

/// `phone add`: what to set in the phone, shown once.
pub fn phone_added(a: &PhoneAdded) -> String {
    let mut t = Table::plain();
    t.pair(
        "phone",
        format!("{} ({} {})", a.phone.mac, a.phone.vendor, a.phone.model),
    );
    t.pair("extension", a.phone.ext.clone());
    t.pair("file", format!("/provision/{}", sanitize(&a.file)));
    t.pair("provisioning user", a.username.clone());
    t.pair("provisioning password", sanitize(&a.password));
    format!(
        "{}the extension's SIP password was replaced by one only this phone receives; \
         the provisioning password is shown this once (see docs/provisioning.md)\n",
        t.render()
    )
}

/// `ext show`: the extension's settings, then its registered phones.
pub fn extension(e: &ExtensionDetail) -> String {
    let f = &e.forwarding;
    let mut t = Table::plain();
    t.pair("extension", e.ext.clone());
    t.pair("name", e.name.clone().unwrap_or_else(|| "-".to_owned()));
    t.pair("do-not-disturb", if e.dnd { "on" } else { "off" });
    if f.always.is_none() && f.busy.is_none() && f.no_answer.is_none() {
        t.pair("forwarding", "off");
    }
    if let Some(to) = &f.always {
        t.pair("forward always", to.clone());
    }
    if let Some(to) = &f.busy {
        t.pair("forward when busy", to.clone());
    }
    if f.no_answer.is_some() {
        let after = match f.no_answer_ms / 1000 {
            0 => "the ring timeout".to_owned(),
            secs => format!("{secs} s"),
        };
        // A follow-me list: in the order tried, each for the same time.
        let to = f.no_answer_list().join(", then ");
        let each = if f.no_answer_then.is_empty() {
            ""
        } else {
            ", each"
        };
        t.pair(
            "forward on no answer",
            format!("{to} (after {after}{each})"),
        );
    }
    t.pair(
        "caller-ID",
        e.caller_id
            .clone()
            .unwrap_or_else(|| "the route's or trunk's".to_owned()),
    );
    t.pair(
        "voicemail PIN",
        if e.vm_pin_set { "set" } else { "not set" },
    );
    if !e.digest.is_empty() && e.digest != "default" {
        t.pair("digest", e.digest.clone());
    }
    t.pair("registered", e.registrations.len().to_string());
    let mut out = t.render();
    if !e.registrations.is_empty() {
        out.push_str(&registrations(&e.registrations));
    }
    out
}

/// `reg list`, and the phones of `ext show`.
pub fn registrations(v: &[RegistrationInfo]) -> String {
    Table::new(&[
        "EXT",
        "CONTACT",
        "SOURCE",
        "TRANSPORT",
        "EXPIRES IN",
        "USER-AGENT",
    ])
    .rows(v.iter().map(|r| {
        vec![
            r.ext.clone(),
            r.contact.clone(),
            r.source.clone(),
            r.transport.clone(),
            fmt_duration(r.expires_in_secs),
            r.user_agent.clone().unwrap_or_else(|| "-".to_owned()),
        ]
    }))
    .render_or("no registrations\n")
}

/// `calls`: the calls in progress, then each leg's media counters.
pub fn calls(v: &[CallInfo]) -> String {
    let calls = Table::new(&[
        "CALLER",
        "CALLEE",
        "STATE",
        "STARTED (UTC)",
        "DURATION",
        "CALL-ID",
    ])
    .rows(v.iter().map(|c| {
        vec![
            c.caller.clone(),
            c.callee.clone(),
            c.state.clone(),
            fmt_time(c.started_ms),
            fmt_duration(c.duration_secs),
            c.call_id.clone(),
        ]
    }));
    if calls.is_empty() {
        return "no calls in progress\n".to_owned();
    }
    let mut out = calls.render();
    let media = Table::new(&[
        "CALL/LEG",
        "CODEC",
        "PKTS/BYTES IN",
        "PKTS/BYTES OUT",
        "LOST",
        "JITTER MS",
        "RTCP LOST",
        "RTCP JITTER MS",
        "MEDIA FROM",
    ])
    .rows(
        v.iter()
            .filter_map(|c| {
                let m = c.media.as_ref()?;
                let leg = |name: &str, codec: &str, s: &LegStats| {
                    vec![
                        format!("{} {name}", c.caller),
                        codec.to_owned(),
                        format!("{}/{}", s.packets_in, s.bytes_in),
                        format!("{}/{}", s.packets_out, s.bytes_out),
                        s.lost.to_string(),
                        format!("{:.1}", s.jitter_us as f64 / 1000.0),
                        s.rtcp_lost.map_or("-".to_owned(), |l| l.to_string()),
                        s.rtcp_jitter_us
                            .map_or("-".to_owned(), |j| format!("{:.1}", j as f64 / 1000.0)),
                        s.latched.map_or("-".to_owned(), |a| a.to_string()),
                    ]
                };
                Some([leg("A", &m.codec_a, &m.a), leg("B", &m.codec_b, &m.b)])
            })
            .flatten(),
    );
    if !media.is_empty() {
        out.push('\n');
        out.push_str(&media.render());
    }
    out
}

/// `vm list`: the voicemail messages.
pub fn voicemail(v: &[VoicemailRecord]) -> String {
    Table::new(&[
        "ID",
        "MAILBOX",
        "FROM",
        "RECEIVED (UTC)",
        "LENGTH",
        "STATE",
        "FILE",
    ])
    .rows(v.iter().map(|m| {
        vec![
            m.id.to_string(),
            m.mailbox.clone(),
            m.caller.clone(),
            fmt_time(m.at),
            fmt_length_ms(u64::from(m.duration_ms)),
            if m.new { "new" } else { "old" }.to_owned(),
            m.path.display().to_string(),
        ]
    }))
    .render_or("no voicemail messages\n")
}

/// `rec list`: call recordings, newest first.
pub fn recordings(v: &[firmware::recordings::RecordingEntry]) -> String {
    Table::new(&["ID", "STARTED (UTC)", "CALLER", "CALLEE", "BY", "LENGTH"])
        .rows(v.iter().map(|r| {
            vec![
                r.id.to_string(),
                fmt_time(r.started),
                r.caller.clone(),
                r.callee.clone(),
                r.by.clone(),
                fmt_length_ms(u64::from(r.duration_ms)),
            ]
        }))
        .render_or("no call recordings\n")
}

/// `cdr list`: call records, newest first.
pub fn cdrs(v: &[Cdr]) -> String {
    Table::new(&[
        "START (UTC)",
        "CALLER",
        "CALLEE",
        "RESULT",
        "STATUS",
        "TALK",
        "CALL-ID",
    ])
    .rows(v.iter().map(|c| {
        vec![
            fmt_time(c.start),
            c.caller.clone(),
            c.callee.clone(),
            disposition_name(c.disposition).to_owned(),
            c.status.to_string(),
            match c.answer {
                Some(_) => fmt_duration(c.billsec()),
                None => "-".to_owned(),
            },
            c.call_id.clone(),
        ]
    }))
    .render_or("no call records\n")
}

/// How a call ended, in the words of the `RESULT` column.
fn disposition_name(d: Disposition) -> &'static str {
    match d {
        Disposition::Answered => "answered",
        Disposition::Busy => "busy",
        Disposition::Cancelled => "cancelled",
        Disposition::NoAnswer => "no answer",
        Disposition::NotFound => "not found",
        Disposition::Unavailable => "unavailable",
        Disposition::Failed => "failed",
        Disposition::MediaTimeout => "media timeout",
        Disposition::Voicemail => "voicemail",
        Disposition::Transferred => "transferred",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn ext_show_reads_as_a_table() {
        let mut e = ExtensionDetail {
            ext: "100".into(),
            name: Some("Reception".into()),
            forwarding: pbx_core::endpoint::Forwarding {
                always: None,
                busy: Some("101".into()),
                no_answer: Some("0301234567".into()),
                no_answer_ms: 20_000,
                no_answer_then: Vec::new(),
            },
            caller_id: None,
            vm_pin_set: true,
            digest: "default".into(),
            dnd: true,
            registrations: vec![],
        };
        let text = extension(&e);
        assert!(text.contains("forward when busy     101\n"), "{text}");
        assert!(text.contains("0301234567 (after 20 s)"), "{text}");
        assert!(
            text.contains("caller-ID             the route's or trunk's\n"),
            "{text}"
        );
        assert!(text.contains("voicemail PIN         set\n"), "{text}");
        assert!(text.contains("do-not-disturb        on\n"), "{text}");
        e.forwarding.no_answer_then = vec!["01701234567".into()];
        let text = extension(&e);
        assert!(
            text.contains("0301234567, then 01701234567 (after 20 s, each)"),
            "{text}"
        );
        e.forwarding = pbx_core::endpoint::Forwarding::default();
        e.vm_pin_set = false;
        let text = extension(&e);
        assert!(text.contains("forwarding"), "{text}");
        assert!(text.contains("not set"), "{text}");
    }

    #[test]
    fn network_strings_cannot_inject_terminal_escapes() {
        let regs = vec![RegistrationInfo {
            ext: "100".into(),
            contact: "sip:100@10.0.0.5".into(),
            source: "10.0.0.5:5060".into(),
            transport: "UDP".into(),
            expires_in_secs: 65,
            user_agent: Some("evil\u{1b}[2J\nphone".into()),
        }];
        let out = registrations(&regs);
        assert!(!out.contains('\u{1b}'));
        assert_eq!(out.lines().count(), 2);
        assert!(out.contains("evil?[2J?phone"));
        assert!(out.contains("1m05s"));
    }
}

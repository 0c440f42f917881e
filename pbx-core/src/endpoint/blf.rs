//! Busy lamps and presence: what an extension is doing, as the dialog event package (RFC
//! 4235, `application/dialog-info+xml`) and PIDF presence (RFC 3863 with the RPID
//! `on-the-phone` activity, RFC 4480) show it to the phones that watch it.
//!
//! [`line_states`] reads the call table once for every watched extension; [`dialog_info`]
//! and [`pidf`] render one extension's [`LineState`]. The endpoint keeps the state last
//! notified per watched extension and NOTIFYs the watchers when it changes.
//!
//! What a watcher learns: for each call of the extension, its direction, where it stands
//! (trying, early, confirmed) and the other party's number (so a BLF key shows who calls and
//! offers the pickup). Dialog ids are the call's number on this box, never a Call-ID.
//! A park orbit (`701`) can be watched like an extension: its lamp is lit while a call is
//! parked there, showing the parked party.
//!
//! Presence also says whether the extension can be reached at all: with no phone
//! registered it is `closed` (offline). The dialog package has no such state (RFC 4235
//! §3.7.1 knows only dialogs), so an offline extension's lamp is simply dark.
//!
//! A ringing call lights the lamps of the extensions whose phones it rings now (its live
//! forks name them), not of every member of its ring group: an in-order group rings one
//! member at a time.

use std::collections::{HashMap, HashSet};

use super::call::{App, Call, CallState, ForkState};

/// Where one call of a watched extension stands (RFC 4235 §3.7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Phase {
    /// The extension called; nothing rings yet.
    Trying,
    /// Ringing (the extension's phones, or the far end for its own call).
    Early,
    /// Answered.
    Confirmed,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Trying => "trying",
            Phase::Early => "early",
            Phase::Confirmed => "confirmed",
        }
    }
}

/// One call of a watched extension.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct LineDialog {
    /// The call's number on this box.
    pub(super) call: u64,
    /// The extension placed the call.
    pub(super) initiator: bool,
    pub(super) phase: Phase,
    /// The other party's number (an extension or an outside number).
    pub(super) remote: String,
}

/// What one extension is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct LineState {
    /// A phone of it is registered (a park orbit is always reachable). The default,
    /// `false`, is what a restart assumes until the first pass over the bindings.
    pub(super) online: bool,
    /// In do-not-disturb.
    pub(super) dnd: bool,
    /// Its calls, by call number.
    pub(super) dialogs: Vec<LineDialog>,
}

impl LineState {
    /// On a call or ringing.
    pub(super) fn busy(&self) -> bool {
        !self.dialogs.is_empty()
    }

    /// What a presence watcher sees changes only between offline, idle, busy and
    /// do-not-disturb.
    pub(super) fn same_presence(&self, other: &LineState) -> bool {
        self.busy() == other.busy() && self.dnd == other.dnd && self.online == other.online
    }

    /// What a busy lamp (dialog package) shows is the same: the calls and do-not-disturb
    /// (being offline has no dialog state; the lamp is dark either way).
    pub(super) fn same_lamp(&self, other: &LineState) -> bool {
        self.dnd == other.dnd && self.dialogs == other.dialogs
    }
}

/// The state of every extension in `watched`, from the call table (one pass), the
/// extensions in do-not-disturb and `online` (whether an extension has a phone registered).
pub(super) fn line_states(
    calls: &HashMap<u64, Call>,
    dnd: &HashSet<String>,
    online: impl Fn(&str) -> bool,
    watched: &HashSet<String>,
) -> HashMap<String, LineState> {
    let mut out: HashMap<String, LineState> = watched
        .iter()
        .map(|e| {
            let state = LineState {
                online: online(e),
                dnd: dnd.contains(e),
                dialogs: Vec::new(),
            };
            (e.clone(), state)
        })
        .collect();
    let mut add = |ext: &str, dialog: LineDialog| {
        if let Some(s) = out.get_mut(ext) {
            s.dialogs.push(dialog);
        }
    };
    for (&id, c) in calls {
        if c.state == CallState::Ended {
            continue;
        }
        let far_ringing = c
            .forks
            .iter()
            .any(|f| !f.retired && f.state == ForkState::Ringing);
        let phase = match c.state {
            CallState::Answered => Phase::Confirmed,
            _ if far_ringing => Phase::Early,
            _ => Phase::Trying,
        };
        if watched.contains(&c.rec.caller) {
            add(
                &c.rec.caller,
                LineDialog {
                    call: id,
                    initiator: true,
                    phase,
                    remote: c.rec.callee.clone(),
                },
            );
        }
        let recipient = |phase| LineDialog {
            call: id,
            initiator: false,
            phase,
            remote: c.rec.caller.clone(),
        };
        match c.state {
            // Answered: by the extension whose phone answered (a group's member, a
            // forwarding's target), else the one called (its call went out on a trunk).
            // A parked call shows on its orbit's lamp only (below).
            CallState::Answered => {
                let parked = matches!(c.app, Some(App::Parked { .. }));
                let answered_by = c
                    .winner
                    .and_then(|w| c.forks.get(w))
                    .map(|f| match &f.rings {
                        Some(ext) if !parked => ext,
                        _ => &c.rec.callee,
                    });
                if let Some(ext) = answered_by {
                    add(ext, recipient(Phase::Confirmed));
                }
            }
            // Ringing: the extensions whose phones ring now. An in-order group's earlier
            // members' forks are retired, its later ones not started yet.
            CallState::Ringing => {
                for f in c.forks.iter().filter(|f| f.pending()) {
                    if let Some(ext) = &f.rings {
                        add(ext, recipient(Phase::Early));
                    }
                }
            }
            _ => {}
        }
        // A park orbit's lamp: lit while a call waits there (a park key shows it and
        // dialling the orbit takes the call).
        if let Some(App::Parked { orbit, .. }) = &c.app {
            let orbit = orbit.to_string();
            if watched.contains(&orbit) {
                add(&orbit, recipient(Phase::Confirmed));
            }
        }
    }
    for s in out.values_mut() {
        s.dialogs.sort();
        s.dialogs.dedup_by_key(|d| (d.call, d.initiator));
    }
    out
}

/// XML text or attribute value with the five special characters escaped.
fn xml_escape(s: &str) -> String {
    crate::sip::xml_escape(s)
}

/// A SIP URI for `user` in `realm`, escaped for XML.
fn sip_uri(user: &str, realm: &str) -> String {
    xml_escape(&format!("sip:{user}@{realm}"))
}

/// The `application/dialog-info+xml` body (full state) of extension `ext`, the
/// subscription's `version`-th document (RFC 4235 §4.1.2: 0 first, one more each NOTIFY).
pub(super) fn dialog_info(ext: &str, realm: &str, version: u32, state: &LineState) -> String {
    let me = sip_uri(ext, realm);
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n\
         <dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"{version}\" \
         state=\"full\" entity=\"{me}\">\r\n"
    );
    if state.dnd && state.dialogs.is_empty() {
        // Do-not-disturb lights the lamp as busy: a dialog without a party to pick up.
        xml.push_str(
            "<dialog id=\"dnd\" direction=\"recipient\">\r\n<state>confirmed</state>\r\n</dialog>\r\n",
        );
    }
    for d in &state.dialogs {
        let other = sip_uri(&d.remote, realm);
        xml.push_str(&format!(
            "<dialog id=\"call-{}\" direction=\"{}\">\r\n<state>{}</state>\r\n\
             <local><identity>{me}</identity><target uri=\"{me}\"/></local>\r\n\
             <remote><identity>{other}</identity><target uri=\"{other}\"/></remote>\r\n\
             </dialog>\r\n",
            d.call,
            if d.initiator {
                "initiator"
            } else {
                "recipient"
            },
            d.phase.as_str(),
        ));
    }
    xml.push_str("</dialog-info>\r\n");
    xml
}

/// The `application/pidf+xml` body of extension `ext`: open, and `on-the-phone` while it
/// has a call or rings; closed while no phone of it is registered (offline) or in
/// do-not-disturb.
pub(super) fn pidf(ext: &str, realm: &str, state: &LineState) -> String {
    let me = sip_uri(ext, realm);
    let (basic, note, activity) = if state.busy() {
        ("open", "On the phone", "<rpid:on-the-phone/>")
    } else if !state.online {
        // RPID has no "offline" activity: `closed` says it (RFC 3863 §4.1.4).
        ("closed", "Offline", "<rpid:unknown/>")
    } else if state.dnd {
        ("closed", "Do not disturb", "<rpid:busy/>")
    } else {
        ("open", "Available", "<rpid:unknown/>")
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n\
         <presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
         xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" \
         xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" entity=\"{me}\">\r\n\
         <tuple id=\"line\"><status><basic>{basic}</basic></status><contact>{me}</contact>\
         <note>{note}</note></tuple>\r\n\
         <dm:person id=\"person\"><rpid:activities>{activity}</rpid:activities></dm:person>\r\n\
         </presence>\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registered extension with no call.
    fn idle() -> LineState {
        LineState {
            online: true,
            ..LineState::default()
        }
    }

    fn ringing(call: u64, remote: &str) -> LineState {
        LineState {
            online: true,
            dnd: false,
            dialogs: vec![LineDialog {
                call,
                initiator: false,
                phase: Phase::Early,
                remote: remote.into(),
            }],
        }
    }

    #[test]
    fn dialog_info_shows_each_call_with_identities_for_pickup() {
        let dark = dialog_info("201", "pbx", 0, &idle());
        assert!(dark.contains("version=\"0\" state=\"full\" entity=\"sip:201@pbx\""));
        assert!(!dark.contains("<dialog "), "{dark}");
        let xml = dialog_info("201", "pbx", 3, &ringing(7, "200"));
        assert!(xml.contains("version=\"3\""), "{xml}");
        assert!(
            xml.contains("<dialog id=\"call-7\" direction=\"recipient\">"),
            "{xml}"
        );
        assert!(xml.contains("<state>early</state>"), "{xml}");
        assert!(
            xml.contains("<remote><identity>sip:200@pbx</identity>"),
            "{xml}"
        );
        assert!(
            xml.contains("<local><identity>sip:201@pbx</identity><target uri=\"sip:201@pbx\"/>")
        );
    }

    #[test]
    fn hostile_numbers_are_escaped() {
        let xml = dialog_info("201", "pbx", 0, &ringing(1, "<x>\"&'\u{1}"));
        assert!(xml.contains("sip:&lt;x&gt;&quot;&amp;&apos;@pbx"), "{xml}");
        assert!(!xml.contains('\u{1}'));
    }

    #[test]
    fn presence_is_on_the_phone_while_busy() {
        let available = pidf("201", "pbx", &idle());
        assert!(available.contains("<basic>open</basic>") && !available.contains("on-the-phone"));
        let busy = pidf("201", "pbx", &ringing(1, "200"));
        assert!(busy.contains("<rpid:on-the-phone/>"), "{busy}");
        assert!(!idle().same_presence(&ringing(1, "200")));
        assert!(ringing(1, "200").same_presence(&ringing(2, "300")));
    }

    #[test]
    fn no_phone_registered_is_closed_presence_and_a_dark_lamp() {
        let offline = LineState::default();
        let p = pidf("201", "pbx", &offline);
        assert!(
            p.contains("<basic>closed</basic>") && p.contains("<note>Offline</note>"),
            "{p}"
        );
        assert!(
            !p.contains("on-the-phone") && !p.contains("<rpid:busy/>"),
            "{p}"
        );
        let xml = dialog_info("201", "pbx", 0, &offline);
        assert!(!xml.contains("<dialog "), "{xml}");
        // A phone registering changes presence, not the lamp: presence watchers are
        // NOTIFYed, dialog watchers not.
        assert!(!offline.same_presence(&idle()));
        assert!(offline.same_lamp(&idle()));
        assert!(!idle().same_lamp(&ringing(1, "200")));
        // Do-not-disturb while offline is closed too, and still lights the lamp.
        let dnd_offline = LineState {
            dnd: true,
            ..LineState::default()
        };
        assert!(pidf("201", "pbx", &dnd_offline).contains("<basic>closed</basic>"));
        assert!(dialog_info("201", "pbx", 0, &dnd_offline).contains("<dialog id=\"dnd\""));
    }

    #[test]
    fn do_not_disturb_is_closed_and_a_busy_lamp() {
        let dnd = LineState {
            dnd: true,
            ..idle()
        };
        let p = pidf("201", "pbx", &dnd);
        assert!(
            p.contains("<basic>closed</basic>") && p.contains("<rpid:busy/>"),
            "{p}"
        );
        let xml = dialog_info("201", "pbx", 0, &dnd);
        assert!(xml.contains("<dialog id=\"dnd\""), "{xml}");
        assert!(
            xml.contains("<state>confirmed</state>") && !xml.contains("<remote>"),
            "{xml}"
        );
        assert!(!dnd.same_presence(&idle()));
    }
}

//! The table of event subscriptions (RFC 6665) and their NOTIFYs: message-waiting
//! indication (RFC 3842, `message-summary`: how many messages wait), and the busy lamps
//! (RFC 4235 `dialog`) and `presence` of the extensions (bodies from [`super::blf`]).
//!
//! Inputs: an authenticated SUBSCRIBE ([`MwiSubscriptions::on_subscribe`]), a mailbox whose
//! counts changed ([`MwiSubscriptions::subscribers_of`], then [`MwiSubscriptions::notify`]
//! for each), an extension whose calls changed ([`MwiSubscriptions::watchers_of`]), and the
//! clock ([`MwiSubscriptions::expire`]). Outputs go through the [`Signalling`] handed in:
//! the 200 or 403 to the SUBSCRIBE, and NOTIFYs.
//!
//! Memory bound: at most `max` subscriptions of every package together; when full, expired
//! ones are dropped first and a new subscription beyond the bound is answered but not
//! kept. One subscriber holds at most [`MAX_WATCHES_PER_SUBSCRIBER`] dialog and presence
//! subscriptions (a phone with a full BLF sidecar); one more is refused with 403.
//!
//! Persistence: every change to the table (a subscription made, refreshed or ended, a
//! NOTIFY's CSeq) is reported as an [`MwiChange`] (drained by the endpoint into
//! `Event::Mwi`), and [`MwiSubscriptions::restore`] takes the stored [`MwiRecord`]s back at
//! start, so a restart keeps the phones' message lamps in step: the next change of a
//! mailbox is NOTIFYed in the same dialog with a higher CSeq.

use std::collections::HashMap;

use crate::sip::transaction::TxKey;
use crate::sip::{wire, Contact, Method, NameAddr, Params, Peer, Request, Response, Uri};
use crate::Millis;

use super::blf::{self, LineState};
use super::event::{EventPackage, MwiChange, MwiRecord};
use super::signalling::ClientRole;
use super::signalling::{first_contact_uri, Signalling};
use super::voicemail::Counts;

/// Longest subscription we grant (and the default when the phone asks for none), seconds.
const MAX_EXPIRES_SECS: u32 = 3600;
/// Dialog and presence subscriptions one extension may hold.
pub(super) const MAX_WATCHES_PER_SUBSCRIBER: usize = 200;

/// What a NOTIFY reports: a mailbox's counts, or a watched extension's calls.
#[derive(Debug, Clone, Copy)]
pub(super) enum Content<'a> {
    Summary(Counts),
    Line(&'a LineState),
}

/// Who subscribes to what: the authenticated extension, the package, and the extension it
/// watches (for message-summary, its own mailbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Watch {
    pub(super) subscriber: String,
    pub(super) package: EventPackage,
    pub(super) watched: String,
}

/// An MWI subscription (RFC 3842): a dialog in which we NOTIFY message counts.
#[derive(Debug, Clone)]
struct MwiSubscription {
    /// The subscriber's own mailbox (extension).
    mailbox: String,
    package: EventPackage,
    /// The extension watched (dialog, presence), or the mailbox.
    watched: String,
    /// Our tag in the subscription dialog.
    local_tag: String,
    local_uri: NameAddr,
    remote_uri: NameAddr,
    /// Where NOTIFYs go (the subscriber's Contact).
    target: Uri,
    peer: Peer,
    expires_at: Millis,
    /// CSeq of our last NOTIFY.
    cseq: u32,
}

/// A name-addr as it goes on the wire (IPv6 hosts in brackets).
fn name_addr_text(na: &NameAddr) -> String {
    let display = na
        .display
        .as_ref()
        .map(|d| format!("\"{}\" ", d.replace(['"', '\\'], "")))
        .unwrap_or_default();
    format!("{display}<{}>{}", wire::uri_to_string(&na.uri), na.params)
}

impl MwiSubscription {
    fn record(&self, call_id: &str) -> MwiRecord {
        MwiRecord {
            call_id: call_id.to_owned(),
            mailbox: self.mailbox.clone(),
            package: self.package,
            watched: self.watched.clone(),
            local_tag: self.local_tag.clone(),
            local_uri: name_addr_text(&self.local_uri),
            remote_uri: name_addr_text(&self.remote_uri),
            target: wire::uri_to_string(&self.target),
            peer: self.peer,
            expires_at: self.expires_at,
            cseq: self.cseq,
        }
    }

    fn from_record(r: &MwiRecord) -> Option<MwiSubscription> {
        Some(MwiSubscription {
            mailbox: r.mailbox.clone(),
            package: r.package,
            watched: if r.watched.is_empty() {
                r.mailbox.clone()
            } else {
                r.watched.clone()
            },
            local_tag: r.local_tag.clone(),
            local_uri: wire::parse_name_addr(&r.local_uri).ok()?,
            remote_uri: wire::parse_name_addr(&r.remote_uri).ok()?,
            target: wire::parse_uri(&r.target).ok()?,
            peer: r.peer,
            expires_at: r.expires_at,
            cseq: r.cseq,
        })
    }
}

/// The live MWI subscriptions, by Call-ID.
#[derive(Debug)]
pub(super) struct MwiSubscriptions {
    subs: HashMap<String, MwiSubscription>,
    max: usize,
    /// Changes not yet taken by [`MwiSubscriptions::take_changes`] (bounded by the calls
    /// between two takes: the endpoint takes them after every input).
    changes: Vec<MwiChange>,
    /// Dialog and presence subscriptions per watched extension (kept with `subs`, so the
    /// busy-lamp check after each message does not walk every subscription).
    watch_counts: HashMap<String, usize>,
}

/// Counts `sub` in `counts` (`add`) or takes it out, when it watches an extension.
fn count_watch(counts: &mut HashMap<String, usize>, sub: &MwiSubscription, add: bool) {
    if sub.package == EventPackage::MessageSummary {
        return;
    }
    if add {
        *counts.entry(sub.watched.clone()).or_default() += 1;
    } else if let Some(n) = counts.get_mut(&sub.watched) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(&sub.watched);
        }
    }
}

impl MwiSubscriptions {
    /// An empty table that keeps at most `max` subscriptions.
    pub(super) fn new(max: usize) -> Self {
        MwiSubscriptions {
            subs: HashMap::new(),
            max,
            changes: Vec::new(),
            watch_counts: HashMap::new(),
        }
    }

    /// The changes made since the last call, to persist.
    pub(super) fn take_changes(&mut self) -> Vec<MwiChange> {
        std::mem::take(&mut self.changes)
    }

    /// Takes back the stored subscriptions at start: the live ones that still parse, up to
    /// the table's bound (the latest-ending first). Those left out are removed from the
    /// store through [`MwiSubscriptions::take_changes`].
    pub(super) fn restore(&mut self, mut records: Vec<MwiRecord>, now: Millis) {
        records.sort_by_key(|r| std::cmp::Reverse(r.expires_at));
        for r in records {
            let sub = (r.expires_at > now && self.subs.len() < self.max)
                .then(|| MwiSubscription::from_record(&r))
                .flatten();
            match sub {
                Some(sub) => {
                    count_watch(&mut self.watch_counts, &sub, true);
                    if let Some(old) = self.subs.insert(r.call_id, sub) {
                        count_watch(&mut self.watch_counts, &old, false);
                    }
                }
                None => self.changes.push(MwiChange::Remove(r.call_id)),
            }
        }
    }

    /// Number of subscriptions kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.subs.len()
    }

    /// The package of the subscription dialog named by `call_id` and our tag `to_tag` (a
    /// refresh), if there is one.
    pub(super) fn dialog_package(&self, call_id: &str, to_tag: &str) -> Option<EventPackage> {
        self.subs
            .get(call_id)
            .filter(|s| s.local_tag == to_tag)
            .map(|s| s.package)
    }

    /// The extension the subscription `call_id` watches (a refresh's Request-URI is our
    /// Contact, which names no extension).
    pub(super) fn watched_by(&self, call_id: &str) -> Option<String> {
        self.subs.get(call_id).map(|s| s.watched.clone())
    }

    /// The Call-IDs of the message-summary subscriptions to `mailbox`.
    pub(super) fn subscribers_of(&self, mailbox: &str) -> Vec<String> {
        self.subs
            .iter()
            .filter(|(_, s)| s.package == EventPackage::MessageSummary && s.mailbox == mailbox)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The dialog and presence subscriptions to `ext`: Call-ID and package.
    pub(super) fn watchers_of(&self, ext: &str) -> Vec<(String, EventPackage)> {
        self.subs
            .iter()
            .filter(|(_, s)| s.package != EventPackage::MessageSummary && s.watched == ext)
            .map(|(k, s)| (k.clone(), s.package))
            .collect()
    }

    /// The extensions that dialog or presence subscriptions watch.
    pub(super) fn watched(&self) -> std::collections::HashSet<String> {
        self.watch_counts.keys().cloned().collect()
    }

    /// The system clock was stepped by `delta_ms`: every subscription keeps the time it
    /// had left (persisted through [`MwiSubscriptions::take_changes`]).
    pub(super) fn shift_time(&mut self, delta_ms: i64) {
        for (call_id, s) in &mut self.subs {
            s.expires_at = s.expires_at.saturating_add_signed(delta_ms);
            self.changes.push(MwiChange::Upsert(s.record(call_id)));
        }
    }

    /// Drops the subscriptions that expired by `now`.
    pub(super) fn expire(&mut self, now: Millis) {
        let changes = &mut self.changes;
        let counts = &mut self.watch_counts;
        self.subs.retain(|call_id, s| {
            let live = s.expires_at > now;
            if !live {
                changes.push(MwiChange::Remove(call_id.clone()));
                count_watch(counts, s, false);
            }
            live
        });
    }

    /// A SUBSCRIBE (already authenticated, its watched extension checked to exist) from
    /// `watch.subscriber`: for `message-summary` only to one's own mailbox. Answers it,
    /// keeps (or refreshes, or with `Expires: 0` ends) the subscription and sends the
    /// NOTIFY with `content`, what the subscription reports now.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_subscribe(
        &mut self,
        now: Millis,
        sig: &mut Signalling,
        key: TxKey,
        req: &Request,
        src: Peer,
        watch: Watch,
        content: Content<'_>,
        realm: &str,
    ) {
        let user = watch.subscriber;
        let mailbox = req.uri.user().unwrap_or_default();
        if watch.package == EventPackage::MessageSummary
            && mailbox != user
            && req.headers.to.uri.user() != Some(user.as_str())
        {
            sig.reply(now, &key, req, src, 403, None);
            return;
        }
        let refresh = self.subs.get(&req.headers.call_id).is_some_and(|s| {
            s.mailbox == user && s.package == watch.package && s.watched == watch.watched
        });
        if self.subs.contains_key(&req.headers.call_id) && !refresh {
            // A Call-ID already in use for another subscription (another phone's guess).
            sig.reply(now, &key, req, src, 403, None);
            return;
        }
        if watch.package != EventPackage::MessageSummary
            && !refresh
            && self
                .subs
                .values()
                .filter(|s| s.mailbox == user && s.package != EventPackage::MessageSummary)
                .count()
                >= MAX_WATCHES_PER_SUBSCRIBER
        {
            let mut resp = Response::to_request(req, 403, Some(&sig.new_tag()));
            resp.reason = "Too Many Subscriptions".to_string();
            sig.send(now, &key, resp, src);
            return;
        }
        let expires = req
            .headers
            .expires
            .unwrap_or(MAX_EXPIRES_SECS)
            .min(MAX_EXPIRES_SECS);
        let call_id = req.headers.call_id.clone();
        let existing_tag = self.subs.get(&call_id).map(|s| s.local_tag.clone());
        let local_tag = existing_tag.unwrap_or_else(|| sig.new_tag());
        let mut ok = Response::to_request(req, 200, Some(&local_tag));
        ok.headers.expires = Some(expires);
        ok.headers.contact = vec![Contact::Addr(sig.our_contact(src, None))];
        sig.send(now, &key, ok, src);
        if self.subs.len() >= self.max && !self.subs.contains_key(&call_id) {
            self.expire(now);
            if self.subs.len() >= self.max {
                return;
            }
        }
        let mut local_uri = req.headers.to.clone();
        local_uri.params = Params::default();
        let target =
            first_contact_uri(&req.headers).unwrap_or_else(|| req.headers.from.uri.clone());
        // A refresh continues the dialog's CSeq.
        let cseq = self.subs.get(&call_id).map_or(0, |s| s.cseq);
        let sub = MwiSubscription {
            mailbox: user,
            package: watch.package,
            watched: watch.watched,
            local_tag,
            local_uri,
            remote_uri: req.headers.from.clone(),
            target,
            peer: src,
            expires_at: now.saturating_add(u64::from(expires) * 1000),
            cseq,
        };
        count_watch(&mut self.watch_counts, &sub, true);
        if let Some(old) = self.subs.insert(call_id.clone(), sub) {
            count_watch(&mut self.watch_counts, &old, false);
        }
        self.notify(now, sig, &call_id, expires == 0, content, realm);
        if expires == 0 {
            if let Some(old) = self.subs.remove(&call_id) {
                count_watch(&mut self.watch_counts, &old, false);
                self.changes.push(MwiChange::Remove(call_id));
            }
        }
    }

    /// Sends the NOTIFY of subscription `call_id` with `content` (a mailbox's counts for
    /// message-summary, the watched extension's state for dialog and presence).
    pub(super) fn notify(
        &mut self,
        now: Millis,
        sig: &mut Signalling,
        call_id: &str,
        terminated: bool,
        content: Content<'_>,
        realm: &str,
    ) {
        let Some(sub) = self.subs.get_mut(call_id) else {
            return;
        };
        let (content_type, body) = match (sub.package, content) {
            (EventPackage::MessageSummary, Content::Summary(counts)) => (
                "application/simple-message-summary",
                summary(&sub.mailbox, realm, counts),
            ),
            // The document's version counts the NOTIFYs before it (RFC 4235 §4.1.2): the
            // CSeq does too, and survives a restart with the subscription.
            (EventPackage::Dialog, Content::Line(state)) => (
                "application/dialog-info+xml",
                blf::dialog_info(&sub.watched, realm, sub.cseq, state),
            ),
            (EventPackage::Presence, Content::Line(state)) => (
                "application/pidf+xml",
                blf::pidf(&sub.watched, realm, state),
            ),
            _ => return,
        };
        sub.cseq = sub.cseq.saturating_add(1);
        let sub = sub.clone();
        if !terminated {
            self.changes.push(MwiChange::Upsert(sub.record(call_id)));
        }
        let mut from = sub.local_uri.clone();
        from.params.set("tag", Some(sub.local_tag.clone()));
        let mut headers = sig.request_headers(
            sub.peer,
            from,
            sub.remote_uri.clone(),
            call_id.to_string(),
            sub.cseq,
            Method::Notify,
        );
        headers.push("Event", sub.package.as_str());
        let remaining = sub.expires_at.saturating_sub(now) / 1000;
        headers.push(
            "Subscription-State",
            if terminated {
                "terminated;reason=timeout".to_string()
            } else {
                format!("active;expires={remaining}")
            },
        );
        headers.contact = vec![Contact::Addr(sig.our_contact(sub.peer, None))];
        headers.content_type = Some(content_type.to_string());
        let notify = Request {
            method: Method::Notify,
            uri: sub.target.clone(),
            headers,
            body: body.into_bytes(),
        };
        // The answer to a NOTIFY changes nothing: its role is the one that ignores it.
        sig.send_request(now, notify, sub.peer, ClientRole::Bye);
    }
}

/// The `application/simple-message-summary` body (RFC 3842 §5.2) for `mailbox`.
fn summary(mailbox: &str, realm: &str, (new, old): Counts) -> String {
    format!(
        "Messages-Waiting: {}\r\nMessage-Account: sip:{mailbox}@{realm}\r\nVoice-Message: {new}/{old} (0/0)\r\n",
        if new > 0 { "yes" } else { "no" },
    )
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use crate::sip::transaction::{ServerInput, TimerConfig, Transactions};
    use crate::sip::{wire, Message, Transport};

    use super::*;

    const ALICE: &str = "10.0.0.5:5062";

    fn signalling() -> Signalling {
        let local: SocketAddr = "10.0.0.1:5060".parse().expect("address");
        Signalling::new(
            Transactions::new(TimerConfig::default()),
            StdRng::seed_from_u64(7),
            vec![local],
            "outpost-test".to_string(),
        )
    }

    fn peer() -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: ALICE.parse().expect("address"),
        }
    }

    /// A SUBSCRIBE from extension 100 for `mailbox`, received by `sig` at `now`.
    fn subscribe(
        sig: &mut Signalling,
        now: Millis,
        call_id: &str,
        mailbox: &str,
        expires: u32,
        to_tag: Option<&str>,
    ) -> (TxKey, Request) {
        let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
        let text = format!(
            "SUBSCRIBE sip:{mailbox}@pbx SIP/2.0\r\n\
             Via: SIP/2.0/UDP {ALICE};branch=z9hG4bK{call_id}{now}\r\n\
             From: <sip:100@pbx>;tag=a1\r\n\
             To: <sip:{mailbox}@pbx>{to_tag}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {now} SUBSCRIBE\r\n\
             Contact: <sip:100@{ALICE}>\r\n\
             Event: message-summary\r\n\
             Expires: {expires}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let Ok(Message::Request(req)) = wire::parse(text.as_bytes()) else {
            panic!("test SUBSCRIBE does not parse");
        };
        let ServerInput::New(key) = sig.tx.receive_request(now, &req, peer()) else {
            panic!("not a new transaction");
        };
        (key, req)
    }

    /// A message-summary subscription of `user` to its own mailbox.
    fn mine(user: &str) -> Watch {
        Watch {
            subscriber: user.to_string(),
            package: EventPackage::MessageSummary,
            watched: user.to_string(),
        }
    }

    /// Every message `sig` sends, as text.
    fn sent(sig: &mut Signalling) -> Vec<String> {
        std::iter::from_fn(|| sig.tx.poll_transmit())
            .map(|t| String::from_utf8_lossy(&t.bytes).into_owned())
            .collect()
    }

    /// A table in which 100 subscribed at 1 s (Call-ID c1) for `expires` s with `counts`.
    fn subscribed_c1(expires: u32, counts: Counts) -> (Signalling, MwiSubscriptions) {
        let mut sig = signalling();
        let mut mwi = MwiSubscriptions::new(10);
        let (key, req) = subscribe(&mut sig, 1_000, "c1", "100", expires, None);
        let user = "100".to_string();
        mwi.on_subscribe(
            1_000,
            &mut sig,
            key,
            &req,
            peer(),
            mine(&user),
            Content::Summary(counts),
            "pbx",
        );
        (sig, mwi)
    }

    #[test]
    fn a_subscription_restored_from_its_record_notifies_in_the_same_dialog() {
        let (mut sig, mut mwi) = subscribed_c1(600, (0, 0));
        mwi.notify(
            2_000,
            &mut sig,
            "c1",
            false,
            Content::Summary((1, 0)),
            "pbx",
        );
        let before = sent(&mut sig);
        let changes = mwi.take_changes();
        let Some(MwiChange::Upsert(record)) = changes.last() else {
            panic!("no record to store: {changes:?}");
        };
        assert_eq!(record.cseq, 2, "{record:?}");
        assert_eq!(record.expires_at, 601_000);

        // A restart: a new table from the stored record (a JSON round trip, as the store).
        let json = serde_json::to_vec(record).expect("a record serialises");
        let mut after = MwiSubscriptions::new(10);
        after.restore(
            vec![serde_json::from_slice(&json).expect("it reads back")],
            3_000,
        );
        assert!(after.take_changes().is_empty());
        assert_eq!(after.subscribers_of("100"), vec!["c1".to_string()]);
        after.notify(
            3_000,
            &mut sig,
            "c1",
            false,
            Content::Summary((0, 0)),
            "pbx",
        );
        let out = sent(&mut sig);
        assert_eq!(out.len(), 1, "{out:?}");
        let header = |m: &str, name: &str| {
            m.lines()
                .find(|l| l.starts_with(name))
                .map(str::to_owned)
                .unwrap_or_default()
        };
        assert_eq!(header(&out[0], "From:"), header(&before[1], "From:"));
        assert_eq!(header(&out[0], "To:"), header(&before[1], "To:"));
        assert!(
            out[0].starts_with("NOTIFY sip:100@10.0.0.5:5062"),
            "{}",
            out[0]
        );
        assert!(out[0].contains("CSeq: 3 NOTIFY"), "{}", out[0]);
        assert!(
            out[0].contains("Subscription-State: active;expires=598"),
            "{}",
            out[0]
        );
        assert!(
            matches!(after.take_changes().as_slice(), [MwiChange::Upsert(r)] if r.cseq == 3),
            "each NOTIFY's CSeq is stored"
        );

        // An ended or unreadable record is not taken back, and is removed from the store.
        let mut ended = record.clone();
        ended.call_id = "old".into();
        ended.expires_at = 2_999;
        let mut bad = record.clone();
        bad.call_id = "bad".into();
        bad.target = "not a uri".into();
        let mut fresh = MwiSubscriptions::new(10);
        fresh.restore(vec![ended, bad], 3_000);
        assert_eq!(fresh.len(), 0);
        assert_eq!(
            fresh.take_changes(),
            vec![
                MwiChange::Remove("bad".into()),
                MwiChange::Remove("old".into())
            ]
        );
        // Expiry is reported too, so the store does not keep ended subscriptions.
        after.expire(601_000);
        assert_eq!(after.take_changes(), vec![MwiChange::Remove("c1".into())]);
    }

    #[test]
    fn subscription_is_answered_notified_and_expires() {
        let (mut sig, mut mwi) = subscribed_c1(60, (2, 1));
        let out = sent(&mut sig);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].starts_with("SIP/2.0 200"), "{}", out[0]);
        assert!(
            out[1].starts_with("NOTIFY sip:100@10.0.0.5:5062"),
            "{}",
            out[1]
        );
        assert!(out[1].contains("Subscription-State: active;expires=60"));
        assert!(out[1].contains("Voice-Message: 2/1 (0/0)"));
        assert!(out[1].contains("Messages-Waiting: yes"));
        assert_eq!(mwi.subscribers_of("100"), vec!["c1".to_string()]);
        mwi.expire(60_999);
        assert_eq!(mwi.len(), 1, "still live one millisecond before it ends");
        mwi.expire(61_000);
        assert_eq!(mwi.len(), 0);
        assert!(mwi.subscribers_of("100").is_empty());
    }

    #[test]
    fn only_ones_own_mailbox() {
        let mut sig = signalling();
        let mut mwi = MwiSubscriptions::new(10);
        let (key, req) = subscribe(&mut sig, 0, "c1", "200", 60, None);
        mwi.on_subscribe(
            0,
            &mut sig,
            key,
            &req,
            peer(),
            mine("100"),
            Content::Summary((0, 0)),
            "pbx",
        );
        let out = sent(&mut sig);
        assert_eq!(out.len(), 1);
        assert!(out[0].starts_with("SIP/2.0 403"), "{}", out[0]);
        assert_eq!(mwi.len(), 0);
    }

    #[test]
    fn refresh_keeps_the_dialog_and_expires_zero_ends_it() {
        let mut sig = signalling();
        let mut mwi = MwiSubscriptions::new(10);
        let (key, req) = subscribe(&mut sig, 0, "c1", "100", 60, None);
        mwi.on_subscribe(
            0,
            &mut sig,
            key,
            &req,
            peer(),
            mine("100"),
            Content::Summary((0, 0)),
            "pbx",
        );
        let ok = sent(&mut sig).remove(0);
        let Ok(Message::Response(ok)) = wire::parse(ok.as_bytes()) else {
            panic!("200 does not parse");
        };
        let tag = ok.headers.to.tag().expect("our tag").to_string();
        assert_eq!(
            mwi.dialog_package("c1", &tag),
            Some(EventPackage::MessageSummary)
        );
        assert_eq!(mwi.dialog_package("c1", "other"), None);
        let (key, req) = subscribe(&mut sig, 10_000, "c1", "100", 0, Some(&tag));
        mwi.on_subscribe(
            10_000,
            &mut sig,
            key,
            &req,
            peer(),
            mine("100"),
            Content::Summary((0, 0)),
            "pbx",
        );
        let out = sent(&mut sig);
        assert!(
            out[0].contains(&format!("tag={tag}")),
            "same dialog: {}",
            out[0]
        );
        assert!(
            out[1].contains("CSeq: 2 NOTIFY"),
            "CSeq continues: {}",
            out[1]
        );
        assert!(out[1].contains("Subscription-State: terminated;reason=timeout"));
        assert!(out[1].contains("Messages-Waiting: no"));
        assert_eq!(mwi.len(), 0);
    }

    #[test]
    fn a_full_table_makes_room_only_from_expired_subscriptions() {
        let mut sig = signalling();
        let mut mwi = MwiSubscriptions::new(2);
        for (now, id, expires) in [(0, "c1", 10), (0, "c2", 60)] {
            let (key, req) = subscribe(&mut sig, now, id, "100", expires, None);
            mwi.on_subscribe(
                now,
                &mut sig,
                key,
                &req,
                peer(),
                mine("100"),
                Content::Summary((0, 0)),
                "pbx",
            );
        }
        // c1 expired at 10 s: c3 takes its place.
        let (key, req) = subscribe(&mut sig, 20_000, "c3", "100", 60, None);
        mwi.on_subscribe(
            20_000,
            &mut sig,
            key,
            &req,
            peer(),
            mine("100"),
            Content::Summary((0, 0)),
            "pbx",
        );
        let mut ids = mwi.subscribers_of("100");
        ids.sort();
        assert_eq!(ids, vec!["c2".to_string(), "c3".to_string()]);
        // Both live: c4 is answered but not kept.
        sent(&mut sig);
        let (key, req) = subscribe(&mut sig, 21_000, "c4", "100", 60, None);
        mwi.on_subscribe(
            21_000,
            &mut sig,
            key,
            &req,
            peer(),
            mine("100"),
            Content::Summary((0, 0)),
            "pbx",
        );
        let out = sent(&mut sig);
        assert_eq!(out.len(), 1, "a 200 and no NOTIFY: {out:?}");
        assert!(out[0].starts_with("SIP/2.0 200"));
        assert_eq!(mwi.len(), 2);
        assert!(mwi.subscribers_of("100").iter().all(|c| c != "c4"));
    }

    #[test]
    fn dialog_watches_are_counted_capped_and_notified_with_versions() {
        let mut sig = signalling();
        let mut table = MwiSubscriptions::new(1_000);
        let watch = || Watch {
            subscriber: "100".into(),
            package: EventPackage::Dialog,
            watched: "201".into(),
        };
        let idle = LineState::default();
        let (key, req) = subscribe(&mut sig, 0, "c1", "201", 60, None);
        table.on_subscribe(
            0,
            &mut sig,
            key,
            &req,
            peer(),
            watch(),
            Content::Line(&idle),
            "pbx",
        );
        let out = sent(&mut sig);
        assert!(out[0].starts_with("SIP/2.0 200"), "{}", out[0]);
        assert!(out[1].contains("Event: dialog\r\n"), "{}", out[1]);
        assert!(out[1].contains("Content-Type: application/dialog-info+xml"));
        assert!(out[1].contains("version=\"0\""), "{}", out[1]);
        assert_eq!(table.watched().into_iter().collect::<Vec<_>>(), vec!["201"]);
        assert_eq!(
            table.watchers_of("201"),
            vec![("c1".to_string(), EventPackage::Dialog)]
        );
        assert!(
            table.subscribers_of("100").is_empty(),
            "not a mailbox subscription"
        );
        table.notify(1_000, &mut sig, "c1", false, Content::Line(&idle), "pbx");
        let out = sent(&mut sig);
        assert!(out[0].contains("version=\"1\""), "{}", out[0]);
        // A message-summary body is never sent in a dialog subscription.
        table.notify(
            1_000,
            &mut sig,
            "c1",
            false,
            Content::Summary((1, 0)),
            "pbx",
        );
        assert!(sent(&mut sig).is_empty());

        // Another extension's SUBSCRIBE cannot take over the Call-ID.
        let (key, req) = subscribe(&mut sig, 2_000, "c1", "201", 60, None);
        let other = Watch {
            subscriber: "300".into(),
            ..watch()
        };
        table.on_subscribe(
            2_000,
            &mut sig,
            key,
            &req,
            peer(),
            other,
            Content::Line(&idle),
            "pbx",
        );
        assert!(sent(&mut sig)[0].starts_with("SIP/2.0 403"));

        // 200 watches per subscriber; the 201st is refused.
        for i in 1..MAX_WATCHES_PER_SUBSCRIBER {
            let id = format!("w{i}");
            let (key, req) = subscribe(&mut sig, 3_000, &id, "201", 60, None);
            table.on_subscribe(
                3_000,
                &mut sig,
                key,
                &req,
                peer(),
                watch(),
                Content::Line(&idle),
                "pbx",
            );
        }
        assert_eq!(table.len(), MAX_WATCHES_PER_SUBSCRIBER);
        sent(&mut sig);
        let (key, req) = subscribe(&mut sig, 3_000, "one-more", "201", 60, None);
        table.on_subscribe(
            3_000,
            &mut sig,
            key,
            &req,
            peer(),
            watch(),
            Content::Line(&idle),
            "pbx",
        );
        let out = sent(&mut sig);
        assert!(
            out[0].starts_with("SIP/2.0 403 Too Many Subscriptions"),
            "{}",
            out[0]
        );
        assert_eq!(table.len(), MAX_WATCHES_PER_SUBSCRIBER);

        // They end: nothing is watched any more.
        table.expire(63_001);
        assert_eq!(table.len(), 0);
        assert!(table.watched().is_empty());
    }

    #[test]
    fn summary_body() {
        assert_eq!(
            summary("100", "pbx.example", (0, 3)),
            "Messages-Waiting: no\r\nMessage-Account: sip:100@pbx.example\r\nVoice-Message: 0/3 (0/0)\r\n"
        );
        assert!(summary("100", "pbx", (1, 0)).starts_with("Messages-Waiting: yes\r\n"));
    }
}

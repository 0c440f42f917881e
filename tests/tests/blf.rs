//! Busy lamps (RFC 4235 dialog package), presence and do-not-disturb, against the real
//! daemon: a SIPp BLF key watches an extension ring, answer and hang up (with and without
//! a daemon restart between its SUBSCRIBE and the call), a phone and baresip's buddy list
//! (its `presence` module) watch its presence, offline until a phone of it registers and
//! again when it unregisters, an in-order ring group lights only the lamp of the member
//! whose phone rings, only extensions of the box may watch or be watched, and
//! do-not-disturb (admin and feature codes) makes it busy and survives a restart.

use std::net::UdpSocket;
use std::thread;
use std::time::{Duration, Instant};

use outpost_tests::baresip::{Baresip, Extras};
use outpost_tests::{
    body_of, cseq_of, eventually, header_value, json_str, request_method, rtp_pair, sdp_body,
    status_of, Daemon, DaemonConfig, Dialog, SipPhone, Sipp, SippProcess, Transport,
};

/// The phone that calls.
const CALLER: (&str, &str) = ("200", "blf-secret-200");
/// The extension watched: its phone rings and answers.
const WATCHED: (&str, &str) = ("201", "blf-secret-201");
/// The extension whose BLF key (or presence list) watches 201.
const WATCHER: (&str, &str) = ("202", "blf-secret-202");
/// The second member of the in-order ring group (after 201).
const SECOND: (&str, &str) = ("203", "blf-secret-203");
/// Ring group 600: 201, then 203, two seconds each.
const IN_ORDER_GROUP: &str = "[[ring_group]]\nnumber = \"600\"\nmembers = [\"201\", \"203\"]\nstrategy = \"in_order\"\nmember_timeout_secs = 2\ntimeout_secs = 30\n";
/// Upper bound of every SIP wait that is expected to succeed.
const WAIT: Duration = Duration::from_secs(5);
const PCMU: u8 = 0;

/// A registered phone and its RTP sockets.
struct Line {
    sip: SipPhone,
    rtp: (UdpSocket, UdpSocket),
}

impl Line {
    fn new(daemon: &Daemon, (ext, password): (&str, &str)) -> Line {
        let mut sip = SipPhone::new(daemon, ext, password);
        sip.register();
        Line {
            sip,
            rtp: rtp_pair(),
        }
    }

    fn offer(&self) -> String {
        sdp_body(self.rtp.0.local_addr().expect("RTP address"), &[PCMU])
    }
}

/// A daemon with extensions 200, 201 and 202; 200 and 201 registered.
fn start() -> (Daemon, Line, Line) {
    let daemon = Daemon::start_with(DaemonConfig::loopback());
    for (ext, password) in [CALLER, WATCHED, WATCHER] {
        daemon.add_extension(ext, password);
    }
    let a = Line::new(&daemon, CALLER);
    let b = Line::new(&daemon, WATCHED);
    (daemon, a, b)
}

/// 202's BLF key for 201: the SIPp scenario that subscribes and checks four NOTIFYs.
fn blf_key(daemon: &Daemon) -> SippProcess {
    blf_key_for(daemon, WATCHED.0)
}

/// 202's BLF key for `watched`.
fn blf_key_for(daemon: &Daemon, watched: &str) -> SippProcess {
    Sipp::new("blf_watch.xml", daemon)
        .service(watched)
        .account(WATCHER.0, WATCHER.1)
        .timeout_secs(40)
        .spawn()
}

/// How many NOTIFYs (retransmissions included) the BLF key has received so far.
fn notify_count(key: &SippProcess) -> usize {
    key.received_so_far()
        .iter()
        .filter(|m| request_method(m) == Some("NOTIFY"))
        .count()
}

/// Waits until the BLF key has received `n` NOTIFYs.
fn await_notifies(daemon: &Daemon, key: &SippProcess, n: usize, what: &str) {
    eventually(WAIT, || (notify_count(key) >= n).then_some(())).unwrap_or_else(|| {
        panic!(
            "{what}: the BLF key has {} NOTIFYs, expected {n}; it received:\n{:#?}\nlog:\n{}",
            notify_count(key),
            key.received_so_far(),
            daemon.log_text()
        )
    });
}

/// 200 calls 201; 201's phone rings until `ringing` has been done, then answers; the call
/// lasts until `talking` has been done, then 200 hangs up.
fn call(
    daemon: &Daemon,
    a: &mut Line,
    b: &mut Line,
    ringing: impl FnOnce(),
    talking: impl FnOnce(),
) {
    let inv = a.sip.invite(WATCHED.0, &a.offer());
    let b_inv = b.sip.await_request("INVITE", WAIT).unwrap_or_else(|| {
        panic!(
            "201 did not ring; log:\n{}\n200 received:\n{}",
            daemon.log_text(),
            a.sip.transcript()
        )
    });
    b.sip.reply(&b_inv, 180, Some("blf-ring"), "");
    ringing();
    let b_dialog = b.sip.answer(&b_inv, &b.offer());
    assert!(b.sip.await_ack(&b_dialog, WAIT).is_some(), "201 got no ACK");
    let mut a_dialog = a
        .sip
        .await_answer(&inv, WAIT)
        .unwrap_or_else(|resp| panic!("200's call not answered: {resp:?}"));
    talking();
    let cseq = a.sip.send_bye(&mut a_dialog);
    assert!(b.sip.answer_bye(WAIT).is_some(), "201 got no BYE");
    let ok = a.sip.await_final(&a_dialog.call_id, cseq, "BYE", WAIT);
    assert_eq!(ok.and_then(|m| status_of(m.as_bytes())), Some(200));
}

/// The NOTIFY bodies a finished BLF key for 201 got, checked (see
/// [`assert_lamp_sequence_of`]).
fn assert_lamp_sequence(key: SippProcess) -> Vec<String> {
    assert_lamp_sequence_of(key, WATCHED.0)
}

/// The NOTIFY bodies a finished BLF key for `watched` got, checked: the four states in
/// order, each full, versions 0 to 3, the caller's and the watched extension's identities;
/// the last is idle again. Returns the NOTIFYs.
fn assert_lamp_sequence_of(key: SippProcess, watched: &str) -> Vec<String> {
    let outcome = key.wait();
    outcome.assert_success("BLF key");
    let notifies: Vec<String> = outcome
        .received()
        .into_iter()
        .filter(|m| request_method(m) == Some("NOTIFY"))
        .collect();
    let distinct: Vec<&String> = notifies
        .iter()
        .enumerate()
        .filter(|(i, m)| notifies[..*i].iter().all(|p| cseq_of(p) != cseq_of(m)))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(distinct.len(), 4, "{notifies:#?}");
    let bodies: Vec<&str> = distinct.iter().map(|m| body_of(m)).collect();
    assert!(!bodies[0].contains("<dialog "), "idle first: {}", bodies[0]);
    assert!(
        bodies[1].contains("<remote><identity>sip:200@")
            && bodies[1].contains(&format!("<local><identity>sip:{watched}@")),
        "{}",
        bodies[1]
    );
    assert!(
        bodies[2].contains("<state>confirmed</state>")
            && bodies[2].contains(&format!("<local><identity>sip:{watched}@")),
        "{}",
        bodies[2]
    );
    assert!(!bodies[3].contains("<dialog "), "idle last: {}", bodies[3]);
    for m in &distinct {
        assert_eq!(header_value(m, "Event").as_deref(), Some("dialog"), "{m}");
        assert!(
            header_value(m, "Subscription-State").is_some_and(|s| s.starts_with("active")),
            "{m}"
        );
    }
    distinct.into_iter().cloned().collect()
}

#[test]
fn a_blf_key_sees_the_extension_ring_answer_and_hang_up() {
    let (daemon, mut a, mut b) = start();
    let key = blf_key(&daemon);
    await_notifies(&daemon, &key, 1, "subscribed");
    call(
        &daemon,
        &mut a,
        &mut b,
        || await_notifies(&daemon, &key, 2, "ringing"),
        || await_notifies(&daemon, &key, 3, "answered"),
    );
    assert_lamp_sequence(key);
}

#[test]
fn a_blf_subscription_survives_a_restart_without_subscribing_again() {
    let (mut daemon, mut a, mut b) = start();
    let key = blf_key(&daemon);
    await_notifies(&daemon, &key, 1, "subscribed");
    daemon.stop();
    daemon.restart();
    // The phones' registrations were kept too; wait for the daemon to answer again.
    let mut probe = SipPhone::new(&daemon, WATCHER.0, WATCHER.1);
    eventually(Duration::from_secs(10), || {
        (probe.register_status(Duration::from_millis(500)) == Some(200)).then_some(())
    })
    .unwrap_or_else(|| panic!("the daemon did not come back:\n{}", daemon.log_text()));
    call(
        &daemon,
        &mut a,
        &mut b,
        || await_notifies(&daemon, &key, 2, "ringing after the restart"),
        || await_notifies(&daemon, &key, 3, "answered after the restart"),
    );
    let notifies = assert_lamp_sequence(key);
    // One dialog throughout: the same tags, and the CSeq goes on.
    for m in &notifies[1..] {
        assert_eq!(header_value(m, "From"), header_value(&notifies[0], "From"));
        assert_eq!(header_value(m, "To"), header_value(&notifies[0], "To"));
    }
    let cseqs: Vec<u32> = notifies
        .iter()
        .filter_map(|m| cseq_of(m))
        .map(|c| c.0)
        .collect();
    assert!(cseqs.windows(2).all(|w| w[1] > w[0]), "{cseqs:?}");
}

#[test]
fn presence_of_an_extension_is_on_the_phone_while_it_rings_or_talks() {
    let (daemon, mut a, mut b) = start();
    let mut watcher = SipPhone::new(&daemon, WATCHER.0, WATCHER.1);
    let sub = watcher
        .subscribe(WATCHED.0, "presence", "application/pidf+xml", WAIT)
        .unwrap_or_else(|resp| panic!("presence SUBSCRIBE refused:\n{resp}"));
    let call_id = sub.call_id.clone();
    let first = watcher
        .await_notify(&call_id, 0, WAIT)
        .unwrap_or_else(|| panic!("no first NOTIFY:\n{}", watcher.transcript()));
    assert_eq!(
        header_value(&first, "Content-Type").as_deref(),
        Some("application/pidf+xml")
    );
    let body = body_of(&first);
    assert!(
        body.contains("entity=\"sip:201@") && body.contains("<basic>open</basic>"),
        "{body}"
    );
    assert!(!body.contains("on-the-phone"), "idle: {body}");
    let mut last = cseq_of(&first).map_or(0, |c| c.0);
    let mut next = |what: &str| {
        let n = watcher
            .await_notify(&sub.call_id, last, WAIT)
            .unwrap_or_else(|| panic!("no NOTIFY ({what}):\n{}", watcher.transcript()));
        last = cseq_of(&n).map_or(0, |c| c.0);
        body_of(&n).to_owned()
    };
    let busy = std::cell::RefCell::new(String::new());
    call(
        &daemon,
        &mut a,
        &mut b,
        || *busy.borrow_mut() = next("ringing"),
        || thread::sleep(Duration::from_millis(300)),
    );
    let busy = busy.into_inner();
    assert!(busy.contains("<rpid:on-the-phone/>"), "{busy}");
    let idle = next("hung up");
    assert!(!idle.contains("on-the-phone"), "{idle}");

    // A refresh (in the dialog, whose Request-URI is the box's Contact) keeps it, with a
    // NOTIFY of the current state; Expires: 0 ends it with a last NOTIFY.
    let mut sub = sub;
    let mut after = last;
    for (expires, state) in [(600, "active"), (0, "terminated")] {
        let ok = watcher
            .resubscribe(&mut sub, "presence", "application/pidf+xml", expires, WAIT)
            .unwrap_or_else(|resp| panic!("Expires: {expires} was refused:\n{resp}"));
        let granted = expires.to_string();
        assert_eq!(header_value(&ok, "Expires"), Some(granted), "{ok}");
        let notify = watcher
            .await_notify(&sub.call_id, after, WAIT)
            .unwrap_or_else(|| panic!("no NOTIFY after Expires: {expires}"));
        assert!(
            header_value(&notify, "Subscription-State").is_some_and(|s| s.starts_with(state)),
            "{notify}"
        );
        after = cseq_of(&notify).map_or(0, |c| c.0);
    }
}

#[test]
fn only_extensions_of_the_box_are_watched_and_only_by_its_extensions() {
    let (daemon, _a, _b) = start();
    let mut watcher = SipPhone::new(&daemon, WATCHER.0, WATCHER.1);
    let refused = watcher
        .subscribe("299", "dialog", "application/dialog-info+xml", WAIT)
        .err()
        .unwrap_or_else(|| panic!("a subscription to a missing extension was accepted"));
    assert_eq!(status_of(refused.as_bytes()), Some(404), "{refused}");
    // A wrong password gets no subscription (and no NOTIFY).
    let mut stranger = SipPhone::new(&daemon, WATCHER.0, "not-the-password");
    let refused = stranger
        .subscribe(WATCHED.0, "dialog", "application/dialog-info+xml", WAIT)
        .err()
        .unwrap_or_else(|| panic!("a wrong password subscribed"));
    assert!(
        matches!(status_of(refused.as_bytes()), Some(401 | 403 | 407)),
        "{refused}"
    );
    let unknown = watcher
        .subscribe(WATCHED.0, "conference", "application/xml", WAIT)
        .err()
        .unwrap_or_else(|| panic!("an unknown package was accepted"));
    assert_eq!(status_of(unknown.as_bytes()), Some(489), "{unknown}");
}

/// The final status (and reason phrase) of a call from `from` to `number` that no phone
/// answers.
fn refused(from: &mut Line, number: &str) -> (u16, String) {
    let inv = from.sip.invite(number, &from.offer());
    match from.sip.await_answer(&inv, WAIT) {
        Ok(_) => panic!("the call to {number} was answered"),
        Err(None) => panic!("no answer to the call to {number}"),
        Err(Some(resp)) => {
            let status = status_of(resp.as_bytes()).unwrap_or(0);
            let reason = resp
                .lines()
                .next()
                .and_then(|l| l.splitn(3, ' ').nth(2))
                .unwrap_or_default()
                .to_owned();
            (status, reason)
        }
    }
}

/// `ext show EXT`'s do-not-disturb flag, and `ext list`'s.
fn dnd_shown(daemon: &Daemon, ext: &str) -> (bool, bool) {
    let show = daemon.ctl_json(&["ext", "show", ext]);
    let list = daemon.ctl_json(&["ext", "list"]);
    let listed = list
        .as_array()
        .and_then(|l| l.iter().find(|e| e["ext"] == ext))
        .map(|e| e["dnd"] == true);
    (show["dnd"] == true, listed.unwrap_or(false))
}

#[test]
fn do_not_disturb_from_the_admin_or_the_phone_is_busy_shown_and_kept() {
    let (mut daemon, mut a, mut b) = start();
    let mut watcher = SipPhone::new(&daemon, WATCHER.0, WATCHER.1);
    let sub = watcher
        .subscribe(WATCHED.0, "presence", "application/pidf+xml", WAIT)
        .unwrap_or_else(|resp| panic!("presence SUBSCRIBE refused:\n{resp}"));
    let first = watcher
        .await_notify(&sub.call_id, 0, WAIT)
        .expect("first NOTIFY");
    assert!(body_of(&first).contains("<basic>open</basic>"));
    let mut last = cseq_of(&first).map_or(0, |c| c.0);
    let mut next_presence = |watcher: &mut SipPhone, what: &str| {
        let n = watcher
            .await_notify(&sub.call_id, last, WAIT)
            .unwrap_or_else(|| panic!("no NOTIFY ({what}):\n{}", watcher.transcript()));
        last = cseq_of(&n).map_or(0, |c| c.0);
        body_of(&n).to_owned()
    };

    // The admin turns it on: presence says closed, the listings say on, callers get busy.
    daemon.ctl_ok(&["ext", "dnd", WATCHED.0, "on"]);
    let closed = next_presence(&mut watcher, "dnd on");
    assert!(closed.contains("<basic>closed</basic>"), "{closed}");
    assert_eq!(dnd_shown(&daemon, WATCHED.0), (true, true));
    assert_eq!(refused(&mut a, WATCHED.0).0, 486);
    assert!(
        b.sip
            .await_request("INVITE", Duration::from_millis(500))
            .is_none(),
        "201's phone rang in do-not-disturb"
    );

    // The phone turns it off with *79: its calls ring again.
    assert_eq!(
        refused(&mut b, "*79"),
        (480, "Do Not Disturb Off".to_owned())
    );
    let open = next_presence(&mut watcher, "dnd off");
    assert!(open.contains("<basic>open</basic>"), "{open}");
    assert_eq!(dnd_shown(&daemon, WATCHED.0), (false, false));
    call(&daemon, &mut a, &mut b, || {}, || {});

    // *78 turns it on, and it stays on across a restart.
    assert_eq!(
        refused(&mut b, "*78"),
        (480, "Do Not Disturb On".to_owned())
    );
    daemon.stop();
    daemon.restart();
    assert_eq!(dnd_shown(&daemon, WATCHED.0), (true, true));
    assert_eq!(refused(&mut a, WATCHED.0).0, 486);
}

/// baresip's address book line for 201 with its presence status, from `contacts`.
fn baresip_sees(phone: &mut Baresip) -> String {
    let listing = phone.command("contacts", "");
    json_str(&listing, "data")
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("sip:201@"))
        .unwrap_or_default()
        .to_owned()
}

/// 202 as baresip with 201 in its address book, watched through its `presence` module.
fn baresip_buddy_list(daemon: &Daemon) -> Baresip {
    let extras = Extras {
        modules: vec!["contact.so".into(), "presence.so".into()],
        contacts: vec![format!(
            "\"Colleague\" <sip:{}@{}>;presence=p2p",
            WATCHED.0,
            daemon.sip_addr()
        )],
    };
    Baresip::start_with(daemon, WATCHER, Transport::Udp, 440.0, &extras)
}

/// Waits until baresip's address book shows 201 as `want` (lower case); returns the line.
fn await_buddy_status(daemon: &Daemon, phone: &mut Baresip, want: &str, what: &str) -> String {
    eventually(Duration::from_secs(10), || {
        let line = baresip_sees(phone);
        line.to_lowercase().contains(want).then_some(line)
    })
    .unwrap_or_else(|| {
        panic!(
            "{what}: baresip does not see 201 {want}: {:?}\nbaresip log:\n{}\ndaemon log:\n{}",
            baresip_sees(phone),
            phone.log(),
            daemon.log_text()
        )
    })
}

#[test]
fn a_baresip_buddy_list_sees_a_colleague_busy_on_a_call() {
    let (daemon, mut a, mut b) = start();
    let mut watcher = baresip_buddy_list(&daemon);
    let status = |phone: &mut Baresip, want: &str, what: &str| {
        await_buddy_status(&daemon, phone, want, what)
    };
    // Before the first NOTIFY baresip shows "Unknown".
    status(&mut watcher, "online", "idle");
    call(
        &daemon,
        &mut a,
        &mut b,
        || {
            status(&mut watcher, "busy", "ringing");
        },
        || {},
    );
    status(&mut watcher, "online", "hung up");
    watcher.quit();
}

/// `watcher` subscribes to `event` of 201: the subscription and its first NOTIFY.
fn watch(watcher: &mut SipPhone, event: &str, accept: &str) -> (Dialog, String) {
    let sub = watcher
        .subscribe(WATCHED.0, event, accept, WAIT)
        .unwrap_or_else(|resp| panic!("{event} SUBSCRIBE refused:\n{resp}"));
    let first = watcher
        .await_notify(&sub.call_id, 0, WAIT)
        .unwrap_or_else(|| panic!("no first NOTIFY:\n{}", watcher.transcript()));
    (sub, first)
}

#[test]
fn presence_is_offline_until_a_phone_registers_and_again_when_it_unregisters() {
    let daemon = Daemon::start_with(DaemonConfig::loopback());
    for (ext, password) in [WATCHED, WATCHER] {
        daemon.add_extension(ext, password);
    }
    // 202's buddy list (baresip) and 202's desk phone watch 201, which has no phone yet.
    let mut buddy = baresip_buddy_list(&daemon);
    let mut watcher = SipPhone::new(&daemon, WATCHER.0, WATCHER.1);
    let (sub, first) = watch(&mut watcher, "presence", "application/pidf+xml");
    let body = body_of(&first);
    assert!(
        body.contains("<basic>closed</basic>") && body.contains("<note>Offline</note>"),
        "no phone of 201 is registered: {body}"
    );
    let mut last = cseq_of(&first).map_or(0, |c| c.0);
    let mut next = |watcher: &mut SipPhone, what: &str| {
        let n = watcher
            .await_notify(&sub.call_id, last, WAIT)
            .unwrap_or_else(|| panic!("no NOTIFY ({what}):\n{}", watcher.transcript()));
        last = cseq_of(&n).map_or(0, |c| c.0);
        body_of(&n).to_owned()
    };
    await_buddy_status(
        &daemon,
        &mut buddy,
        "offline",
        "before 201's phone registers",
    );

    // 201's phone registers: open, at once and without a call.
    let mut phone = SipPhone::new(&daemon, WATCHED.0, WATCHED.1);
    phone.register();
    let open = next(&mut watcher, "registered");
    assert!(
        open.contains("<basic>open</basic>") && !open.contains("on-the-phone"),
        "{open}"
    );
    await_buddy_status(
        &daemon,
        &mut buddy,
        "online",
        "after 201's phone registered",
    );

    // It unregisters (its last binding): closed again.
    assert_eq!(phone.unregister_status(WAIT), Some(200));
    let closed = next(&mut watcher, "unregistered");
    assert!(closed.contains("<basic>closed</basic>"), "{closed}");
    await_buddy_status(
        &daemon,
        &mut buddy,
        "offline",
        "after 201's phone unregistered",
    );
    buddy.quit();
}

#[test]
fn an_in_order_group_lights_only_the_lamp_of_the_member_whose_phone_rings() {
    let daemon = Daemon::start_with(DaemonConfig::loopback().with_toml(IN_ORDER_GROUP));
    for (ext, password) in [CALLER, WATCHED, WATCHER, SECOND] {
        daemon.add_extension(ext, password);
    }
    let mut a = Line::new(&daemon, CALLER);
    let mut b = Line::new(&daemon, WATCHED);
    let mut c = Line::new(&daemon, SECOND);
    // 202's keys: a SIPp BLF key for 203, its own dialog subscription for 201.
    let key = blf_key_for(&daemon, SECOND.0);
    await_notifies(&daemon, &key, 1, "subscribed to 203");
    let mut watcher = SipPhone::new(&daemon, WATCHER.0, WATCHER.1);
    let (sub, first) = watch(&mut watcher, "dialog", "application/dialog-info+xml");
    let mut last = cseq_of(&first).map_or(0, |c| c.0);
    let mut lamp_201 = |watcher: &mut SipPhone, what: &str| {
        let n = watcher
            .await_notify(&sub.call_id, last, WAIT)
            .unwrap_or_else(|| panic!("no NOTIFY for 201 ({what}):\n{}", watcher.transcript()));
        last = cseq_of(&n).map_or(0, |c| c.0);
        body_of(&n).to_owned()
    };

    // 200 calls the group: 201 has the first turn; only its lamp flashes.
    let inv = a.sip.invite("600", &a.offer());
    let b_inv = b
        .sip
        .await_request("INVITE", WAIT)
        .unwrap_or_else(|| panic!("201 did not ring:\n{}", daemon.log_text()));
    b.sip.reply(&b_inv, 180, Some("grp-201"), "");
    let rang = Instant::now();
    let ringing = lamp_201(&mut watcher, "201 rings");
    assert!(ringing.contains("<state>early</state>"), "{ringing}");
    thread::sleep(Duration::from_millis(700));
    assert_eq!(
        notify_count(&key),
        1,
        "203's lamp changed while only 201 rang: {:#?}",
        key.received_so_far()
    );

    // 201's two seconds are over: its phone is cancelled and its lamp goes dark; 203
    // rings and its key flashes.
    let cancel = b
        .sip
        .await_request("CANCEL", Duration::from_secs(4))
        .unwrap_or_else(|| panic!("201 was never cancelled:\n{}", daemon.log_text()));
    b.sip.reply(&cancel, 200, None, "");
    b.sip.reply(&b_inv, 487, Some("grp-201"), "");
    let dark = lamp_201(&mut watcher, "201's turn over");
    assert!(!dark.contains("<dialog "), "{dark}");
    let c_inv = c
        .sip
        .await_request("INVITE", WAIT)
        .unwrap_or_else(|| panic!("203 did not ring:\n{}", daemon.log_text()));
    let waited = rang.elapsed();
    assert!(
        waited >= Duration::from_millis(1_500),
        "203 rang {waited:?} after 201 (member timeout 2 s)"
    );
    c.sip.reply(&c_inv, 180, Some("grp-203"), "");
    await_notifies(&daemon, &key, 2, "203 rings");

    // 203 answers: its lamp (not 201's) shows the call; 200 hangs up.
    let c_dialog = c.sip.answer(&c_inv, &c.offer());
    assert!(c.sip.await_ack(&c_dialog, WAIT).is_some(), "203 got no ACK");
    let mut a_dialog = a
        .sip
        .await_answer(&inv, WAIT)
        .unwrap_or_else(|resp| panic!("200's call not answered: {resp:?}"));
    await_notifies(&daemon, &key, 3, "203 answered");
    let cseq = a.sip.send_bye(&mut a_dialog);
    assert!(c.sip.answer_bye(WAIT).is_some(), "203 got no BYE");
    let ok = a.sip.await_final(&a_dialog.call_id, cseq, "BYE", WAIT);
    assert_eq!(ok.and_then(|m| status_of(m.as_bytes())), Some(200));
    assert_lamp_sequence_of(key, SECOND.0);
    assert!(
        watcher
            .await_notify(&sub.call_id, last, Duration::from_millis(500))
            .is_none(),
        "201's lamp showed 203's call"
    );
}

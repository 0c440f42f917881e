//! Busy lamps (RFC 4235 dialog package), presence and do-not-disturb, against the real
//! daemon: a SIPp BLF key watches an extension ring, answer and hang up (with and without
//! a daemon restart between its SUBSCRIBE and the call), a phone and baresip's buddy list
//! (its `presence` module) watch its presence, only extensions of the box may watch or be
//! watched, and do-not-disturb (admin and feature codes) makes it busy and survives a
//! restart.

use std::net::UdpSocket;
use std::thread;
use std::time::Duration;

use outpost_tests::baresip::{Baresip, Extras};
use outpost_tests::{
    body_of, cseq_of, eventually, header_value, json_str, request_method, rtp_pair, sdp_body,
    status_of, Daemon, DaemonConfig, SipPhone, Sipp, SippProcess, Transport,
};

/// The phone that calls.
const CALLER: (&str, &str) = ("200", "blf-secret-200");
/// The extension watched: its phone rings and answers.
const WATCHED: (&str, &str) = ("201", "blf-secret-201");
/// The extension whose BLF key (or presence list) watches 201.
const WATCHER: (&str, &str) = ("202", "blf-secret-202");
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
    Sipp::new("blf_watch.xml", daemon)
        .service(WATCHED.0)
        .account(WATCHER.0, WATCHER.1)
        .timeout_secs(40)
        .spawn()
}

/// Waits until the BLF key has received `n` NOTIFYs.
fn await_notifies(daemon: &Daemon, key: &SippProcess, n: usize, what: &str) {
    let count = || {
        key.received_so_far()
            .iter()
            .filter(|m| request_method(m) == Some("NOTIFY"))
            .count()
    };
    eventually(WAIT, || (count() >= n).then_some(())).unwrap_or_else(|| {
        panic!(
            "{what}: the BLF key has {} NOTIFYs, expected {n}; it received:\n{:#?}\nlog:\n{}",
            count(),
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

/// The NOTIFY bodies a finished BLF key got, checked: the four states in order, each
/// full, versions 0 to 3, the caller's and the watched extension's identities; the last is
/// idle again. Returns the NOTIFYs.
fn assert_lamp_sequence(key: SippProcess) -> Vec<String> {
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
            && bodies[1].contains("<local><identity>sip:201@"),
        "{}",
        bodies[1]
    );
    assert!(
        bodies[2].contains("<state>confirmed</state>"),
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

#[test]
fn a_baresip_buddy_list_sees_a_colleague_busy_on_a_call() {
    let (daemon, mut a, mut b) = start();
    let extras = Extras {
        modules: vec!["contact.so".into(), "presence.so".into()],
        contacts: vec![format!(
            "\"Colleague\" <sip:{}@{}>;presence=p2p",
            WATCHED.0,
            daemon.sip_addr()
        )],
    };
    let mut watcher = Baresip::start_with(&daemon, WATCHER, Transport::Udp, 440.0, &extras);
    let status = |phone: &mut Baresip, want: &str, what: &str| {
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

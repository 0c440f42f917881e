//! Calls through the B2BUA: a SIPp caller (UAC) and a registered SIPp callee (UAS).

use std::time::Duration;

use serde_json::Value;

use outpost_tests::{
    header_values, json_str, Daemon, DaemonConfig, Sipp, SippOutcome, SippProcess, Transport,
};

const WAIT: Duration = Duration::from_secs(5);
const CALLER: (&str, &str) = ("200", "caller-pass-200");
const CALLEE: (&str, &str) = ("201", "callee-pass-201");

fn pbx() -> Daemon {
    let daemon = Daemon::start();
    daemon.add_extension(CALLER.0, CALLER.1);
    daemon.add_extension(CALLEE.0, CALLEE.1);
    daemon
}

/// Starts a SIPp callee that registers 201 and answers with `behaviour` (an -oocsf
/// scenario); returns once the registration is listed.
fn callee(daemon: &Daemon, behaviour: &str, transport: Transport) -> SippProcess {
    let mut process = Sipp::new("callee.xml", daemon)
        .account(CALLEE.0, CALLEE.1)
        .ooc(behaviour)
        .transport(transport)
        .spawn();
    let deadline = std::time::Instant::now() + WAIT;
    while daemon.registrations_of(CALLEE.0).is_empty() {
        if !process.is_running() || std::time::Instant::now() >= deadline {
            let outcome = process.wait();
            panic!("callee did not register:\n{}", outcome.dump());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    process
}

fn caller(daemon: &Daemon, scenario: &str, dialled: &str, transport: Transport) -> Sipp {
    Sipp::new(scenario, daemon)
        .account(CALLER.0, CALLER.1)
        .service(dialled)
        .transport(transport)
}

fn only_cdr(daemon: &Daemon) -> Value {
    let cdrs = daemon.wait_cdrs(1, WAIT);
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    cdrs.into_iter().next().expect("one CDR")
}

fn answered_call(transport: Transport) {
    let daemon = pbx();
    let callee = callee(&daemon, "uas_answer.xml", transport);
    let outcome = caller(&daemon, "uac_call.xml", CALLEE.0, transport).run();
    outcome.assert_success("caller of an answered call");
    let statuses = outcome.received_statuses();
    assert_eq!(statuses.first(), Some(&407), "{statuses:?}");
    assert!(
        statuses.contains(&180),
        "ringing relayed to the caller: {statuses:?}"
    );
    let callee = callee.wait();
    callee.assert_success("callee of an answered call");
    // A B2BUA: the callee's leg is a new dialog with its own Call-ID.
    let a_leg = first_call_id(&outcome.sent(), "INVITE");
    let b_leg = first_call_id(&callee.received(), "INVITE");
    assert_ne!(a_leg, b_leg, "the B-leg reuses the caller's Call-ID");

    let cdr = only_cdr(&daemon);
    assert_eq!(json_str(&cdr, "disposition"), Some("answered"), "{cdr}");
    assert_eq!(json_str(&cdr, "caller"), Some(CALLER.0), "{cdr}");
    assert_eq!(json_str(&cdr, "callee"), Some(CALLEE.0), "{cdr}");
    assert_eq!(cdr["status"].as_u64(), Some(200), "{cdr}");
    let start = cdr["start"].as_u64().expect("start");
    let answer = cdr["answer"]
        .as_u64()
        .expect("answered call has an answer time");
    let end = cdr["end"].as_u64().expect("end");
    assert!(start <= answer && answer <= end, "{cdr}");
    // The caller holds the call for 500 ms before its BYE.
    assert!(end - answer >= 400, "{cdr}");
    let calls = daemon.ctl_json(&["calls"]);
    assert_eq!(
        calls.as_array().map(Vec::len),
        Some(0),
        "no call left: {calls}"
    );
}

/// The Call-ID of the first `method` request among `messages`.
fn first_call_id(messages: &[String], method: &str) -> String {
    messages
        .iter()
        .find(|m| m.starts_with(&format!("{method} ")))
        .and_then(|m| header_values(m, "Call-ID").into_iter().next())
        .unwrap_or_else(|| panic!("no {method} with a Call-ID in {messages:#?}"))
}

#[test]
fn answered_call_is_relayed_and_recorded() {
    answered_call(Transport::Udp);
}

#[test]
fn answered_call_over_tcp() {
    answered_call(Transport::Tcp);
}

#[test]
fn callee_hangs_up_and_the_bye_reaches_the_caller() {
    let daemon = pbx();
    let callee = callee(&daemon, "uas_answer_hangup.xml", Transport::Udp);
    let outcome: SippOutcome =
        caller(&daemon, "uac_call_remote_bye.xml", CALLEE.0, Transport::Udp).run();
    outcome.assert_success("caller whose callee hangs up");
    callee.wait().assert_success("callee that hangs up");
    let cdr = only_cdr(&daemon);
    assert_eq!(json_str(&cdr, "disposition"), Some("answered"), "{cdr}");
    assert!(!cdr["answer"].is_null(), "{cdr}");
}

#[test]
fn busy_callee_486_reaches_the_caller() {
    let daemon = pbx();
    let callee = callee(&daemon, "uas_busy.xml", Transport::Udp);
    let outcome = caller(&daemon, "uac_busy.xml", CALLEE.0, Transport::Udp).run();
    outcome.assert_success("caller of a busy callee");
    assert_eq!(outcome.received_statuses().last(), Some(&486));
    callee.wait().assert_success("busy callee");
    let cdr = only_cdr(&daemon);
    assert_eq!(json_str(&cdr, "disposition"), Some("busy"), "{cdr}");
    assert_eq!(cdr["status"].as_u64(), Some(486), "{cdr}");
    assert!(cdr["answer"].is_null(), "{cdr}");
}

#[test]
fn cancel_while_ringing_gives_487_and_cancels_the_callee() {
    let daemon = pbx();
    let callee = callee(&daemon, "uas_ringing.xml", Transport::Udp);
    let outcome = caller(&daemon, "uac_cancel.xml", CALLEE.0, Transport::Udp).run();
    outcome.assert_success("caller who cancels");
    assert_eq!(outcome.received_statuses().last(), Some(&487));
    callee.wait().assert_success("callee that gets the CANCEL");
    let cdr = only_cdr(&daemon);
    assert_eq!(json_str(&cdr, "disposition"), Some("cancelled"), "{cdr}");
    assert!(cdr["answer"].is_null(), "{cdr}");
}

#[test]
fn unanswered_call_times_out_with_480_and_cancels_the_callee() {
    let mut config = DaemonConfig::loopback();
    config.ring_timeout_secs = 2;
    let daemon = Daemon::start_with(config);
    daemon.add_extension(CALLER.0, CALLER.1);
    daemon.add_extension(CALLEE.0, CALLEE.1);
    let callee = callee(&daemon, "uas_ringing.xml", Transport::Udp);
    let outcome = caller(&daemon, "uac_no_answer.xml", CALLEE.0, Transport::Udp).run();
    outcome.assert_success("caller nobody answers");
    assert_eq!(outcome.received_statuses().last(), Some(&480));
    callee
        .wait()
        .assert_success("ringing callee that gets the CANCEL");
    let cdr = only_cdr(&daemon);
    assert_eq!(json_str(&cdr, "disposition"), Some("no_answer"), "{cdr}");
    let rang = cdr["end"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(cdr["start"].as_u64().unwrap_or(0));
    assert!(
        (1_900..10_000).contains(&rang),
        "rang {rang} ms with a 2 s timeout: {cdr}"
    );
}

#[test]
fn unknown_number_gets_404() {
    let daemon = pbx();
    let outcome = caller(&daemon, "uac_unknown.xml", "999", Transport::Udp).run();
    outcome.assert_success("call to an unknown number");
    assert_eq!(outcome.received_statuses().last(), Some(&404));
    let cdr = only_cdr(&daemon);
    assert_eq!(json_str(&cdr, "disposition"), Some("not_found"), "{cdr}");
}

#[test]
fn unregistered_callee_gets_480() {
    let daemon = pbx();
    let outcome = caller(&daemon, "uac_offline.xml", CALLEE.0, Transport::Udp).run();
    outcome.assert_success("call to an extension with no registration");
    assert_eq!(outcome.received_statuses().last(), Some(&480));
    let cdr = only_cdr(&daemon);
    assert_eq!(json_str(&cdr, "disposition"), Some("unavailable"), "{cdr}");
}

#[test]
fn call_with_a_wrong_password_gets_403_and_is_not_routed() {
    let daemon = pbx();
    // A wrong password must stop the call at the challenge: no routing, no 480.
    let outcome = caller(&daemon, "uac_offline.xml", CALLEE.0, Transport::Udp)
        .account(CALLER.0, "wrong-password-x")
        .timeout_secs(8)
        .run();
    assert_ne!(outcome.code, Some(0), "{}", outcome.dump());
    let statuses = outcome.received_statuses();
    assert_eq!(statuses.first(), Some(&407), "{statuses:?}");
    assert!(!statuses.contains(&480), "{statuses:?}");
    assert!(!statuses.contains(&200), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&403), "{statuses:?}");
}

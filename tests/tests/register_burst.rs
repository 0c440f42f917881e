//! A REGISTER burst against the appliance's default configuration: completed transactions
//! keep only their final response outside the live table (`[sip] max_server_transactions`
//! caps pending ones), so a sustained rate far above 2,048 / 32 s is taken without a 503,
//! with peak memory under a stated cap, and the memory comes back once Timer J has passed.
//! Alone in its own test binary so nothing else loads the machine while it runs.

use std::fs;
use std::time::{Duration, Instant};

use outpost_tests::{eventually, Daemon, DaemonConfig, Sipp};

/// Extensions registering (each registers `REGISTERS / EXTENSIONS` times, new Call-IDs).
const EXTENSIONS: u32 = 1_000;
/// Registrations in the burst: with the old table (every completed REGISTER held for
/// Timer J, 32 s, against the cap of 2,048) the 503s start after ~2 s at this rate.
const REGISTERS: u32 = 12_000;
/// Offered rate, REGISTER (each with its 401 round trip) per second.
const RATE: u32 = 800;
/// Peak resident memory allowed to the debug daemon through the burst (measured: see
/// bench/README.md "REGISTER burst test").
const PEAK_CAP_KIB: u64 = 96 * 1024;

/// `field` (VmRSS, VmHWM, RssAnon) of `pid` in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// A counter of `outpostctl metrics --json`.
fn metric(daemon: &Daemon, name: &str) -> u64 {
    let m = daemon.ctl_json(&["metrics"]);
    m.get(name)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("metric {name} in {m}"))
}

#[test]
fn a_register_burst_with_the_default_config_gets_no_503_and_memory_stays_bounded() {
    let daemon = Daemon::start_with(DaemonConfig::loopback());
    let dir = tempfile::tempdir().expect("temp dir");
    let csv = dir.path().join("extensions.csv");
    let users = dir.path().join("users.csv");
    let mut ext_lines = String::new();
    let mut user_lines = String::from("SEQUENTIAL\n");
    for i in 0..EXTENSIONS {
        let ext = 100_000 + i;
        ext_lines.push_str(&format!("{ext},burst-pw-{ext}\n"));
        user_lines.push_str(&format!(
            "{ext};[authentication username={ext} password=burst-pw-{ext}]\n"
        ));
    }
    fs::write(&csv, ext_lines).expect("write csv");
    fs::write(&users, user_lines).expect("write users");
    daemon.ctl_ok(&["ext", "import", csv.to_str().expect("utf-8 path")]);
    let pid = daemon.pid().expect("pid");
    let idle = status_kib(pid, "VmRSS");
    let idle_anon = status_kib(pid, "RssAnon");

    let started = Instant::now();
    let outcome = Sipp::new("register_burst.xml", &daemon)
        .injection_file(&users)
        .rate(RATE)
        .limit(RATE * 2)
        .calls(REGISTERS)
        .timeout_secs(REGISTERS / RATE + 30)
        .without_message_trace()
        .run();
    let took = started.elapsed();
    // A 503 (the live table full) fails SIPp's call: its errors name the answer.
    outcome.assert_success("REGISTER burst");
    let peak = status_kib(pid, "VmHWM");
    let overloaded = metric(&daemon, "sip_overloaded");
    let completed = metric(&daemon, "sip_transactions_completed");
    let dropped = metric(&daemon, "sip_transactions_completed_dropped");
    println!(
        "{REGISTERS} REGISTERs at {RATE}/s from {EXTENSIONS} extensions in {took:?}: \
         SIPp exit {:?}; 503s {overloaded}; completed entries {completed}, dropped early \
         {dropped}; outpostd VmRSS idle {idle} KiB, VmHWM {peak} KiB",
        outcome.code
    );
    assert_eq!(overloaded, 0, "503 answers during the burst");
    assert_eq!(dropped, 0, "the completed cache holds 32 s at this rate");
    assert!(
        peak < PEAK_CAP_KIB,
        "outpostd peak RSS {peak} KiB above {PEAK_CAP_KIB} KiB"
    );
    assert!(
        took < Duration::from_secs(u64::from(REGISTERS / RATE) * 2),
        "the daemon did not keep up: {took:?}"
    );

    // Timer J passes (32 s after the last 200): the completed cache empties.
    let drained = eventually(Duration::from_secs(40), || {
        (metric(&daemon, "sip_transactions_completed") == 0).then_some(())
    });
    assert!(drained.is_some(), "completed entries never expired");
    let after = status_kib(pid, "VmRSS");
    let after_anon = status_kib(pid, "RssAnon");
    println!(
        "outpostd after Timer J: VmRSS {after} KiB (idle {idle} KiB), RssAnon {after_anon} KiB \
         (idle {idle_anon} KiB)"
    );
    // Issue 18's goal: back within 2x of idle. What stays is not the transaction tables
    // (empty, checked above) but the debug binary's code pages the burst touched first
    // (RssFile) and heap glibc keeps: malloc_trim(0) from gdb gave back only 4 of the
    // 17 MiB RssAnon grew by, so pages stay pinned by allocations that outlive the burst
    // (nonces are tracked for their 5-minute lifetime, bindings were rewritten).
    assert!(
        after < 2 * idle,
        "VmRSS {after} KiB after the burst, idle was {idle} KiB"
    );
}

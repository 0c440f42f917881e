//! The NTP client (`[time]`) against a real NTP server: Debian's chronyd on loopback, which
//! serves this machine's time and never steers it (`-x`). The daemon runs without
//! `--set-clock` here, so it only watches: this machine's clock is not the test's to set.
//! Setting the clock is tested under qemu (tests/tests/image.rs: a guest whose battery-less
//! clock starts in 1970).
//!
//! Every wait is bounded; chronyd and the daemon are stopped on drop.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use outpost_tests::servers::Chrony;
use outpost_tests::{eventually, free_port, json_str, Daemon, DaemonConfig};

const SETTLE: Duration = Duration::from_secs(15);

fn time_status(daemon: &Daemon) -> Value {
    daemon.ctl_json(&["status"])["time"].clone()
}

/// Applies the running configuration with its `[time]` table replaced by `time`.
fn apply_time(daemon: &Daemon, time: &str) {
    let shown = daemon.ctl_json(&["config", "show"]);
    let text = json_str(&shown, "text").expect("config text");
    let kept = text.split("[time]").next().expect("text before [time]");
    let path = daemon.dir().join("time.toml");
    std::fs::write(&path, format!("{kept}{time}")).expect("write config");
    daemon.ctl_ok(&["config", "apply", path.to_str().expect("utf-8 path")]);
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

#[test]
fn the_clock_is_checked_against_a_real_ntp_server_and_saved_on_data() {
    let chrony = Chrony::start(None);
    // Nothing listens here: the kernel answers "port unreachable".
    let dead = free_port();
    let mut daemon = Daemon::start_with(DaemonConfig::loopback().with_toml(&format!(
        "[time]\nservers = [\"127.0.0.1:{dead}\"]\npoll_secs = 64\n"
    )));

    // A server that does not answer: not synchronised, and why.
    let status = eventually(SETTLE, || {
        let t = time_status(&daemon);
        t["last_error"].is_string().then_some(t)
    })
    .unwrap_or_else(|| panic!("no NTP round reported: {}", time_status(&daemon)));
    assert_eq!(status["synchronised"], false, "{status}");
    assert_eq!(status["sets_clock"], false, "{status}");
    assert_eq!(status["servers"], 1, "{status}");
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("127.0.0.1:{dead}")) && error.contains("unreachable or refused"),
        "{status}"
    );
    let text = daemon.ctl_ok(&["status"]);
    assert!(text.contains("NOT SYNCHRONISED"), "{text}");

    // `config apply` adds the real server: a round starts at once, and one good answer
    // among the two servers is enough.
    apply_time(
        &daemon,
        &format!(
            "[time]\nservers = [\"127.0.0.1:{dead}\", \"127.0.0.1:{}\"]\npoll_secs = 64\n",
            chrony.port()
        ),
    );
    let status = eventually(SETTLE, || {
        let t = time_status(&daemon);
        (t["synchronised"] == true).then_some(t)
    })
    .unwrap_or_else(|| {
        panic!(
            "not synchronised with chronyd: {}\nchronyd:\n{}",
            time_status(&daemon),
            chrony.log()
        )
    });
    assert_eq!(
        status["server"],
        format!("127.0.0.1:{}", chrony.port()),
        "{status}"
    );
    assert_eq!(
        status["stratum"], 3,
        "chronyd serves `local stratum 3`: {status}"
    );
    // The same machine's clock: the offset is the exchange's own error.
    let offset = status["offset_ms"].as_i64().expect("offset");
    assert!(offset.abs() < 1_000, "{status}");
    // Watching only: the offset is measured, the clock is left alone.
    assert_eq!(status["correction"], "none", "{status}");
    assert!(status["last_error"].is_null(), "{status}");
    let text = daemon.ctl_ok(&["status"]);
    let line = format!("synchronised (127.0.0.1:{}, stratum 3", chrony.port());
    assert!(text.contains(&line), "{text}");
    assert!(text.contains("watching only"), "{text}");

    // At shutdown the time is saved on /data: the floor rc.sysinit sets a clock that
    // starts in 1970 to.
    daemon.stop();
    let saved = std::fs::read_to_string(daemon.data_dir().join("clock")).expect("clock file");
    let saved: u64 = saved.trim().parse().expect("decimal seconds");
    assert!(unix_now().abs_diff(saved) <= 5, "saved {saved}");
}

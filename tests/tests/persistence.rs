//! What was acknowledged survives a SIGKILL: extensions and registrations.

use std::time::Duration;

use outpost_tests::{json_str, Daemon, Sipp};

#[test]
fn registrations_and_extensions_survive_kill_9() {
    let mut daemon = Daemon::start();
    daemon.add_extension("100", "secret-100");
    daemon.add_extension("101", "secret-101");
    daemon.ctl_ok(&["ext", "del", "101"]);
    let sipp = Sipp::new("register.xml", &daemon).account("100", "secret-100");
    let port = sipp.port();
    sipp.run().assert_success("register");
    daemon.wait_registered("100", Duration::from_secs(5));

    daemon.kill9();
    daemon.restart();

    let exts = daemon.ctl_json(&["ext", "list"]);
    let listed: Vec<&str> = exts
        .as_array()
        .expect("ext list is an array")
        .iter()
        .filter_map(|e| json_str(e, "ext"))
        .collect();
    assert_eq!(listed, vec!["100"], "{exts}");

    let regs = daemon.registrations_of("100");
    assert_eq!(regs.len(), 1, "{:?}", daemon.registrations());
    assert_eq!(
        json_str(&regs[0], "source"),
        Some(format!("127.0.0.1:{port}").as_str())
    );

    // The restarted daemon still authenticates the stored extension.
    Sipp::new("register.xml", &daemon)
        .account("100", "secret-100")
        .local_port(port)
        .run()
        .assert_success("register after restart");
}

#[test]
fn sigterm_stops_the_daemon_cleanly_and_data_stays() {
    let mut daemon = Daemon::start();
    daemon.add_extension("100", "secret-100");
    let status = daemon
        .stop()
        .expect("outpostd exits within 10 s of SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    daemon.restart();
    let exts = daemon.ctl_json(&["ext", "list"]);
    assert_eq!(exts.as_array().map(Vec::len), Some(1), "{exts}");
}

//! `[media] kernel_fast_path` on the real daemon (issue 18): in its own network namespace,
//! the daemon installs the fast path's table with forwarding closed to everything else,
//! reports it in `status`, and leaves nothing behind when it stops; with a relay bound on
//! 0.0.0.0 it says why it runs in user space only. The forwarding itself (latching, counters,
//! strangers, take-back, timeout) is tested against the relay in three namespaces
//! (`firmware/src/media/relay/kernel_tests.rs`). REQUIRES root, `ip` and `nft`.

use std::process::Command;

use outpost_tests::{require_root, Daemon, DaemonConfig, Netns};

fn in_ns(ns: &Netns, args: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .args(args)
        .output()
        .expect("ip netns exec runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

#[test]
fn the_daemon_installs_the_fast_path_reports_it_and_removes_it_at_stop() {
    require_root("the kernel fast path (nftables, a network namespace)");
    let ns = Netns::create("fast");
    let mut daemon = Daemon::start_in(
        &ns,
        DaemonConfig::loopback().with_media("kernel_fast_path = true"),
    );
    let status = daemon.ctl_json(&["status"]);
    let fast = status["media_fast_path"].as_str().unwrap_or_default();
    assert!(fast.starts_with("on:"), "status: {status}");
    assert!(daemon.ctl_ok(&["status"]).contains("media fast path"));

    let (ok, table) = in_ns(&ns, &["nft", "list", "table", "ip", "outpost_rtp"]);
    assert!(ok, "the table exists");
    assert!(
        table.contains("hook forward") && table.contains("policy drop"),
        "forwarding closed to all but the fast path: {table}"
    );
    let forward = || in_ns(&ns, &["cat", "/proc/sys/net/ipv4/ip_forward"]).1;
    assert_eq!(forward(), "1");

    daemon.stop();
    assert!(
        !in_ns(&ns, &["nft", "list", "table", "ip", "outpost_rtp"]).0,
        "the table is gone"
    );
    assert_eq!(forward(), "0", "forwarding back off");
}

#[test]
fn a_relay_on_every_address_runs_in_user_space_and_says_why() {
    require_root("the kernel fast path (nftables, a network namespace)");
    let ns = Netns::create("fast0");
    let daemon = Daemon::start_in(
        &ns,
        DaemonConfig::loopback().with_media("kernel_fast_path = true\naddrs = [\"0.0.0.0\"]"),
    );
    let status = daemon.ctl_json(&["status"]);
    let fast = status["media_fast_path"].as_str().unwrap_or_default();
    assert!(
        fast.starts_with("unavailable:") && fast.contains("media.addrs"),
        "status: {status}"
    );
    assert!(!in_ns(&ns, &["nft", "list", "table", "ip", "outpost_rtp"]).0);
    assert_eq!(in_ns(&ns, &["cat", "/proc/sys/net/ipv4/ip_forward"]).1, "0");
}

//! One format for `network.toml`: the file the daemon writes for the front panel's choice
//! (firmware/src/netconf.rs) is the file the image's `network-up` reads at boot. The real
//! boot script runs on the host with stand-ins for `ip` and `udhcpc` that record what it
//! asked for.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use board::panel::NetworkSetting;
use firmware::netconf::NetworkFile;
use outpost_tests::workspace_root;

/// Runs `image/files/network-up` on `conf`; returns what `ip` and `udhcpc` were asked
/// (one line per call) and the resolv.conf and address files it wrote.
fn network_up(dir: &Path, conf: &Path) -> (String, String, String) {
    let bin = dir.join("bin");
    let run = dir.join("run");
    fs::create_dir_all(&bin).expect("bin");
    fs::create_dir_all(run.join("outpost")).expect("run");
    let log = dir.join("calls.log");
    let _ = fs::remove_file(&log);
    for tool in ["ip", "udhcpc"] {
        let path = bin.join(tool);
        fs::write(
            &path,
            format!("#!/bin/sh\necho \"{tool} $*\" >> '{}'\n", log.display()),
        )
        .expect("stand-in");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let out = Command::new("sh")
        .arg(workspace_root().join("image/files/network-up"))
        .env("OUTPOST_TEST_BIN", &bin)
        .env("OUTPOST_NETWORK_CONF", conf)
        .env("OUTPOST_RUN", &run)
        .output()
        .expect("run network-up");
    assert!(out.status.success(), "network-up failed: {out:?}");
    let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
    (
        read(&log),
        read(&run.join("resolv.conf")),
        read(&run.join("outpost/address")),
    )
}

#[test]
fn the_panels_static_choice_is_what_the_boot_script_configures_and_dhcp_goes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    fs::create_dir_all(&data).expect("data");
    let conf = data.join(firmware::netconf::FILE);

    NetworkFile::from_setting(&NetworkSetting::Static {
        address: "192.168.1.10/24".into(),
        gateway: "192.168.1.1".into(),
        dns: vec!["192.168.1.1".into(), "9.9.9.9".into()],
    })
    .write(&data)
    .expect("write");
    let (calls, resolv, address) = network_up(dir.path(), &conf);
    assert!(
        calls.contains("ip addr add 192.168.1.10/24 dev eth0\n"),
        "{calls}"
    );
    assert!(
        calls.contains("ip route add default via 192.168.1.1 dev eth0\n"),
        "{calls}"
    );
    assert!(
        !calls.contains("udhcpc -i eth0"),
        "no DHCP on a static eth0: {calls}"
    );
    assert_eq!(resolv, "nameserver 192.168.1.1\nnameserver 9.9.9.9\n");
    assert_eq!(address, "192.168.1.10\n");

    // Back to DHCP from the panel: the next boot asks for a lease.
    NetworkFile::from_setting(&NetworkSetting::Dhcp)
        .write(&data)
        .expect("write");
    let (calls, _, _) = network_up(dir.path(), &conf);
    assert!(calls.contains("udhcpc -i eth0"), "{calls}");
    assert!(!calls.contains("ip addr add"), "{calls}");

    // A file written by hand before `mode` existed: static.
    fs::write(
        &conf,
        "address = \"10.1.2.3/16\"\ngateway = \"10.1.0.1\"\ndns = \"10.1.0.1\"\n",
    )
    .expect("write");
    let (calls, resolv, _) = network_up(dir.path(), &conf);
    assert!(
        calls.contains("ip addr add 10.1.2.3/16 dev eth0\n"),
        "{calls}"
    );
    assert_eq!(resolv, "nameserver 10.1.0.1\n");
    assert!(NetworkFile::read(&data).is_some_and(|f| f.address.is_some()));

    // No file at all: DHCP.
    fs::remove_file(&conf).expect("rm");
    let (calls, _, _) = network_up(dir.path(), &conf);
    assert!(calls.contains("udhcpc -i eth0"), "{calls}");
}

//! The relay's in-kernel fast path: the `ip outpost_rtp` table, in which stock nftables
//! forwards the RTP of a latched, plain call between its two phones without waking the
//! relay, and the element updates that hand a call's directions to it and take them back.
//!
//! Stateless by design (no conntrack): each forwarded direction has a 16-bit id and a
//! packet mark `FAST_MARK | id`. In prerouting (priority raw) a packet to the relay's range
//! whose (source address . source port . destination port) is a key of the `slot` map gets
//! the map's mark, is exempted from conntrack (`notrack`) and has its destination rewritten
//! to the other phone (`daddr`, `dport` maps, keyed by the mark); the forward chain accepts
//! marked packets and drops everything else (the box routes nothing but this); postrouting
//! rewrites the source to the box's address and port on the other phone's side (`saddr`,
//! `sport`). nftables fixes the IP and UDP checksums as it rewrites. We chose this over
//! DNAT/SNAT maps because a NAT binding lives in a conntrack entry that outlives the map
//! element: taking a call back to user space would need conntrack deletion over netlink (or
//! Debian's `conntrack` tool, one more process); here deleting the elements is the whole
//! take-back, atomically in one nft transaction, and nothing keeps forwarding afterwards.
//!
//! Anything not matching a key — a stranger, or the phone from a new source port after a
//! NAT rebinding — is not marked and reaches the relay's socket as before, where the relay
//! drops it or re-latches (and then installs the new key).
//!
//! Every element has a timeout ([`FastPath::refresh`] re-adds it with a fresh expiry while
//! the call lasts), so a crashed daemon leaves nothing forwarding for longer than that. The
//! per-element counters of `slot` are the kernel's share of each leg's packet and byte
//! counts. IPv4 only: see `docs/media.md`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::time::Duration;

use serde_json::{json, Value};

use super::runner::{Batches, Runner};
use super::NftError;

/// The table the fast path owns.
pub const FAST_TABLE: &str = "outpost_rtp";

/// The mark of fast-path packets: the high 16 bits; the low 16 are the direction's id.
pub const FAST_MARK: u32 = 0x4f50_0000;

/// Most directions in the kernel at once (two per call): the size of every map. At this cap
/// the five maps hold ~16 k elements each; with the kernel's hash-set overhead (~100–150
/// bytes per element with its timeout and counter) that is at most ~12 MiB of kernel memory.
pub const MAX_FAST_DIRECTIONS: u16 = 16_384;

/// One forwarded direction: packets from the latched phone `from` to the box's port
/// `box_port` go to `to`, sent from `via` (the box's address and port on `to`'s side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Direction {
    /// Its id (1..=[`MAX_FAST_DIRECTIONS`]): the low bits of its mark.
    pub id: u16,
    /// The latched source of the sending phone.
    pub from: SocketAddrV4,
    /// The box's port the sending phone sends to.
    pub box_port: u16,
    /// The receiving phone (its latched address).
    pub to: SocketAddrV4,
    /// The box's address and port that the receiving phone hears the call from.
    pub via: SocketAddrV4,
}

impl Direction {
    fn mark(&self) -> u32 {
        FAST_MARK | u32::from(self.id)
    }
}

/// The kernel counters of one direction: packets and IP bytes (header included) forwarded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionCount {
    /// Packets that matched the direction's key.
    pub packets: u64,
    /// Their bytes at the IP layer (IPv4 header, UDP header, RTP).
    pub bytes: u64,
}

/// The `nft -f` text that (re)creates the table for the relay range `first..=last`.
pub fn table_script(first: u16, last: u16) -> String {
    let size = MAX_FAST_DIRECTIONS;
    let mut s = String::new();
    // `add` then `delete` makes the delete safe when the table does not exist yet.
    let _ = writeln!(s, "add table ip {FAST_TABLE}");
    let _ = writeln!(s, "delete table ip {FAST_TABLE}");
    let _ = writeln!(s, "table ip {FAST_TABLE} {{");
    let _ = writeln!(
        s,
        "  map slot {{ type ipv4_addr . inet_service . inet_service : mark; flags timeout; \
         counter; size {size}; }}"
    );
    for (name, ty) in [
        ("daddr", "ipv4_addr"),
        ("dport", "inet_service"),
        ("saddr", "ipv4_addr"),
        ("sport", "inet_service"),
    ] {
        let _ = writeln!(
            s,
            "  map {name} {{ type mark : {ty}; flags timeout; size {size}; }}"
        );
    }
    let _ = writeln!(
        s,
        "  chain relay_pre {{ type filter hook prerouting priority raw; policy accept; \
         udp dport {first}-{last} meta mark set ip saddr . udp sport . udp dport map @slot \
         notrack ip daddr set meta mark map @daddr udp dport set meta mark map @dport; }}"
    );
    let _ = writeln!(
        s,
        "  chain relay_forward {{ type filter hook forward priority filter; policy drop; \
         meta mark & 0xffff0000 == {FAST_MARK:#x} accept; }}"
    );
    let _ = writeln!(
        s,
        "  chain relay_post {{ type filter hook postrouting priority srcnat; policy accept; \
         meta mark & 0xffff0000 == {FAST_MARK:#x} ip saddr set meta mark map @saddr \
         udp sport set meta mark map @sport; }}"
    );
    let _ = writeln!(s, "}}");
    s
}

/// The JSON batch (one line, one kernel transaction) that deletes `delete` (each must be
/// present: the caller tracks them) and adds `add`, or refreshes their expiry, with
/// `timeout`; `None` when there is nothing to do. JSON because it goes to the long-lived
/// `nft -j -i` session (the `nft -f` text equivalent: `add element ip outpost_rtp slot
/// { 192.0.2.10 . 4000 . 20000 timeout 90s expires 90s : 0x4f500007 }`, ...).
pub fn element_batch(add: &[Direction], delete: &[Direction], timeout: Duration) -> Option<String> {
    if add.is_empty() && delete.is_empty() {
        return None;
    }
    let t = timeout.as_secs().max(1);
    let slot_key =
        |d: &Direction| json!({"concat": [d.from.ip().to_string(), d.from.port(), d.box_port]});
    let element = |op: &str, map: &str, elem: Vec<Value>| json!({op: {"element": {"family": "ip", "table": FAST_TABLE, "name": map, "elem": elem}}});
    let mut cmds = Vec::new();
    if !delete.is_empty() {
        cmds.push(element(
            "delete",
            "slot",
            delete.iter().map(slot_key).collect(),
        ));
        for map in ["daddr", "dport", "saddr", "sport"] {
            cmds.push(element(
                "delete",
                map,
                delete.iter().map(|d| json!(d.mark())).collect(),
            ));
        }
    }
    if !add.is_empty() {
        let timed = |key: Value, value: Value| json!([{"elem": {"val": key, "timeout": t, "expires": t}}, value]);
        let each = |f: &dyn Fn(&Direction) -> Value| -> Vec<Value> {
            add.iter().map(|d| timed(json!(d.mark()), f(d))).collect()
        };
        cmds.push(element(
            "add",
            "slot",
            add.iter()
                .map(|d| timed(slot_key(d), json!(d.mark())))
                .collect(),
        ));
        cmds.push(element(
            "add",
            "daddr",
            each(&|d| json!(d.to.ip().to_string())),
        ));
        cmds.push(element("add", "dport", each(&|d| json!(d.to.port()))));
        cmds.push(element(
            "add",
            "saddr",
            each(&|d| json!(d.via.ip().to_string())),
        ));
        cmds.push(element("add", "sport", each(&|d| json!(d.via.port()))));
    }
    Some(json!({"nftables": cmds}).to_string())
}

/// The counters of every direction in `nft -j list map ip outpost_rtp slot`'s output, by id.
pub fn parse_counts(json: &str) -> Result<HashMap<u16, DirectionCount>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let mut out = HashMap::new();
    let items = v
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("no nftables array")?;
    for item in items {
        let Some(elems) = item.pointer("/map/elem").and_then(Value::as_array) else {
            continue;
        };
        for pair in elems {
            let (Some(key), Some(mark)) = (pair.get(0), pair.get(1).and_then(Value::as_u64)) else {
                return Err("a map element is not [key, mark]".into());
            };
            let counter = key.pointer("/elem/counter");
            let packets = counter
                .and_then(|c| c.get("packets"))
                .and_then(Value::as_u64)
                .ok_or("an element has no counter")?;
            let bytes = counter
                .and_then(|c| c.get("bytes"))
                .and_then(Value::as_u64)
                .ok_or("an element has no counter")?;
            if mark & 0xffff_0000 != u64::from(FAST_MARK) {
                return Err(format!("an element maps to foreign mark {mark:#x}"));
            }
            let id = u16::try_from(mark & 0xffff).map_err(|e| e.to_string())?;
            out.insert(id, DirectionCount { packets, bytes });
        }
    }
    Ok(out)
}

/// The kernel side of the fast path: the table in the current network namespace, and the
/// forwarding switch it needs (`net.ipv4.ip_forward`), restored when it is removed.
#[derive(Debug)]
pub struct FastPath {
    runner: Runner,
    /// The long-lived `nft -j -i` that applies element batches (one-shot runs when it
    /// cannot run), as the enforcer's.
    batches: Batches,
    /// `ip_forward` as it was before we set it.
    forward_before: Option<String>,
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// How long one nft run or one batch may take.
const NFT_DEADLINE: Duration = Duration::from_secs(5);

impl FastPath {
    /// Creates the table for the relay range `first..=last` (replacing a stale one a crashed
    /// daemon left), then turns on IPv4 forwarding: the table's forward chain, in place
    /// first, drops every forwarded packet that is not a fast-path packet.
    pub fn install(first: u16, last: u16) -> Result<FastPath, NftError> {
        super::available().map_err(NftError::Config)?;
        let runner = Runner::new("nft", None, NFT_DEADLINE);
        // A table left by a daemon that crashed means that daemon turned forwarding on: the
        // value to restore is off, not what we read now.
        let stale = runner
            .run(&["-t", "list", "table", "ip", FAST_TABLE], None)
            .is_ok();
        runner.run(&["-f", "-"], Some(table_script(first, last)))?;
        let before = if stale {
            "0".to_string()
        } else {
            std::fs::read_to_string(IP_FORWARD)
                .map_err(|e| NftError::Config(format!("cannot read {IP_FORWARD}: {e}")))?
        };
        std::fs::write(IP_FORWARD, "1").map_err(|e| {
            NftError::Config(format!(
                "cannot turn on IPv4 forwarding ({IP_FORWARD}): {e}"
            ))
        })?;
        Ok(FastPath {
            runner,
            batches: Batches::default(),
            forward_before: Some(before.trim().to_string()),
        })
    }

    /// Adds `add` (or refreshes them) and deletes `delete`, in one transaction, through the
    /// long-lived nft session (no process per change).
    pub fn apply(
        &mut self,
        add: &[Direction],
        delete: &[Direction],
        timeout: Duration,
    ) -> Result<(), NftError> {
        let Some(batch) = element_batch(add, delete, timeout) else {
            return Ok(());
        };
        self.batches.apply(&self.runner, &batch, NFT_DEADLINE)
    }

    /// nft processes started for element batches so far (one per session, or per batch
    /// when sessions cannot run).
    pub fn batch_processes(&self) -> u64 {
        self.batches.processes()
    }

    /// The counters of every direction in the kernel, by id.
    pub fn counts(&self) -> Result<HashMap<u16, DirectionCount>, NftError> {
        let args = ["-j", "list", "map", "ip", FAST_TABLE, "slot"];
        let out = self.runner.run(&args, None)?;
        parse_counts(&out).map_err(|reason| NftError::Output {
            command: format!("nft {}", args.join(" ")),
            reason,
        })
    }

    /// Restores IPv4 forwarding as it was, then deletes the table.
    pub fn remove(mut self) -> Result<(), NftError> {
        self.batches.close();
        self.restore_forwarding();
        self.runner
            .run(&["delete", "table", "ip", FAST_TABLE], None)
            .map(|_| ())
    }

    fn restore_forwarding(&mut self) {
        if let Some(before) = self.forward_before.take() {
            if let Err(e) = std::fs::write(IP_FORWARD, before) {
                tracing::warn!("fast path: cannot restore {IP_FORWARD}: {e}");
            }
        }
    }
}

impl Drop for FastPath {
    fn drop(&mut self) {
        // The table stays (its forward chain keeps forwarding closed); forwarding goes back.
        self.restore_forwarding();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Direction {
        Direction {
            id: 7,
            from: "192.0.2.10:4000".parse().expect("addr"),
            box_port: 20_000,
            to: "198.51.100.20:5000".parse().expect("addr"),
            via: "198.51.100.1:20002".parse().expect("addr"),
        }
    }

    #[test]
    fn elements_are_keyed_by_the_latched_source_and_carry_a_timeout() {
        let batch = element_batch(&[dir()], &[], Duration::from_secs(90)).expect("a batch");
        assert!(!batch.contains('\n'), "one line for the session");
        let v: Value = serde_json::from_str(&batch).expect("JSON");
        let cmds = v["nftables"].as_array().expect("commands");
        assert_eq!(cmds.len(), 5, "{batch}");
        let slot = &cmds[0]["add"]["element"];
        assert_eq!(slot["table"], "outpost_rtp");
        assert_eq!(slot["name"], "slot");
        assert_eq!(
            slot["elem"][0],
            json!([{"elem": {"val": {"concat": ["192.0.2.10", 4000, 20000]},
                "timeout": 90, "expires": 90}}, 0x4f50_0007u32])
        );
        assert_eq!(
            cmds[1]["add"]["element"]["elem"][0],
            json!([{"elem": {"val": 0x4f50_0007u32, "timeout": 90, "expires": 90}}, "198.51.100.20"])
        );
        assert_eq!(cmds[4]["add"]["element"]["name"], "sport");
        assert_eq!(cmds[4]["add"]["element"]["elem"][0][1], 20002);

        // A take-back and a new call in one transaction: deletes first.
        let mut other = dir();
        other.id = 8;
        let batch = element_batch(&[other], &[dir()], Duration::from_secs(1)).expect("a batch");
        let v: Value = serde_json::from_str(&batch).expect("JSON");
        let cmds = v["nftables"].as_array().expect("commands");
        assert_eq!(cmds.len(), 10);
        assert_eq!(
            cmds[0]["delete"]["element"]["elem"],
            json!([{"concat": ["192.0.2.10", 4000, 20000]}])
        );
        assert_eq!(
            cmds[1]["delete"]["element"]["elem"],
            json!([0x4f50_0007u32])
        );
        assert!(cmds[5].get("add").is_some());
        assert_eq!(element_batch(&[], &[], Duration::from_secs(1)), None);
    }

    #[test]
    fn counters_are_read_by_id_and_foreign_output_is_an_error() {
        let json = r#"{"nftables": [{"metainfo": {}}, {"map": {"family": "ip", "name": "slot",
            "elem": [[{"elem": {"val": {"concat": ["10.91.1.2", 4000, 20000]}, "timeout": 30,
            "expires": 16, "counter": {"packets": 3, "bytes": 120}}}, 1330642945]]}}]}"#;
        let counts = parse_counts(json).expect("parses");
        assert_eq!(
            counts.get(&1),
            Some(&DirectionCount {
                packets: 3,
                bytes: 120
            })
        );
        assert!(parse_counts("nope").is_err());
        let foreign = json.replace("1330642945", "5");
        assert!(parse_counts(&foreign).is_err());
        let empty = r#"{"nftables": [{"map": {"name": "slot"}}]}"#;
        assert!(parse_counts(empty).expect("parses").is_empty());
    }
}

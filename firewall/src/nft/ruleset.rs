//! Pure builders: the `inet outpost` table and the element commands of a batch, as the
//! `nftables` crate's JSON schema types; and the fingerprint of a listed table.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;

use nftables::expr::{self, Elem, Expression, NamedExpression, Payload, PayloadField, SetItem};
use nftables::schema::{
    self, Chain, Element, FlushObject, NfCmd, NfListObject, NfObject, Nftables, SetFlag, SetType,
    SetTypeValue, Table,
};
use nftables::stmt::{self, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::Value;

use super::{ConnLimitBy, FloodLimit, ManagementZone, NftConfig, TrunkPeer, TrunkProto};
use crate::net::Cidr;

/// Our chain: filter hook input, just before the usual `filter` priority (0) so our drops
/// happen first, policy accept (we drop only what we own).
pub(crate) const CHAIN: &str = "input";
const CHAIN_PRIORITY: i32 = -5;
pub(crate) const ALLOW4: &str = "allow4";
pub(crate) const ALLOW6: &str = "allow6";
pub(crate) const BAN4: &str = "ban4";
pub(crate) const BAN6: &str = "ban6";
/// The trunks' own traffic: `addr . l4proto . source port` interval sets per family.
pub(crate) const TRUNK4: &str = "trunk4";
pub(crate) const TRUNK6: &str = "trunk6";
/// Open RTP (remote address, local port) pairs, IPv4 and IPv6.
pub(crate) const RTP_OPEN4: &str = "rtp_open4";
pub(crate) const RTP_OPEN6: &str = "rtp_open6";
/// Named counters, read by `Enforcer::counters`.
pub(crate) const COUNTER_BANNED: &str = "banned";
pub(crate) const COUNTER_FLOOD: &str = "flood";
pub(crate) const COUNTER_RTP: &str = "rtp_closed";
pub(crate) const COUNTER_TRUNK: &str = "trunk_flood";
/// Sources that authenticated recently (timeout sets; IPv6 by /64), for the connection caps.
pub(crate) const AUTHED4: &str = "authed4";
pub(crate) const AUTHED6: &str = "authed6";
/// New TCP connections dropped at a source's connection cap.
pub(crate) const COUNTER_CONN: &str = "conn_limit";
/// The management zone: its networks (interval sets per family), the TCP ports it guards,
/// and the counter of what it dropped.
pub(crate) const MGMT4: &str = "mgmt4";
pub(crate) const MGMT6: &str = "mgmt6";
pub(crate) const MGMT_PORTS: &str = "mgmt_ports";
pub(crate) const COUNTER_MGMT: &str = "mgmt_drop";
/// Connection-count meters: unauthenticated and authenticated sources, per family.
const CONN4: &str = "conn4";
const CONN6: &str = "conn6";
const CONN_AUTH4: &str = "conn_auth4";
const CONN_AUTH6: &str = "conn_auth6";
/// Meter names (the kernel's dynamic sets behind `meter`).
const FLOOD4: &str = "flood4";
const FLOOD6: &str = "flood6";
const TRUNK_FLOOD4: &str = "trunk_flood4";
const TRUNK_FLOOD6: &str = "trunk_flood6";
/// A meter entry is forgotten after this long without packets, so the meter (65,535
/// entries, nft's default size) keeps room for new sources.
const METER_ENTRY_TIMEOUT_SECS: u32 = 60;
/// IPv6 sources are metered per /64: one host usually owns a whole /64.
const V6_METER_MASK: &str = "ffff:ffff:ffff:ffff::";

/// The whole table, replacing any previous `inet <table>` in the same transaction
/// (`add` + `delete` + `add`: the `add` makes the `delete` safe when the table is absent).
pub(crate) fn table_batch(
    cfg: &NftConfig,
    allow: &[Cidr],
    rtp_open: &[((IpAddr, u16), u32)],
    bans: &[(IpAddr, u32)],
) -> Nftables<'static> {
    let t = cfg.table.as_str();
    let mut o = vec![
        add(NfListObject::Table(table(t))),
        NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table(t)))),
        add(NfListObject::Table(table(t))),
    ];
    for name in [
        COUNTER_BANNED,
        COUNTER_FLOOD,
        COUNTER_RTP,
        COUNTER_TRUNK,
        COUNTER_MGMT,
    ] {
        o.push(add(NfListObject::Counter(schema::Counter {
            family: NfFamily::INet,
            table: own(t),
            name: own(name),
            handle: None,
            packets: None,
            bytes: None,
        })));
    }
    o.push(add(NfListObject::Counter(schema::Counter {
        family: NfFamily::INet,
        table: own(t),
        name: own(COUNTER_CONN),
        handle: None,
        packets: None,
        bytes: None,
    })));
    if cfg.conn_limit.is_some() {
        o.push(add(set(
            t,
            AUTHED4,
            SetType::Ipv4Addr,
            Some(SetFlag::Timeout),
        )));
        o.push(add(set(
            t,
            AUTHED6,
            SetType::Ipv6Addr,
            Some(SetFlag::Timeout),
        )));
    }
    o.push(add(set(
        t,
        ALLOW4,
        SetType::Ipv4Addr,
        Some(SetFlag::Interval),
    )));
    o.push(add(set(
        t,
        ALLOW6,
        SetType::Ipv6Addr,
        Some(SetFlag::Interval),
    )));
    o.push(add(set(
        t,
        MGMT4,
        SetType::Ipv4Addr,
        Some(SetFlag::Interval),
    )));
    o.push(add(set(
        t,
        MGMT6,
        SetType::Ipv6Addr,
        Some(SetFlag::Interval),
    )));
    o.push(add(set(t, MGMT_PORTS, SetType::InetService, None)));
    o.push(add(set(t, BAN4, SetType::Ipv4Addr, Some(SetFlag::Timeout))));
    o.push(add(set(t, BAN6, SetType::Ipv6Addr, Some(SetFlag::Timeout))));
    o.push(add(trunk_set(t, TRUNK4, SetType::Ipv4Addr)));
    o.push(add(trunk_set(t, TRUNK6, SetType::Ipv6Addr)));
    o.push(add(pair_set(t, RTP_OPEN4, SetType::Ipv4Addr)));
    o.push(add(pair_set(t, RTP_OPEN6, SetType::Ipv6Addr)));
    o.push(add(NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: own(t),
        name: own(CHAIN),
        _type: Some(NfChainType::Filter),
        hook: Some(NfHook::Input),
        prio: Some(CHAIN_PRIORITY),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    })));
    for expr in rules(cfg) {
        o.push(add(NfListObject::Rule(schema::Rule {
            family: NfFamily::INet,
            table: own(t),
            chain: own(CHAIN),
            expr: Cow::Owned(expr),
            ..schema::Rule::default()
        })));
    }
    o.extend(allow_elements(t, allow));
    o.extend(mgmt_elements(t, &cfg.management));
    o.extend(trunk_elements(t, &cfg.trunk_peers));
    o.extend(rtp_commands(t, &[], rtp_open));
    o.extend(ban_commands(t, &[], bans));
    Nftables {
        objects: Cow::Owned(o),
    }
}

/// `add table` + `delete table` in one transaction: removes ours whether or not it exists.
pub(crate) fn delete_table_batch(name: &str) -> Nftables<'static> {
    Nftables {
        objects: Cow::Owned(vec![
            add(NfListObject::Table(table(name))),
            NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table(name)))),
        ]),
    }
}

/// The rules of our chain, in order: loopback, the management zone, allow, ban, the
/// trunks' meters, the flood meters, closed RTP range.
fn rules(cfg: &NftConfig) -> Vec<Vec<Statement<'static>>> {
    let mgmt = |ip: &str, set: &str| {
        vec![
            eq(payload("tcp", "dport"), set_ref(MGMT_PORTS)),
            Statement::Match(Match {
                left: saddr(ip),
                right: set_ref(set),
                op: Operator::NEQ,
            }),
            counter(COUNTER_MGMT),
            drop(),
        ]
    };
    let mut r = vec![
        vec![
            eq(meta(expr::MetaKey::Iifname), Expression::String(own("lo"))),
            accept(),
        ],
        mgmt("ip", MGMT4),
        mgmt("ip6", MGMT6),
        vec![eq(saddr("ip"), set_ref(ALLOW4)), accept()],
        vec![eq(saddr("ip6"), set_ref(ALLOW6)), accept()],
        vec![
            eq(saddr("ip"), set_ref(BAN4)),
            counter(COUNTER_BANNED),
            drop(),
        ],
        vec![
            eq(saddr("ip6"), set_ref(BAN6)),
            counter(COUNTER_BANNED),
            drop(),
        ],
    ];
    r.extend(conn_limit_rules(cfg));
    if !cfg.sip_ports.is_empty() {
        let mut ports: Vec<u16> = cfg.sip_ports.clone();
        ports.sort_unstable();
        ports.dedup();
        let port_set = Expression::Named(NamedExpression::Set(
            ports
                .iter()
                .map(|p| SetItem::Element(Expression::Number(u32::from(*p))))
                .collect(),
        ));
        let sip = || {
            [
                eq(
                    meta(expr::MetaKey::L4proto),
                    Expression::Named(NamedExpression::Set(vec![
                        SetItem::Element(Expression::String(own("tcp"))),
                        SetItem::Element(Expression::String(own("udp"))),
                    ])),
                ),
                eq(payload("th", "dport"), port_set.clone()),
            ]
        };
        // `ip saddr . meta l4proto . th sport`: what the trunk sets hold.
        let trunk_key = |ip: &str| {
            Expression::Named(NamedExpression::Concat(vec![
                saddr(ip),
                meta(expr::MetaKey::L4proto),
                payload("th", "sport"),
            ]))
        };
        if let Some(limit) = cfg.trunk_flood_rate {
            for (ip, set, name) in [("ip", TRUNK4, TRUNK_FLOOD4), ("ip6", TRUNK6, TRUNK_FLOOD6)] {
                let mut rule = sip().to_vec();
                rule.extend([
                    eq(trunk_key(ip), set_ref(set)),
                    meter(name, saddr(ip), limit),
                    counter(COUNTER_TRUNK),
                    drop(),
                ]);
                r.push(rule);
            }
        }
        if let Some(limit) = cfg.flood_rate {
            let v6_key = Expression::BinaryOperation(Box::new(expr::BinaryOperation::AND(
                saddr("ip6"),
                Expression::String(own(V6_METER_MASK)),
            )));
            for (ip, set, name, key) in [
                ("ip", TRUNK4, FLOOD4, saddr("ip")),
                ("ip6", TRUNK6, FLOOD6, v6_key),
            ] {
                let mut rule = sip().to_vec();
                if cfg.trunk_flood_rate.is_some() {
                    // Metered by rule 4 already, at the trunks' own rate.
                    rule.push(Statement::Match(Match {
                        left: trunk_key(ip),
                        right: set_ref(set),
                        op: Operator::NEQ,
                    }));
                }
                rule.extend([meter(name, key, limit), counter(COUNTER_FLOOD), drop()]);
                r.push(rule);
            }
        }
    }
    if cfg.rtp_closed {
        let (lo, hi) = cfg.rtp_range;
        // One rule per family: a concatenation's key type fixes the address length.
        for (nfproto, ip, set) in [("ipv4", "ip", RTP_OPEN4), ("ipv6", "ip6", RTP_OPEN6)] {
            r.push(vec![
                eq(
                    meta(expr::MetaKey::Nfproto),
                    Expression::String(own(nfproto)),
                ),
                eq(
                    payload("udp", "dport"),
                    Expression::Range(Box::new(expr::Range {
                        range: [
                            Expression::Number(u32::from(lo)),
                            Expression::Number(u32::from(hi)),
                        ],
                    })),
                ),
                Statement::Match(Match {
                    left: Expression::Named(NamedExpression::Concat(vec![
                        saddr(ip),
                        payload("udp", "dport"),
                    ])),
                    right: set_ref(set),
                    op: Operator::NEQ,
                }),
                counter(COUNTER_RTP),
                drop(),
            ]);
        }
    }
    r
}

/// The connection limits (with `conn_limit`), per family: new TCP connections to the
/// SIP/TLS ports from a source in the authenticated set meet the authenticated limit, any
/// other source's the unauthenticated one; beyond, `counter name "conn_limit" drop`. IPv6
/// sources are counted (and looked up) per /64. New connections are `ct state new` with a
/// `ct count` meter, or SYNs (`tcp flags syn / syn,ack`) with a rate meter.
fn conn_limit_rules(cfg: &NftConfig) -> Vec<Vec<Statement<'static>>> {
    let Some(limit) = cfg.conn_limit.as_ref() else {
        return Vec::new();
    };
    let mut ports = limit.ports.clone();
    ports.sort_unstable();
    ports.dedup();
    let port_set = Expression::Named(NamedExpression::Set(
        ports
            .iter()
            .map(|p| SetItem::Element(Expression::Number(u32::from(*p))))
            .collect(),
    ));
    let v6_key = || {
        Expression::BinaryOperation(Box::new(expr::BinaryOperation::AND(
            saddr("ip6"),
            Expression::String(own(V6_METER_MASK)),
        )))
    };
    type Key = fn() -> Expression<'static>;
    let families: [(Key, &str, [&str; 2]); 2] = [
        (|| saddr("ip"), AUTHED4, [CONN_AUTH4, CONN4]),
        (v6_key, AUTHED6, [CONN_AUTH6, CONN6]),
    ];
    let mut r = Vec::new();
    for (key, authed, [auth_meter, meter_name]) in families {
        for (op, name, cap) in [
            (Operator::EQ, auth_meter, limit.authenticated),
            (Operator::NEQ, meter_name, limit.unauthenticated),
        ] {
            let (new_conn, limited) = match limit.by {
                ConnLimitBy::Count => (
                    Statement::Match(Match {
                        left: Expression::Named(NamedExpression::CT(expr::CT {
                            key: own("state"),
                            family: None,
                            dir: None,
                        })),
                        right: Expression::String(own("new")),
                        op: Operator::IN,
                    }),
                    Statement::Meter(stmt::Meter {
                        name: own(name),
                        key: key(),
                        stmt: Box::new(Statement::CTCount(stmt::CTCount {
                            val: Expression::Number(cap),
                            inv: Some(true),
                        })),
                    }),
                ),
                ConnLimitBy::SynRate => (
                    eq(
                        Expression::BinaryOperation(Box::new(expr::BinaryOperation::AND(
                            payload("tcp", "flags"),
                            Expression::List(vec![
                                Expression::String(own("syn")),
                                Expression::String(own("ack")),
                            ]),
                        ))),
                        Expression::String(own("syn")),
                    ),
                    meter(
                        name,
                        key(),
                        FloodLimit {
                            per_second: cap,
                            burst: cap,
                        },
                    ),
                ),
            };
            r.push(vec![
                eq(payload("tcp", "dport"), port_set.clone()),
                new_conn,
                Statement::Match(Match {
                    left: key(),
                    right: set_ref(authed),
                    op,
                }),
                limited,
                counter(COUNTER_CONN),
                drop(),
            ]);
        }
    }
    r
}

/// The key the connection caps count by: an IPv4 address, or an IPv6 address's /64.
pub(crate) fn conn_key(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(_) => a,
        IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            seg[4..].fill(0);
            IpAddr::V6(seg.into())
        }
    }
}

/// Authenticated-set commands, like [`ban_commands`] for `authed4`/`authed6`. Keys must
/// already be [`conn_key`]s.
pub(crate) fn authed_commands(
    table: &str,
    reset: &[IpAddr],
    add_: &[(IpAddr, u32)],
) -> Vec<NfObject<'static>> {
    timed_set_commands(table, (AUTHED4, AUTHED6), reset, add_)
}

/// Ban-set commands. Addresses in `reset` are first added with a 1 s timeout and then
/// deleted, which makes the delete succeed whether or not the address was there (nft 1.0.6
/// has no `destroy`) and clears an old timeout; then `ban` is added with its timeouts.
/// (`add` of a present element keeps its old timeout, hence the reset before a re-ban.)
pub(crate) fn ban_commands(
    table: &str,
    reset: &[IpAddr],
    ban: &[(IpAddr, u32)],
) -> Vec<NfObject<'static>> {
    timed_set_commands(table, (BAN4, BAN6), reset, ban)
}

/// Commands for a pair of per-element-timeout address sets (IPv4, IPv6): each of `reset`
/// added with a 1 s timeout and deleted, then each of `add_` added with its timeout (see
/// [`ban_commands`] for why).
fn timed_set_commands(
    table: &str,
    sets: (&'static str, &'static str),
    reset: &[IpAddr],
    add_: &[(IpAddr, u32)],
) -> Vec<NfObject<'static>> {
    timed_commands(table, sets, reset, add_, |a| a.is_ipv4(), |a| addr(*a))
}

/// [`timed_set_commands`] for any key: `v4` picks the set, `key` builds the element.
fn timed_commands<K>(
    table: &str,
    (set4, set6): (&'static str, &'static str),
    reset: &[K],
    add_: &[(K, u32)],
    v4: impl Fn(&K) -> bool,
    key: impl Fn(&K) -> Expression<'static>,
) -> Vec<NfObject<'static>> {
    let mut o = Vec::new();
    for (name, want_v4) in [(set4, true), (set6, false)] {
        let reset: Vec<&K> = reset.iter().filter(|k| v4(k) == want_v4).collect();
        if !reset.is_empty() {
            o.push(add(element(
                table,
                name,
                reset.iter().map(|k| timed_expr(key(k), 1)).collect(),
            )));
            o.push(NfObject::CmdObject(NfCmd::Delete(element(
                table,
                name,
                reset.iter().map(|k| key(k)).collect(),
            ))));
        }
        let added: Vec<Expression<'static>> = add_
            .iter()
            .filter(|(k, _)| v4(k) == want_v4)
            .map(|(k, secs)| timed_expr(key(k), *secs))
            .collect();
        if !added.is_empty() {
            o.push(add(element(table, name, added)));
        }
    }
    o
}

/// RTP-pair commands, split by family, with the same shape as bans: each of `reset` (a
/// pinhole the kernel may still hold: refreshed or closed) added with a 1 s timeout and
/// deleted, so the delete is safe whether or not the element is still there and its old
/// timeout is gone; then each of `open` added with its timeout (a new pinhole, or the
/// refreshed one again). Addresses must already be canonical (an IPv4-mapped IPv6 address
/// would land in the IPv6 set).
pub(crate) fn rtp_commands(
    table: &str,
    reset: &[(IpAddr, u16)],
    open: &[((IpAddr, u16), u32)],
) -> Vec<NfObject<'static>> {
    timed_commands(
        table,
        (RTP_OPEN4, RTP_OPEN6),
        reset,
        open,
        |(a, _)| a.is_ipv4(),
        |(a, p)| pair(*a, *p),
    )
}

/// Replaces the allow sets' contents with `allow` (flush + add, one transaction).
pub(crate) fn allow_replace(table: &str, allow: &[Cidr]) -> Vec<NfObject<'static>> {
    let mut o = Vec::new();
    for (name, ty) in [(ALLOW4, SetType::Ipv4Addr), (ALLOW6, SetType::Ipv6Addr)] {
        let NfListObject::Set(s) = set(table, name, ty, Some(SetFlag::Interval)) else {
            unreachable!("set() builds a set")
        };
        o.push(NfObject::CmdObject(NfCmd::Flush(FlushObject::Set(s))));
    }
    o.extend(allow_elements(table, allow));
    o
}

/// Replaces the trunk peer sets (flush + add, one transaction).
pub(crate) fn trunk_replace(table: &str, peers: &[TrunkPeer]) -> Vec<NfObject<'static>> {
    let mut o = Vec::new();
    for (name, ty) in [(TRUNK4, SetType::Ipv4Addr), (TRUNK6, SetType::Ipv6Addr)] {
        if let NfListObject::Set(s) = trunk_set(table, name, ty) {
            o.push(NfObject::CmdObject(NfCmd::Flush(FlushObject::Set(s))));
        }
    }
    o.extend(trunk_elements(table, peers));
    o
}

/// Replaces the management zone's sets (flush + add, one transaction).
pub(crate) fn mgmt_replace(table: &str, zone: &ManagementZone) -> Vec<NfObject<'static>> {
    let mut o = Vec::new();
    for (name, ty, flag) in [
        (MGMT4, SetType::Ipv4Addr, Some(SetFlag::Interval)),
        (MGMT6, SetType::Ipv6Addr, Some(SetFlag::Interval)),
        (MGMT_PORTS, SetType::InetService, None),
    ] {
        if let NfListObject::Set(s) = set(table, name, ty, flag) {
            o.push(NfObject::CmdObject(NfCmd::Flush(FlushObject::Set(s))));
        }
    }
    o.extend(mgmt_elements(table, zone));
    o
}

/// The management zone's elements: its networks per family (normalized: an interval set
/// refuses overlaps) and its ports, duplicates removed.
fn mgmt_elements(table: &str, zone: &ManagementZone) -> Vec<NfObject<'static>> {
    let nets = normalize(&zone.networks);
    let mut o = Vec::new();
    for (name, v4) in [(MGMT4, true), (MGMT6, false)] {
        let elems: Vec<Expression<'static>> = nets
            .iter()
            .filter(|c| c.network().is_ipv4() == v4)
            .map(|c| cidr(*c))
            .collect();
        if !elems.is_empty() {
            o.push(add(element(table, name, elems)));
        }
    }
    let mut ports = zone.ports.clone();
    ports.sort_unstable();
    ports.dedup();
    if !ports.is_empty() {
        o.push(add(element(
            table,
            MGMT_PORTS,
            ports
                .iter()
                .map(|p| Expression::Number(u32::from(*p)))
                .collect(),
        )));
    }
    o
}

/// The trunk sets' elements, per family: `NET . PROTO . PORT` (a port range 0-65535 for
/// "any port"), duplicates removed.
fn trunk_elements(table: &str, peers: &[TrunkPeer]) -> Vec<NfObject<'static>> {
    let mut peers: Vec<(Cidr, TrunkProto, Option<u16>)> =
        peers.iter().map(|p| (p.net, p.proto, p.port)).collect();
    peers.sort_by_key(|(c, proto, port)| (c.network(), c.prefix(), *proto, *port));
    peers.dedup();
    let mut o = Vec::new();
    for (name, v4) in [(TRUNK4, true), (TRUNK6, false)] {
        let elems: Vec<Expression<'static>> = peers
            .iter()
            .filter(|(c, _, _)| c.network().is_ipv4() == v4)
            .map(|(c, proto, port)| {
                let proto = match proto {
                    TrunkProto::Udp => "udp",
                    TrunkProto::Tcp => "tcp",
                };
                let port = match port {
                    Some(p) => Expression::Number(u32::from(*p)),
                    None => Expression::Range(Box::new(expr::Range {
                        range: [Expression::Number(0), Expression::Number(65_535)],
                    })),
                };
                Expression::Named(NamedExpression::Concat(vec![
                    cidr(*c),
                    Expression::String(own(proto)),
                    port,
                ]))
            })
            .collect();
        if !elems.is_empty() {
            o.push(add(element(table, name, elems)));
        }
    }
    o
}

fn allow_elements(table: &str, allow: &[Cidr]) -> Vec<NfObject<'static>> {
    let nets = normalize(allow);
    let mut o = Vec::new();
    for (name, v4) in [(ALLOW4, true), (ALLOW6, false)] {
        let elems: Vec<Expression<'static>> = nets
            .iter()
            .filter(|c| c.network().is_ipv4() == v4)
            .map(|c| cidr(*c))
            .collect();
        if !elems.is_empty() {
            o.push(add(element(table, name, elems)));
        }
    }
    o
}

/// Sorted, duplicates and networks covered by a wider one removed: an interval set
/// refuses overlapping elements.
pub(crate) fn normalize(nets: &[Cidr]) -> Vec<Cidr> {
    let mut v: Vec<Cidr> = nets.to_vec();
    v.sort_by_key(|c| (c.network(), c.prefix()));
    v.dedup();
    let all = v.clone();
    v.retain(|c| {
        !all.iter()
            .any(|w| w != c && w.prefix() < c.prefix() && w.contains(c.network()))
    });
    v
}

/// The parts of `nft -j -t list table` that define the table: every object but the
/// metainfo, without handles, set elements or counter values (those change by design).
pub(crate) fn fingerprint(listing: &Value) -> Option<Vec<Value>> {
    let objects = listing.get("nftables")?.as_array()?;
    let mut out = Vec::with_capacity(objects.len());
    for obj in objects {
        let map = obj.as_object()?;
        if map.contains_key("metainfo") {
            continue;
        }
        let mut obj = obj.clone();
        if let Some(map) = obj.as_object_mut() {
            for inner in map.values_mut() {
                if let Some(inner) = inner.as_object_mut() {
                    for volatile in ["handle", "elem", "packets", "bytes"] {
                        inner.remove(volatile);
                    }
                }
            }
        }
        out.push(obj);
    }
    Some(out)
}

/// Reads a named counter's packets and bytes from `nft -j list table` output. (Parsed as
/// plain JSON: the crate's `Counter` holds u32 values, too small for a byte counter.)
pub(crate) fn counter_values(listing: &Value, name: &str) -> Option<(u64, u64)> {
    listing
        .get("nftables")?
        .as_array()?
        .iter()
        .filter_map(|o| o.get("counter"))
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|c| Some((c.get("packets")?.as_u64()?, c.get("bytes")?.as_u64()?)))
}

fn add(obj: NfListObject<'static>) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Add(obj))
}

fn own(s: &str) -> Cow<'static, str> {
    Cow::Owned(s.to_string())
}

fn table(name: &str) -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: own(name),
        handle: None,
    }
}

fn set(table: &str, name: &str, ty: SetType, flag: Option<SetFlag>) -> NfListObject<'static> {
    NfListObject::Set(Box::new(schema::Set {
        family: NfFamily::INet,
        table: own(table),
        name: own(name),
        set_type: SetTypeValue::Single(ty),
        flags: flag.map(|f| HashSet::from([f])),
        ..schema::Set::default()
    }))
}

/// A trunk set: `ADDR_TYPE . inet_proto . inet_service`, intervals (networks, port ranges).
fn trunk_set(table: &str, name: &str, addr_type: SetType) -> NfListObject<'static> {
    NfListObject::Set(Box::new(schema::Set {
        family: NfFamily::INet,
        table: own(table),
        name: own(name),
        set_type: SetTypeValue::Concatenated(Cow::Owned(vec![
            addr_type,
            SetType::InetProto,
            SetType::InetService,
        ])),
        flags: Some(HashSet::from([SetFlag::Interval])),
        ..schema::Set::default()
    }))
}

/// A set of (address, `inet_service`) pairs, e.g. `ipv4_addr . inet_service`, whose
/// elements each carry a timeout (a pinhole closes on its own unless refreshed).
fn pair_set(table: &str, name: &str, addr_type: SetType) -> NfListObject<'static> {
    NfListObject::Set(Box::new(schema::Set {
        family: NfFamily::INet,
        table: own(table),
        name: own(name),
        set_type: SetTypeValue::Concatenated(Cow::Owned(vec![addr_type, SetType::InetService])),
        flags: Some(HashSet::from([SetFlag::Timeout])),
        ..schema::Set::default()
    }))
}

fn element(table: &str, name: &str, elem: Vec<Expression<'static>>) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: NfFamily::INet,
        table: own(table),
        name: own(name),
        elem: Cow::Owned(elem),
    })
}

fn addr(a: IpAddr) -> Expression<'static> {
    Expression::String(Cow::Owned(a.to_string()))
}

/// A set element `ADDR . PORT`.
fn pair(a: IpAddr, port: u16) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(vec![
        addr(a),
        Expression::Number(u32::from(port)),
    ]))
}

/// An element with its own timeout.
fn timed_expr(val: Expression<'static>, secs: u32) -> Expression<'static> {
    Expression::Named(NamedExpression::Elem(Elem {
        val: Box::new(val),
        timeout: Some(secs),
        expires: None,
        comment: None,
        counter: None,
    }))
}

fn cidr(c: Cidr) -> Expression<'static> {
    let host = match c.network() {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    if c.prefix() == host {
        return addr(c.network());
    }
    Expression::Named(NamedExpression::Prefix(expr::Prefix {
        addr: Box::new(addr(c.network())),
        len: u32::from(c.prefix()),
    }))
}

fn payload(protocol: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: own(protocol),
            field: own(field),
        },
    )))
}

fn saddr(protocol: &str) -> Expression<'static> {
    payload(protocol, "saddr")
}

fn meta(key: expr::MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(expr::Meta { key }))
}

fn set_ref(name: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(format!("@{name}")))
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn counter(name: &str) -> Statement<'static> {
    Statement::Counter(stmt::Counter::Named(own(name)))
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn drop() -> Statement<'static> {
    Statement::Drop(None)
}

/// `meter NAME { KEY timeout 60s limit rate over N/second burst M packets }`.
fn meter(name: &str, key: Expression<'static>, limit: FloodLimit) -> Statement<'static> {
    Statement::Meter(stmt::Meter {
        name: own(name),
        key: Expression::Named(NamedExpression::Elem(Elem {
            val: Box::new(key),
            timeout: Some(METER_ENTRY_TIMEOUT_SECS),
            expires: None,
            comment: None,
            counter: None,
        })),
        stmt: Box::new(Statement::Limit(stmt::Limit {
            rate: limit.per_second,
            rate_unit: None,
            per: Some(own("second")),
            burst: Some(limit.burst),
            burst_unit: None,
            inv: Some(true),
        })),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn json(n: &Nftables<'_>) -> Value {
        serde_json::to_value(n).unwrap()
    }

    #[test]
    fn covered_and_duplicate_networks_are_dropped() {
        let n = normalize(&[
            c("10.1.0.0/16"),
            c("10.0.0.0/8"),
            c("10.0.0.0/8"),
            c("192.168.1.7"),
            c("2001:db8::/32"),
            c("2001:db8:1::5"),
            c("172.16.0.0/12"),
        ]);
        let shown: Vec<String> = n.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.1.7/32",
                "2001:db8::/32"
            ]
        );
    }

    #[test]
    fn the_table_replaces_only_itself_and_orders_allow_before_ban() {
        let cfg = NftConfig::default();
        let v = json(&table_batch(&cfg, &[c("10.0.0.0/8")], &[], &[]));
        let cmds = v["nftables"].as_array().unwrap();
        // add, delete, add of our table and nothing else at table level.
        assert_eq!(cmds[0]["add"]["table"]["name"], "outpost");
        assert_eq!(cmds[1]["delete"]["table"]["name"], "outpost");
        assert_eq!(cmds[2]["add"]["table"]["name"], "outpost");
        for cmd in cmds {
            let inner = cmd.as_object().unwrap().values().next().unwrap();
            let obj = inner.as_object().unwrap().values().next().unwrap();
            let table = obj.get("table").or(obj.get("name")).unwrap();
            assert_eq!(obj["family"], "inet");
            if obj.get("table").is_some() {
                assert_eq!(table, "outpost");
            }
        }
        let rules: Vec<String> = cmds
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .map(|r| r["expr"].to_string())
            .collect();
        let pos = |needle: &str| rules.iter().position(|r| r.contains(needle)).unwrap();
        assert!(pos("@allow4") < pos("@ban4"));
        assert!(pos("@allow6") < pos("@ban6"));
        assert!(pos("@ban6") < pos("\"trunk_flood4\""));
        assert!(pos("\"trunk_flood6\"") < pos("\"flood4\""));
        assert!(pos("\"flood6\"") < pos("@rtp_open4"));
        assert!(pos("@rtp_open4") < pos("@rtp_open6"));
        assert!(rules[pos("@ban4")].contains("\"counter\":\"banned\""));
        let chain = cmds.iter().find_map(|c| c["add"].get("chain")).unwrap();
        assert_eq!(chain["policy"], "accept");
        assert_eq!(chain["hook"], "input");
    }

    #[test]
    fn the_management_zone_drops_tcp_to_its_ports_from_outside_its_networks_after_loopback() {
        let cfg = NftConfig {
            management: ManagementZone {
                networks: vec![
                    c("192.168.0.0/16"),
                    c("192.168.7.0/24"),
                    c("fc00::/7"),
                    c("::1/128"),
                    c("127.0.0.0/8"),
                ],
                ports: vec![9100, 22, 22],
            },
            ..NftConfig::default()
        };
        let v = json(&table_batch(&cfg, &[], &[], &[]));
        let cmds = v["nftables"].as_array().unwrap();
        let rules: Vec<&Value> = cmds
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .map(|r| &r["expr"])
            .collect();
        // `tcp dport @mgmt_ports ip saddr != @mgmt4 counter name "mgmt_drop" drop`, per
        // family, right after loopback and ahead of the allow list.
        let dport = serde_json::json!({"payload": {"protocol": "tcp", "field": "dport"}});
        for (rule, (ip, set)) in rules[1..3]
            .iter()
            .zip([("ip", "@mgmt4"), ("ip6", "@mgmt6")])
        {
            let want = serde_json::json!([
                {"match": {"op": "==", "left": dport, "right": "@mgmt_ports"}},
                {"match": {"op": "!=", "left": {"payload": {"protocol": ip, "field": "saddr"}}, "right": set}},
                {"counter": "mgmt_drop"},
                {"drop": null}
            ]);
            assert_eq!(**rule, want);
        }
        assert!(rules[0].to_string().contains("\"lo\""), "loopback first");
        assert!(rules[3].to_string().contains("@allow4"));
        // Nothing else mentions the zone: SIP ports are never in it.
        assert_eq!(
            rules
                .iter()
                .filter(|r| r.to_string().contains("mgmt"))
                .count(),
            2
        );
        let sets: Vec<&Value> = cmds.iter().filter_map(|c| c["add"].get("set")).collect();
        let set = |name: &str| *sets.iter().find(|s| s["name"] == name).unwrap();
        assert_eq!(set("mgmt4")["type"], "ipv4_addr");
        assert_eq!(set("mgmt4")["flags"], serde_json::json!(["interval"]));
        assert_eq!(set("mgmt6")["type"], "ipv6_addr");
        assert_eq!(set("mgmt_ports")["type"], "inet_service");
        assert!(cmds
            .iter()
            .any(|c| c["add"]["counter"]["name"] == "mgmt_drop"));
        let elems = |name: &str| {
            cmds.iter()
                .filter_map(|c| c["add"].get("element"))
                .find(|e| e["name"] == name)
                .map(|e| e["elem"].clone())
                .unwrap()
        };
        // Covered networks folded (an interval set refuses overlaps), ports deduplicated.
        assert_eq!(
            elems("mgmt4"),
            serde_json::json!([
                {"prefix": {"addr": "127.0.0.0", "len": 8}},
                {"prefix": {"addr": "192.168.0.0", "len": 16}}
            ])
        );
        assert_eq!(
            elems("mgmt6"),
            serde_json::json!(["::1", {"prefix": {"addr": "fc00::", "len": 7}}])
        );
        assert_eq!(elems("mgmt_ports"), serde_json::json!([22, 9100]));

        // A live change flushes all three sets and refills them in one transaction.
        let zone = ManagementZone {
            networks: vec![c("203.0.113.0/24")],
            ports: vec![2222],
        };
        let v = serde_json::to_value(mgmt_replace("outpost", &zone)).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {"flush": {"set": {"family": "inet", "table": "outpost", "name": "mgmt4", "type": "ipv4_addr", "flags": ["interval"]}}},
                {"flush": {"set": {"family": "inet", "table": "outpost", "name": "mgmt6", "type": "ipv6_addr", "flags": ["interval"]}}},
                {"flush": {"set": {"family": "inet", "table": "outpost", "name": "mgmt_ports", "type": "inet_service"}}},
                {"add": {"element": {"family": "inet", "table": "outpost", "name": "mgmt4", "elem": [{"prefix": {"addr": "203.0.113.0", "len": 24}}]}}},
                {"add": {"element": {"family": "inet", "table": "outpost", "name": "mgmt_ports", "elem": [2222]}}}
            ])
        );
    }

    #[test]
    fn trunk_peers_are_metered_not_accepted() {
        let cfg = NftConfig {
            trunk_peers: vec![
                TrunkPeer::host(ip("203.0.113.5"), TrunkProto::Udp, Some(5060)),
                TrunkPeer::host(ip("::ffff:203.0.113.5"), TrunkProto::Udp, Some(5060)),
                TrunkPeer::host(ip("2001:db8::5"), TrunkProto::Tcp, None),
                TrunkPeer {
                    net: c("198.51.100.16/28"),
                    proto: TrunkProto::Udp,
                    port: None,
                },
            ],
            ..NftConfig::default()
        };
        let v = json(&table_batch(&cfg, &[], &[], &[]));
        let cmds = v["nftables"].as_array().unwrap();
        let rules: Vec<&Value> = cmds
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .map(|r| &r["expr"])
            .collect();
        // No rule mentioning a trunk set accepts; the trunk meter drops over its rate.
        let trunk_rules: Vec<&&Value> = rules
            .iter()
            .filter(|r| r.to_string().contains("@trunk"))
            .collect();
        assert_eq!(trunk_rules.len(), 4, "two trunk meters, two flood meters");
        assert!(trunk_rules
            .iter()
            .all(|r| !r.to_string().contains("accept")));
        let key = serde_json::json!({"concat": [
            {"payload": {"protocol": "ip", "field": "saddr"}},
            {"meta": {"key": "l4proto"}},
            {"payload": {"protocol": "th", "field": "sport"}}
        ]});
        let meter4 = rules
            .iter()
            .find(|r| r.to_string().contains("\"trunk_flood4\""))
            .unwrap();
        assert_eq!(
            meter4[2],
            serde_json::json!({"match": {"op": "==", "left": key, "right": "@trunk4"}})
        );
        assert_eq!(meter4[3]["meter"]["stmt"]["limit"]["rate"], 1_000);
        assert_eq!(meter4[4], serde_json::json!({"counter": "trunk_flood"}));
        assert_eq!(meter4[5], serde_json::json!({"drop": null}));
        let flood4 = rules
            .iter()
            .find(|r| r.to_string().contains("\"flood4\""))
            .unwrap();
        assert_eq!(
            flood4[2],
            serde_json::json!({"match": {"op": "!=", "left": key, "right": "@trunk4"}})
        );
        // Elements: address . proto . port, "any port" as a range; the mapped duplicate gone.
        let elems = |name: &str| {
            cmds.iter()
                .filter_map(|c| c["add"].get("element"))
                .find(|e| e["name"] == name)
                .map(|e| e["elem"].clone())
                .unwrap()
        };
        assert_eq!(
            elems("trunk4"),
            serde_json::json!([
                {"concat": [{"prefix": {"addr": "198.51.100.16", "len": 28}}, "udp", {"range": [0, 65535]}]},
                {"concat": ["203.0.113.5", "udp", 5060]}
            ])
        );
        assert_eq!(
            elems("trunk6"),
            serde_json::json!([{"concat": ["2001:db8::5", "tcp", {"range": [0, 65535]}]}])
        );
        // Without a trunk rate, trunk peers are metered with everyone else.
        let plain = NftConfig {
            trunk_flood_rate: None,
            ..cfg
        };
        let s = json(&table_batch(&plain, &[], &[], &[])).to_string();
        assert!(!s.contains("trunk_flood4"));
        assert!(!s.contains("\"!=\",\"left\":{\"concat\":[{\"payload\":{\"protocol\":\"ip\""));
    }

    #[test]
    fn closed_rtp_and_flood_rules_follow_the_config() {
        let mut cfg = NftConfig {
            rtp_closed: false,
            flood_rate: None,
            trunk_flood_rate: None,
            ..NftConfig::default()
        };
        let s = json(&table_batch(&cfg, &[], &[], &[])).to_string();
        assert!(!s.contains("rtp_closed\"},{\"drop"));
        assert!(!s.contains("meter"));
        cfg.rtp_closed = true;
        cfg.rtp_range = (12000, 12999);
        cfg.flood_rate = Some(FloodLimit {
            per_second: 50,
            burst: 70,
        });
        let s = json(&table_batch(&cfg, &[], &[], &[])).to_string();
        assert!(s.contains("{\"range\":[12000,12999]}"), "{s}");
        assert!(s.contains("\"rate\":50"));
        assert!(s.contains("\"burst\":70"));
        assert!(s.contains("\"inv\":true"));
    }

    #[test]
    fn a_ban_batch_makes_deletes_safe_and_replaces_timeouts() {
        let a1: IpAddr = "192.0.2.1".parse().unwrap();
        let a2: IpAddr = "192.0.2.2".parse().unwrap();
        let a6: IpAddr = "2001:db8::1".parse().unwrap();
        let v = serde_json::to_value(ban_commands("outpost", &[a1, a2, a6], &[(a1, 300)])).unwrap();
        let cmds = v.as_array().unwrap();
        // ban4: add both (1 s), delete both, add the banned one; ban6: add, delete.
        assert_eq!(cmds.len(), 5);
        assert_eq!(cmds[0]["add"]["element"]["name"], "ban4");
        assert_eq!(
            cmds[0]["add"]["element"]["elem"].as_array().unwrap().len(),
            2
        );
        assert_eq!(cmds[0]["add"]["element"]["elem"][0]["elem"]["timeout"], 1);
        assert_eq!(cmds[1]["delete"]["element"]["elem"][0], "192.0.2.1");
        assert_eq!(cmds[2]["add"]["element"]["elem"][0]["elem"]["timeout"], 300);
        assert_eq!(
            cmds[2]["add"]["element"]["elem"].as_array().unwrap().len(),
            1
        );
        assert_eq!(cmds[3]["add"]["element"]["name"], "ban6");
        assert_eq!(cmds[4]["delete"]["element"]["name"], "ban6");
        // A new ban needs only the add.
        let v = serde_json::to_value(ban_commands("outpost", &[], &[(a6, 60)])).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1);
        assert_eq!(v[0]["add"]["element"]["name"], "ban6");
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connection_caps_count_new_tcp_connections_per_source_before_the_meter() {
        use crate::nft::ConnLimit;
        let off = json(&table_batch(&NftConfig::default(), &[], &[], &[]));
        let s = off.to_string();
        assert!(!s.contains("ct count") && !s.contains("authed4"), "{s}");
        // The counter exists either way, so counters() reads it.
        assert!(s.contains("\"name\":\"conn_limit\""), "{s}");
        let cfg = NftConfig {
            conn_limit: Some(ConnLimit {
                ports: vec![5061, 5060, 5060],
                unauthenticated: 32,
                authenticated: 512,
                by: ConnLimitBy::Count,
            }),
            ..NftConfig::default()
        };
        let v = json(&table_batch(&cfg, &[], &[], &[]));
        let cmds = v["nftables"].as_array().unwrap();
        let sets: Vec<&Value> = cmds.iter().filter_map(|c| c["add"].get("set")).collect();
        for (name, ty) in [("authed4", "ipv4_addr"), ("authed6", "ipv6_addr")] {
            let set = sets.iter().find(|s| s["name"] == name).unwrap();
            assert_eq!(set["type"], ty);
            assert_eq!(set["flags"], serde_json::json!(["timeout"]));
        }
        let rules: Vec<&Value> = cmds
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .map(|r| &r["expr"])
            .collect();
        let conn: Vec<&&Value> = rules
            .iter()
            .filter(|r| r.to_string().contains("ct count"))
            .collect();
        assert_eq!(conn.len(), 4);
        let dport = serde_json::json!({"payload": {"protocol": "tcp", "field": "dport"}});
        let v6 = serde_json::json!({"&": [{"payload": {"protocol": "ip6", "field": "saddr"}}, "ffff:ffff:ffff:ffff::"]});
        let v4 = serde_json::json!({"payload": {"protocol": "ip", "field": "saddr"}});
        for (rule, (key, op, set, meter, cap)) in conn.iter().zip([
            (&v4, "==", "@authed4", "conn_auth4", 512),
            (&v4, "!=", "@authed4", "conn4", 32),
            (&v6, "==", "@authed6", "conn_auth6", 512),
            (&v6, "!=", "@authed6", "conn6", 32),
        ]) {
            let want = serde_json::json!([
                {"match": {"op": "==", "left": dport, "right": {"set": [5060, 5061]}}},
                {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
                {"match": {"op": op, "left": key, "right": set}},
                {"meter": {"name": meter, "key": key, "stmt": {"ct count": {"val": cap, "inv": true}}}},
                {"counter": "conn_limit"},
                {"drop": null}
            ]);
            assert_eq!(***rule, want);
        }
        // After the bans, before the packet meter.
        let pos = |needle: &str| {
            rules
                .iter()
                .position(|r| r.to_string().contains(needle))
                .unwrap()
        };
        assert!(pos("@ban6") < pos("conn_auth4"));
        assert!(pos("conn6") < pos("flood4"));

        // The SYN-rate variant: no conntrack, a rate meter per source.
        let mut cfg = cfg;
        if let Some(c) = cfg.conn_limit.as_mut() {
            c.by = ConnLimitBy::SynRate;
        }
        let v = json(&table_batch(&cfg, &[], &[], &[]));
        assert!(!v.to_string().contains("\"ct\""), "{v}");
        let rule = v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .map(|r| r["expr"].clone())
            .find(|r| r.to_string().contains("\"conn4\""))
            .unwrap();
        let syn = serde_json::json!({"match": {"op": "==", "left": {"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, ["syn", "ack"]]}, "right": "syn"}});
        assert_eq!(rule[1], syn);
        assert_eq!(rule[3]["meter"]["name"], "conn4");
        assert_eq!(rule[3]["meter"]["key"]["elem"]["timeout"], 60);
        assert_eq!(
            rule[3]["meter"]["stmt"]["limit"],
            serde_json::json!({"rate": 32, "per": "second", "burst": 32, "inv": true})
        );
    }

    #[test]
    fn authenticated_sources_are_keyed_per_64_and_reset_like_bans() {
        assert_eq!(conn_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(conn_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        let v = serde_json::to_value(authed_commands(
            "outpost",
            &[ip("192.0.2.7")],
            &[(ip("192.0.2.7"), 7200), (ip("2001:db8:1:2::"), 7200)],
        ))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {"add": {"element": {"family": "inet", "table": "outpost", "name": "authed4",
                    "elem": [{"elem": {"val": "192.0.2.7", "timeout": 1, "expires": null, "comment": null, "counter": null}}]}}},
                {"delete": {"element": {"family": "inet", "table": "outpost", "name": "authed4",
                    "elem": ["192.0.2.7"]}}},
                {"add": {"element": {"family": "inet", "table": "outpost", "name": "authed4",
                    "elem": [{"elem": {"val": "192.0.2.7", "timeout": 7200, "expires": null, "comment": null, "counter": null}}]}}},
                {"add": {"element": {"family": "inet", "table": "outpost", "name": "authed6",
                    "elem": [{"elem": {"val": "2001:db8:1:2::", "timeout": 7200, "expires": null, "comment": null, "counter": null}}]}}}
            ])
        );
    }

    #[test]
    fn closed_rtp_rules_match_address_and_port_pairs_per_family() {
        let cfg = NftConfig {
            rtp_range: (12000, 12999),
            ..NftConfig::default()
        };
        let v = json(&table_batch(&cfg, &[], &[], &[]));
        let cmds = v["nftables"].as_array().unwrap();
        let rtp_rules: Vec<&Value> = cmds
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .filter(|r| r["expr"].to_string().contains("rtp_closed"))
            .map(|r| &r["expr"])
            .collect();
        assert_eq!(rtp_rules.len(), 2);
        // What `nft -j list` (1.0.6) shows for `meta nfproto ipv4 udp dport 12000-12999
        // ip saddr . udp dport != @rtp_open4 counter name "rtp_closed" drop`, plus the
        // explicit nfproto match (nft folds it into the dependency when listing).
        let dport = serde_json::json!({"payload": {"protocol": "udp", "field": "dport"}});
        for (rule, (nfproto, ip, set)) in rtp_rules
            .iter()
            .zip([("ipv4", "ip", "@rtp_open4"), ("ipv6", "ip6", "@rtp_open6")])
        {
            let want = serde_json::json!([
                {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": nfproto}},
                {"match": {"op": "==", "left": dport, "right": {"range": [12000, 12999]}}},
                {"match": {
                    "op": "!=",
                    "left": {"concat": [
                        {"payload": {"protocol": ip, "field": "saddr"}},
                        dport
                    ]},
                    "right": set
                }},
                {"counter": "rtp_closed"},
                {"drop": null}
            ]);
            assert_eq!(**rule, want);
        }
        let sets: Vec<&Value> = cmds.iter().filter_map(|c| c["add"].get("set")).collect();
        let set = |name: &str| *sets.iter().find(|s| s["name"] == name).unwrap();
        assert_eq!(
            set("rtp_open4")["type"],
            serde_json::json!(["ipv4_addr", "inet_service"])
        );
        assert_eq!(
            set("rtp_open6")["type"],
            serde_json::json!(["ipv6_addr", "inet_service"])
        );
        assert!(sets.iter().all(|s| s["name"] != "rtp_open"));
    }

    #[test]
    fn rtp_pinholes_carry_their_timeout_and_a_refresh_resets_the_old_one() {
        let v = serde_json::to_value(rtp_commands(
            "outpost",
            &[(ip("192.0.2.7"), 10003), (ip("2001:db8::7"), 10004)],
            &[
                ((ip("192.0.2.7"), 10002), 90),
                ((ip("192.0.2.7"), 10003), 90),
            ],
        ))
        .unwrap();
        let el = |a: &str, p: u16, t: u32| {
            serde_json::json!({"elem": {"val": {"concat": [a, p]}, "timeout": t,
                "comment": null, "counter": null, "expires": null}})
        };
        assert_eq!(
            v,
            serde_json::json!([
                // The refreshed pair loses its old timeout (added with 1 s so the delete
                // cannot fail), then comes back with a full one.
                {"add": {"element": {"family": "inet", "table": "outpost", "name": "rtp_open4",
                    "elem": [el("192.0.2.7", 10003, 1)]}}},
                {"delete": {"element": {"family": "inet", "table": "outpost", "name": "rtp_open4",
                    "elem": [{"concat": ["192.0.2.7", 10003]}]}}},
                {"add": {"element": {"family": "inet", "table": "outpost", "name": "rtp_open4",
                    "elem": [el("192.0.2.7", 10002, 90), el("192.0.2.7", 10003, 90)]}}},
                // A closed pair: reset only.
                {"add": {"element": {"family": "inet", "table": "outpost", "name": "rtp_open6",
                    "elem": [el("2001:db8::7", 10004, 1)]}}},
                {"delete": {"element": {"family": "inet", "table": "outpost", "name": "rtp_open6",
                    "elem": [{"concat": ["2001:db8::7", 10004]}]}}}
            ])
        );
        // New pinholes only: one plain add (no delete, the cheap transaction).
        let v = serde_json::to_value(rtp_commands(
            "outpost",
            &[],
            &[((ip("192.0.2.7"), 10002), 90)],
        ))
        .unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1);
        assert!(rtp_commands("outpost", &[], &[]).is_empty());
    }

    #[test]
    fn a_reinstalled_table_keeps_the_open_pairs_with_their_remaining_time() {
        let open = [
            ((ip("192.0.2.7"), 10002), 40),
            ((ip("2001:db8::7"), 10004), 7),
        ];
        let v = json(&table_batch(&NftConfig::default(), &[], &open, &[]));
        let cmds = v["nftables"].as_array().unwrap();
        let elems: Vec<(String, String)> = cmds
            .iter()
            .filter_map(|c| c["add"].get("element"))
            .map(|e| (e["name"].to_string(), e["elem"].to_string()))
            .collect();
        assert_eq!(
            elems,
            [
                (
                    "\"rtp_open4\"".to_string(),
                    "[{\"elem\":{\"comment\":null,\"counter\":null,\"expires\":null,\"timeout\":40,\"val\":{\"concat\":[\"192.0.2.7\",10002]}}}]".to_string()
                ),
                (
                    "\"rtp_open6\"".to_string(),
                    "[{\"elem\":{\"comment\":null,\"counter\":null,\"expires\":null,\"timeout\":7,\"val\":{\"concat\":[\"2001:db8::7\",10004]}}}]".to_string()
                )
            ]
        );
        // Nothing is deleted on a reinstall but the old table itself.
        assert_eq!(cmds.iter().filter(|c| c.get("delete").is_some()).count(), 1);
        // The pinhole sets expire their elements.
        let set = cmds
            .iter()
            .find_map(|c| c["add"].get("set").filter(|s| s["name"] == "rtp_open4"))
            .unwrap();
        assert_eq!(set["flags"], serde_json::json!(["timeout"]));
    }

    #[test]
    fn fingerprint_ignores_handles_elements_and_counter_values() {
        let a = serde_json::json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "outpost", "handle": 3}},
            {"counter": {"family": "inet", "name": "banned", "table": "outpost", "handle": 4, "packets": 0, "bytes": 0}},
            {"set": {"family": "inet", "name": "ban4", "table": "outpost", "type": "ipv4_addr", "handle": 1, "flags": ["timeout"]}},
            {"rule": {"family": "inet", "table": "outpost", "chain": "input", "handle": 7, "expr": [{"accept": null}]}}
        ]});
        let b = serde_json::json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "outpost", "handle": 9}},
            {"counter": {"family": "inet", "name": "banned", "table": "outpost", "handle": 10, "packets": 77, "bytes": 7000}},
            {"set": {"family": "inet", "name": "ban4", "table": "outpost", "type": "ipv4_addr", "handle": 11, "flags": ["timeout"], "elem": ["1.2.3.4"]}},
            {"rule": {"family": "inet", "table": "outpost", "chain": "input", "handle": 12, "expr": [{"accept": null}]}}
        ]});
        assert_eq!(fingerprint(&a).unwrap(), fingerprint(&b).unwrap());
        // A missing rule (a flushed chain) changes it.
        let mut c = b.clone();
        c["nftables"].as_array_mut().unwrap().pop();
        assert_ne!(fingerprint(&a).unwrap(), fingerprint(&c).unwrap());
        assert_eq!(counter_values(&b, "banned"), Some((77, 7000)));
        assert_eq!(counter_values(&b, "flood"), None);
    }
}

//! The RTP pairs the kernel lets through per call: for each media session, the (remote
//! address, local port) pairs the relay accepts, the set updates that open new pairs as
//! calls start and change, and the periodic refresh that keeps them open while the call
//! lives.
//!
//! Per leg: each address the relay accepts (its `allowed_ips`, or its SDP address if there
//! are none) on the leg's RTP port and the RTCP port above it. Bounded by the calls the
//! relay carries, at most [`MAX_LEG_ADDRS`] addresses a leg.
//!
//! Nothing is ever closed: each pinhole expires in the kernel `rtp_pinhole_secs` after it
//! was opened or last refreshed, so a call's end (or a re-INVITE that drops an address)
//! needs no update, and a daemon that dies leaves no pinhole open for longer than that.
//! [`RtpPairs::refresh`] runs every third of that lifetime and re-opens (which resets the
//! timeout of) every pair of every live session except those opened since the previous
//! round: a pair is refreshed at most two thirds of its lifetime after it was last
//! (re)opened, which leaves a third as margin for a late round. "Live" is the media
//! engine's session table: the relay ends a session whose media stopped for its
//! `media.timeout_secs` (and the call core ends it when the call ends), so refreshing
//! live sessions is refreshing the calls whose media flows. Cost: one batch per round
//! with every live pair (4 for a call between two phones with one address each, at most
//! 16), i.e. live pairs × 3 / lifetime elements per second — ~130/s for 1,000 such calls
//! at the default 90 s.

use std::collections::HashMap;
use std::net::IpAddr;

use firewall::net::canonical;
use firewall::nft::SetOp;
use pbx_core::media::session::{MediaCommand, SessionId};

/// The anchor gives a leg at most two addresses (signalling and SDP); a bound keeps a
/// session's pairs few whatever a command holds.
pub const MAX_LEG_ADDRS: usize = 4;

/// One session's pinholes.
#[derive(Debug, Default)]
struct Pinholes {
    /// Sorted (remote address, local RTP/RTCP port) pairs.
    pairs: Vec<(IpAddr, u16)>,
    /// Opened since the last refresh round (so they need none at this one).
    fresh: bool,
}

/// The pairs open in the kernel, per media session.
#[derive(Debug, Default)]
pub struct RtpPairs {
    sessions: HashMap<SessionId, Pinholes>,
}

impl RtpPairs {
    /// The set updates for one media command: the pairs it opens that the session did not
    /// have yet (nothing for a close, a prompt or a recording; dropped pairs expire).
    pub fn update(&mut self, cmd: &MediaCommand) -> Vec<SetOp> {
        let (session, a, b) = match cmd {
            MediaCommand::Open { session, a, b } | MediaCommand::Update { session, a, b } => {
                (*session, a, b)
            }
            MediaCommand::Close { session } => {
                self.sessions.remove(session);
                return Vec::new();
            }
            // Prompts and recordings do not change who may send.
            #[allow(unreachable_patterns)]
            _ => return Vec::new(),
        };
        let mut pairs: Vec<(IpAddr, u16)> = Vec::new();
        for leg in [a, b] {
            // Port 0 is a leg that does not exist (a caller alone with a prompt).
            if leg.local_port == 0 {
                continue;
            }
            // The same addresses as the relay's latch (`ip_allowed`).
            let addrs: Vec<IpAddr> = if leg.allowed_ips.is_empty() {
                leg.remote.iter().map(|r| r.ip()).collect()
            } else {
                leg.allowed_ips
                    .iter()
                    .take(MAX_LEG_ADDRS)
                    .copied()
                    .collect()
            };
            let ports = [Some(leg.local_port), leg.local_port.checked_add(1)];
            for ip in addrs {
                let ip = canonical(ip);
                pairs.extend(ports.iter().flatten().map(|&port| (ip, port)));
            }
        }
        pairs.sort_unstable();
        pairs.dedup();
        if pairs.is_empty() {
            self.sessions.remove(&session);
            return Vec::new();
        }
        let entry = self.sessions.entry(session).or_default();
        let ops = pairs
            .iter()
            .filter(|p| entry.pairs.binary_search(p).is_err())
            .map(|&(addr, port)| SetOp::RtpOpen { addr, port })
            .collect();
        entry.pairs = pairs;
        entry.fresh = true;
        ops
    }

    /// One refresh round: re-opens every pair of every session not opened or changed
    /// since the last round (which resets its kernel timeout).
    pub fn refresh(&mut self) -> Vec<SetOp> {
        let mut ops = Vec::new();
        for s in self.sessions.values_mut() {
            if std::mem::take(&mut s.fresh) {
                continue;
            }
            ops.extend(
                s.pairs
                    .iter()
                    .map(|&(addr, port)| SetOp::RtpOpen { addr, port }),
            );
        }
        ops
    }

    /// Sessions with pairs open.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session has pairs open.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use std::net::SocketAddr;

    use pbx_core::media::session::{Codec, LegMedia};

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn leg(port: u16, allowed: &[&str]) -> LegMedia {
        LegMedia {
            local_port: port,
            remote: Some(SocketAddr::new(ip("192.0.2.9"), 4000)),
            allowed_ips: allowed.iter().map(|a| ip(a)).collect(),
            codec: Codec::Pcmu,
            pt: 0,
            dtmf_pt: None,
            srtp: None,
        }
    }

    #[test]
    fn a_leg_opens_at_most_its_bound_of_addresses_and_closing_sends_nothing() {
        let mut rtp = RtpPairs::default();
        let many = [
            "198.51.100.1",
            "198.51.100.2",
            "198.51.100.3",
            "198.51.100.4",
            "198.51.100.5",
        ];
        let ops = rtp.update(&MediaCommand::Open {
            session: 1,
            a: leg(10_000, &many),
            b: LegMedia::absent(),
        });
        assert_eq!(ops.len(), 2 * MAX_LEG_ADDRS, "{ops:?}");
        assert!(!ops.contains(&SetOp::RtpOpen {
            addr: ip("198.51.100.5"),
            port: 10_000
        }));
        assert_eq!(rtp.len(), 1);
        // Opening the same again changes nothing.
        assert!(rtp
            .update(&MediaCommand::Update {
                session: 1,
                a: leg(10_000, &many),
                b: LegMedia::absent(),
            })
            .is_empty());
        // The end of a call needs no update: its pinholes expire in the kernel.
        assert!(rtp.update(&MediaCommand::Close { session: 1 }).is_empty());
        assert!(rtp.is_empty());
    }

    #[test]
    fn live_sessions_are_refreshed_every_round_but_the_one_they_opened_in() {
        let mut rtp = RtpPairs::default();
        let opened = rtp.update(&MediaCommand::Open {
            session: 1,
            a: leg(10_000, &["198.51.100.1"]),
            b: LegMedia::absent(),
        });
        assert_eq!(opened.len(), 2);
        // Just opened with a full lifetime: the next round leaves it alone.
        assert!(rtp.refresh().is_empty());
        // From then on, every round re-opens all its pairs.
        assert_eq!(rtp.refresh(), opened);
        assert_eq!(rtp.refresh(), opened);
        // A re-INVITE to a new address opens it and counts as fresh; the dropped address is
        // no longer refreshed (it expires).
        let moved = rtp.update(&MediaCommand::Update {
            session: 1,
            a: leg(10_000, &["198.51.100.2"]),
            b: LegMedia::absent(),
        });
        assert_eq!(moved.len(), 2);
        assert!(rtp.refresh().is_empty());
        assert_eq!(rtp.refresh(), moved);
        // An ended call is not refreshed.
        rtp.update(&MediaCommand::Close { session: 1 });
        assert!(rtp.refresh().is_empty());
    }
}

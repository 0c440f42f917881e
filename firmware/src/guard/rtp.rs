//! The RTP pairs the kernel lets through per call: for each media session, the (remote
//! address, local port) pairs the relay accepts, and the set updates that open the new
//! pairs and close the old ones as calls start, change and end.
//!
//! Per leg: each address the relay accepts (its `allowed_ips`, or its SDP address if there
//! are none) on the leg's RTP port and the RTCP port above it. Bounded by the calls the
//! relay carries, at most [`MAX_LEG_ADDRS`] addresses a leg.

use std::collections::HashMap;
use std::net::IpAddr;

use firewall::net::canonical;
use firewall::nft::SetOp;
use pbx_core::media::session::{MediaCommand, SessionId};

/// The anchor gives a leg at most two addresses (signalling and SDP); a bound keeps a
/// session's pairs few whatever a command holds.
pub const MAX_LEG_ADDRS: usize = 4;

/// The pairs open in the kernel, per media session.
#[derive(Debug, Default)]
pub struct RtpPairs {
    /// Sorted (remote address, local RTP/RTCP port) pairs per session.
    sessions: HashMap<SessionId, Vec<(IpAddr, u16)>>,
}

impl RtpPairs {
    /// The set updates for one media command (nothing for prompts and recordings, which do
    /// not change who may send): opens first, then closes.
    pub fn update(&mut self, cmd: &MediaCommand) -> Vec<SetOp> {
        let (session, new_pairs) = match cmd {
            MediaCommand::Open { session, a, b } | MediaCommand::Update { session, a, b } => {
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
                (*session, pairs)
            }
            MediaCommand::Close { session } => (*session, Vec::new()),
            // Prompts and recordings do not change who may send.
            #[allow(unreachable_patterns)]
            _ => return Vec::new(),
        };
        let old = if new_pairs.is_empty() {
            self.sessions.remove(&session).unwrap_or_default()
        } else {
            self.sessions
                .insert(session, new_pairs.clone())
                .unwrap_or_default()
        };
        let mut ops: Vec<SetOp> = new_pairs
            .iter()
            .filter(|p| old.binary_search(p).is_err())
            .map(|&(addr, port)| SetOp::RtpOpen { addr, port })
            .collect();
        ops.extend(
            old.iter()
                .filter(|p| new_pairs.binary_search(p).is_err())
                .map(|&(addr, port)| SetOp::RtpClose { addr, port }),
        );
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
    fn a_leg_opens_at_most_its_bound_of_addresses_and_closing_forgets_the_session() {
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
        let closed = rtp.update(&MediaCommand::Close { session: 1 });
        assert_eq!(closed.len(), 2 * MAX_LEG_ADDRS);
        assert!(closed.iter().all(|op| matches!(op, SetOp::RtpClose { .. })));
        assert!(rtp.is_empty());
    }
}

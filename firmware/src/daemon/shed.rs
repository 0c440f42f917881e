//! Load shedding at the inbound queue: a new request over UDP that waited longer than
//! [`STALE_AFTER`] between the kernel taking it and the daemon's turn reaching it is dropped
//! without an answer instead of being processed.
//!
//! Why: above capacity, messages wait in the socket buffer and the inbound queue. A phone
//! retransmits a request over UDP at T1 (500 ms), 2·T1, 4·T1... while it waits, so once the
//! wait passes T1 every request is in the queue twice or more; processing the late original
//! spends authentication, registrar and store work on an answer whose copy is already
//! queued behind it (and a copy that arrives after the stateless 401 cache let the first one
//! go draws a second challenge with a new nonce, which fails the client's handshake). Dropping
//! the stale original costs a parse; the client's retransmission, which has waited less, is
//! served. The queue's wait then stays near the bound instead of growing, and goodput stays
//! near capacity.
//!
//! Why [`STALE_AFTER`] is T1/2 (250 ms): a request answered within T1 of its sending draws
//! no retransmission, so at steady overload (where the wait settles at the bound) the
//! requests that are served leave T1/2 for processing, the commit that a new binding waits
//! for, and the way back, and none of them is answered twice. A longer bound (T1) lets every
//! served request draw a retransmission that must be absorbed; a shorter one sheds requests
//! during ordinary bursts that would have been answered in time. The cost of a wrongly shed
//! request is one T1 for that client, not a failure: it is served at its retransmission.
//!
//! Why drop silently rather than answer 503 + Retry-After: a 503 ends the client's
//! transaction as a failure and asks it to stay away (RFC 3261 §21.5.4; phones then report
//! the registration failed or move to another server), when its retransmission would have
//! been served a moment later; sending it would also spend a `sendmmsg` slot per shed
//! request at the moment sending is what the box lacks (RFC 6357 §3 on 503 as an overload
//! signal that amplifies load). The transaction-table cap (`[sip] max_server_transactions`)
//! keeps its 503: that is a limit of state, not of time.
//!
//! What is never shed, whatever its wait:
//! - responses: they complete client transactions already paid for (and stop their
//!   retransmissions);
//! - ACK: a dropped ACK for a 2xx makes the other side retransmit the 2xx for 32 s and can
//!   end the call; for a non-2xx it stops our retransmissions;
//! - CANCEL and BYE: they end work (ringing, a call) and free resources;
//! - any request with a To tag (in a dialog: re-INVITE, UPDATE, INFO, REFER, NOTIFY,
//!   PRACK): calls in progress are never put at risk to save work on new ones;
//! - requests from a configured trunk peer: a provider's INVITE is a real call with its own
//!   rate cap (`[[trunk]] inbound_calls_per_second`, 503), and providers back off whole trunks on
//!   missing answers;
//! - retransmissions the transaction layer absorbs (a live or completed transaction, a
//!   statelessly answered request): re-sending a stored response costs less than deciding;
//! - anything over TCP or TLS: the client does not retransmit over a reliable transport and
//!   waits up to 64·T1 for this one copy, so the work is never duplicated and dropping it
//!   would turn a slow answer into a 32 s failure;
//! - malformed messages: the firewall has counted them and the answer is a cheap 400.

use std::time::Duration;

use pbx_core::sip::wire::WireError;
use pbx_core::sip::{Message, Method, Request, Transport};

/// A new UDP request that waited longer than this is shed (T1/2; module docs).
pub(super) const STALE_AFTER: Duration = Duration::from_millis(250);

/// What kind of request was shed, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shed {
    Register,
    Invite,
    /// OPTIONS, SUBSCRIBE, MESSAGE, PUBLISH, ... outside a dialog.
    Other,
}

/// Requests shed since start, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ShedCounters {
    pub(super) register: u64,
    pub(super) invite: u64,
    pub(super) other: u64,
}

impl ShedCounters {
    /// Counts one shed request.
    pub(super) fn count(&mut self, kind: Shed) {
        let n = match kind {
            Shed::Register => &mut self.register,
            Shed::Invite => &mut self.invite,
            Shed::Other => &mut self.other,
        };
        *n = n.saturating_add(1);
    }

    /// Every request shed.
    pub(super) fn total(&self) -> u64 {
        self.register
            .saturating_add(self.invite)
            .saturating_add(self.other)
    }
}

/// Whether a message that waited `waited` since it was received is shed, and as what;
/// `None`: process it. `from_trunk` says it came from a configured trunk peer; `absorbs`
/// asks the transaction layer whether the request is a retransmission it answers from a
/// stored response (asked last, only for a stale new-looking request).
pub(super) fn verdict(
    waited: Duration,
    transport: Transport,
    parsed: &Result<Message, WireError>,
    from_trunk: bool,
    absorbs: impl FnOnce(&Request) -> bool,
) -> Option<Shed> {
    if waited <= STALE_AFTER || transport != Transport::Udp || from_trunk {
        return None;
    }
    let Ok(Message::Request(req)) = parsed else {
        return None;
    };
    if matches!(req.method, Method::Ack | Method::Cancel | Method::Bye)
        || req.headers.to.tag().is_some()
        || absorbs(req)
    {
        return None;
    }
    Some(match req.method {
        Method::Register => Shed::Register,
        Method::Invite => Shed::Invite,
        _ => Shed::Other,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    const LATE: Duration = Duration::from_millis(600);

    fn request(method: &str, to_tag: bool) -> Result<Message, WireError> {
        let tag = if to_tag { ";tag=callee" } else { "" };
        let text = format!(
            "{method} sip:100@192.0.2.1 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKshed1\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:100@192.0.2.1>;tag=caller\r\n\
             To: <sip:100@192.0.2.1>{tag}\r\n\
             Call-ID: shed-test\r\n\
             CSeq: 1 {method}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let parsed = pbx_core::sip::wire::parse(text.as_bytes());
        assert!(parsed.is_ok(), "{method}: {parsed:?}");
        parsed
    }

    fn response(status: u16) -> Result<Message, WireError> {
        let text = format!(
            "SIP/2.0 {status} Whatever\r\n\
             Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKout1\r\n\
             From: <sip:100@192.0.2.1>;tag=box\r\n\
             To: <sip:200@192.0.2.7>;tag=phone\r\n\
             Call-ID: shed-resp\r\n\
             CSeq: 1 INVITE\r\n\
             Content-Length: 0\r\n\r\n"
        );
        pbx_core::sip::wire::parse(text.as_bytes())
    }

    fn udp(waited: Duration, parsed: &Result<Message, WireError>) -> Option<Shed> {
        verdict(waited, Transport::Udp, parsed, false, |_| false)
    }

    #[test]
    fn a_stale_new_request_over_udp_is_shed_by_kind() {
        assert_eq!(udp(LATE, &request("REGISTER", false)), Some(Shed::Register));
        assert_eq!(udp(LATE, &request("INVITE", false)), Some(Shed::Invite));
        for method in ["OPTIONS", "SUBSCRIBE", "MESSAGE", "PUBLISH", "FOO"] {
            assert_eq!(
                udp(LATE, &request(method, false)),
                Some(Shed::Other),
                "{method}"
            );
        }
    }

    #[test]
    fn a_request_within_the_bound_is_processed() {
        let reg = request("REGISTER", false);
        assert_eq!(udp(Duration::ZERO, &reg), None);
        assert_eq!(
            udp(STALE_AFTER, &reg),
            None,
            "the bound itself is not stale"
        );
        assert_eq!(
            udp(STALE_AFTER + Duration::from_millis(1), &reg),
            Some(Shed::Register)
        );
    }

    #[test]
    fn responses_acks_cancels_byes_and_dialogs_are_never_shed() {
        for status in [100, 180, 200, 401, 486, 503] {
            assert_eq!(udp(LATE, &response(status)), None, "{status}");
        }
        for method in ["ACK", "CANCEL", "BYE"] {
            assert_eq!(udp(LATE, &request(method, false)), None, "{method}");
            assert_eq!(
                udp(LATE, &request(method, true)),
                None,
                "{method} in a dialog"
            );
        }
        for method in [
            "INVITE", "UPDATE", "INFO", "REFER", "NOTIFY", "PRACK", "OPTIONS",
        ] {
            assert_eq!(
                udp(LATE, &request(method, true)),
                None,
                "in-dialog {method}"
            );
        }
    }

    #[test]
    fn trunks_streams_malformed_and_absorbed_retransmissions_are_never_shed() {
        let reg = request("INVITE", false);
        assert_eq!(
            verdict(LATE, Transport::Udp, &reg, true, |_| false),
            None,
            "from a trunk peer"
        );
        for transport in [Transport::Tcp, Transport::Tls] {
            assert_eq!(verdict(LATE, transport, &reg, false, |_| false), None);
        }
        assert_eq!(
            verdict(LATE, Transport::Udp, &reg, false, |_| true),
            None,
            "a retransmission the transaction layer absorbs"
        );
        let bad = pbx_core::sip::wire::parse(b"REGISTER nonsense\r\n\r\n");
        assert!(bad.is_err());
        assert_eq!(udp(LATE, &bad), None);
    }

    #[test]
    fn the_transaction_layer_is_asked_only_for_a_stale_new_request() {
        let mut asked = 0;
        let reg = request("REGISTER", false);
        let _ = verdict(Duration::ZERO, Transport::Udp, &reg, false, |_| {
            asked += 1;
            false
        });
        let _ = verdict(LATE, Transport::Udp, &response(200), false, |_| {
            asked += 1;
            false
        });
        assert_eq!(asked, 0, "fresh messages and responses cost no lookup");
        let _ = verdict(LATE, Transport::Udp, &reg, false, |_| {
            asked += 1;
            false
        });
        assert_eq!(asked, 1);
    }

    #[test]
    fn counters_add_up_by_kind() {
        let mut c = ShedCounters::default();
        c.count(Shed::Register);
        c.count(Shed::Register);
        c.count(Shed::Invite);
        c.count(Shed::Other);
        assert_eq!((c.register, c.invite, c.other, c.total()), (2, 1, 1, 4));
    }
}

//! A call's state: the caller's leg (A), the forks that ring the callee's phones (leg B),
//! what Outpost itself does with the caller (an [`App`]), and the roles of the client
//! transactions the endpoint starts.
//!
//! These are the records [`super::Endpoint`] keeps per call. The methods on [`Call`]
//! answer questions about one call and never send anything; the in-dialog requests of one
//! leg (ACK, BYE, and the start of every other request) are built by that leg's record
//! ([`LegA`], [`Fork`]) through an [`OutLeg`], handed `&mut Signalling` and nothing else.

use std::net::SocketAddr;

use crate::media::anchor::CallMedia;
use crate::media::session::Leg;
use crate::sip::transaction::TxKey;
use crate::sip::{Contact, Method, NameAddr, Peer, Request, Response, Transport, Uri};
use crate::Millis;

use super::outleg::OutLeg;
use super::signalling::{first_contact_uri, ClientRole, Signalling};
use super::ALLOW;

use super::ivr::MenuSession;
use super::plan::{FollowMe, GateTicket, RingPlan};
use super::referral::Referrer;
use super::voicemail::{AccessSession, Deposit, DepositStage};

/// State of the caller's leg.
#[derive(Debug)]
pub(super) struct LegA {
    pub(super) call_id: String,
    /// The caller's From tag.
    pub(super) remote_tag: String,
    /// Our To tag towards the caller.
    pub(super) local_tag: String,
    pub(super) remote_uri: NameAddr,
    pub(super) local_uri: NameAddr,
    /// Where requests to the caller go (its Contact).
    pub(super) target: Uri,
    pub(super) peer: Peer,
    pub(super) invite_key: TxKey,
    pub(super) invite: Request,
    /// Our CSeq for requests we send to the caller.
    pub(super) local_cseq: u32,
}

impl LegA {
    /// Where and as what a request with CSeq `cseq` goes to the caller.
    pub(super) fn out_leg(&self, cseq: u32) -> OutLeg {
        OutLeg::in_dialog(
            false,
            self.peer,
            &self.target,
            (&self.local_uri, &self.local_tag),
            (&self.remote_uri, Some(&self.remote_tag)),
            &self.call_id,
            cseq,
        )
    }

    /// The next in-dialog request towards the caller (advances our CSeq).
    pub(super) fn next_out_leg(&mut self) -> OutLeg {
        self.local_cseq = self.local_cseq.saturating_add(1);
        self.out_leg(self.local_cseq)
    }
}

/// Where one fork's INVITE stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ForkState {
    Calling,
    Ringing,
    Answered,
    /// CANCEL requested; sent once a provisional arrives.
    CancelPending,
    Cancelled,
    Failed,
}

/// One INVITE towards one contact of the callee.
#[derive(Debug)]
pub(super) struct Fork {
    pub(super) call_id: String,
    pub(super) local_tag: String,
    pub(super) remote_tag: Option<String>,
    pub(super) local_uri: NameAddr,
    pub(super) remote_uri: NameAddr,
    /// Request-URI of the INVITE: the registered contact; later the 2xx Contact.
    pub(super) target: Uri,
    pub(super) peer: Peer,
    pub(super) invite_key: TxKey,
    pub(super) invite_cseq: u32,
    pub(super) local_cseq: u32,
    pub(super) state: ForkState,
    /// The ACK we sent for its 2xx, re-sent when the 2xx is retransmitted.
    pub(super) ack: Option<Request>,
    /// The INVITE client transaction still exists (responses may still arrive).
    pub(super) tx_live: bool,
    /// Superseded (the call moved on: next group member, forwarding, next trunk): its
    /// answers no longer count and a 2xx is hung up.
    pub(super) retired: bool,
    /// The trunk this fork goes out on.
    pub(super) trunk: Option<usize>,
    /// The extension whose phone this fork rings (its busy lamp shows the call ringing).
    pub(super) rings: Option<String>,
    /// Digest challenges answered on this fork.
    pub(super) auth_tries: u8,
    /// The INVITE as sent to a trunk, to send again with credentials (the transaction
    /// layer drops it with the final response).
    pub(super) trunk_invite: Option<Box<Request>>,
}

impl Fork {
    /// What stays in a call's fork list when its dialog moved to another call.
    pub(super) fn placeholder() -> Fork {
        Fork {
            call_id: String::new(),
            local_tag: String::new(),
            remote_tag: None,
            local_uri: NameAddr::new(Uri::default()),
            remote_uri: NameAddr::new(Uri::default()),
            target: Uri::default(),
            peer: Peer {
                transport: Transport::Udp,
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            },
            invite_key: TxKey {
                branch: String::new(),
                method: Method::Invite,
                server: false,
            },
            invite_cseq: 0,
            local_cseq: 0,
            state: ForkState::Cancelled,
            ack: None,
            tx_live: false,
            retired: true,
            trunk: None,
            rings: None,
            auth_tries: 0,
            trunk_invite: None,
        }
    }

    /// Where and as what a request with CSeq `cseq` goes to this fork's phone.
    pub(super) fn out_leg(&self, cseq: u32) -> OutLeg {
        OutLeg::in_dialog(
            true,
            self.peer,
            &self.target,
            (&self.local_uri, &self.local_tag),
            (&self.remote_uri, self.remote_tag.as_ref()),
            &self.call_id,
            cseq,
        )
    }

    /// The next in-dialog request towards this fork (advances our CSeq).
    pub(super) fn next_out_leg(&mut self) -> OutLeg {
        self.local_cseq = self.local_cseq.saturating_add(1);
        self.out_leg(self.local_cseq)
    }

    /// Sends an ACK with CSeq `cseq`; the ACK of the INVITE itself is kept, to be sent
    /// again when its 2xx is retransmitted.
    pub(super) fn send_ack(
        &mut self,
        sig: &mut Signalling,
        cseq: u32,
        body: Vec<u8>,
        content_type: Option<String>,
    ) {
        let ack = self.out_leg(cseq).send_ack(sig, body, content_type);
        if cseq == self.invite_cseq {
            self.ack = Some(ack);
        }
    }

    /// Still waiting for a final answer that counts.
    pub(super) fn pending(&self) -> bool {
        !self.retired
            && matches!(
                self.state,
                ForkState::Calling | ForkState::Ringing | ForkState::CancelPending
            )
    }
}

/// Where a call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CallState {
    Ringing,
    Answered,
    /// Over (CDR written); kept only until every fork's INVITE transaction has ended, so
    /// late provisionals still get their CANCEL and late 2xx their ACK + BYE.
    Ended,
}

/// A relayed in-dialog request waiting for the other leg's answer.
#[derive(Debug)]
pub(super) struct Relay {
    pub(super) call: u64,
    /// Server transaction on the leg the request came from.
    pub(super) server_key: TxKey,
    pub(super) server_req: Request,
    /// Where the request came from (the answer goes back there).
    pub(super) src: Peer,
    /// True when the request came from leg A (so it went out on leg B).
    pub(super) from_a: bool,
}

/// One call: the caller's leg, the forks towards the callee, and what rings next.
#[derive(Debug)]
pub(super) struct Call {
    pub(super) caller: String,
    pub(super) callee: String,
    pub(super) state: CallState,
    pub(super) start: Millis,
    pub(super) answer: Option<Millis>,
    pub(super) a: LegA,
    pub(super) forks: Vec<Fork>,
    pub(super) winner: Option<usize>,
    /// Best final response seen from failed forks.
    pub(super) best_failure: Option<u16>,
    /// Ring deadline.
    pub(super) ring_deadline: Millis,
    /// The caller's INVITE had no SDP: the 2xx ACK to leg B waits for the caller's ACK.
    pub(super) late_offer: bool,
    /// A 2xx for a re-INVITE relayed to the other leg awaits that leg's ACK
    /// (value: the fork-side or A-side that must get the ACK; true = send to B).
    pub(super) pending_reinvite_ack: Option<(bool, u32)>,
    /// SDP anchoring state when media runs through the relay.
    pub(super) media: Option<CallMedia>,
    /// Outpost itself answered the caller (voicemail).
    pub(super) app: Option<App>,
    /// The caller's offer as anchored for the callee side (sent to every fork).
    pub(super) b_offer: Vec<u8>,
    /// The last SDP the caller's phone sent (offer or answer), to re-offer its media to
    /// a new callee (transfer, pickup).
    pub(super) a_sdp: Vec<u8>,
    /// The last SDP the callee's phone sent.
    pub(super) b_sdp: Vec<u8>,
    /// A transfer target being called to take over leg A.
    pub(super) pending_a: Option<PendingLegA>,
    /// Where the caller came from.
    pub(super) origin: Origin,
    /// What is being rung.
    pub(super) plan: RingPlan,
    /// Next step of the plan (next group member, next trunk when one stays silent).
    pub(super) step_deadline: Option<Millis>,
    /// The toll-fraud gate allowed this call: report its end.
    pub(super) gate: Option<GateTicket>,
    /// Forwarding and transfer hops so far (loop guard).
    pub(super) hops: u8,
    /// The follow-me list being tried, once the extension's phones did not answer.
    pub(super) follow_me: Option<FollowMe>,
    /// The call record's current leg (a transfer ends one and starts the next).
    pub(super) rec: RecordLeg,
    /// Shared by every record of this call: the first leg's Call-ID.
    pub(super) linked_id: String,
    /// Talk time of the records already written, ms (the toll-fraud gate counts the call's
    /// whole talk time).
    pub(super) talk_before_ms: u64,
    /// The auto-attendant menu (its number) and the digit that put the caller through.
    pub(super) menu_choice: Option<(String, char)>,
    /// An inbound trunk call's DID.
    pub(super) did: Option<String>,
    /// The phone that asked for the blind transfer in progress, told the target's
    /// progress until it answers or fails.
    pub(super) referrer: Option<Referrer>,
}

/// Who talks to whom in the current leg of a call's record, and since when.
#[derive(Debug, Clone)]
pub(super) struct RecordLeg {
    pub(super) caller: String,
    pub(super) callee: String,
    pub(super) start: Millis,
    pub(super) answer: Option<Millis>,
    /// The extension (or `menu:<number>`) that put this leg's parties together.
    pub(super) transferred_by: Option<String>,
}

impl RecordLeg {
    /// The first leg of a call from `caller` to `callee` at `now`.
    pub(super) fn first(caller: &str, callee: &str, now: Millis) -> RecordLeg {
        RecordLeg {
            caller: caller.to_owned(),
            callee: callee.to_owned(),
            start: now,
            answer: None,
            transferred_by: None,
        }
    }
}

impl Call {
    /// Someone answered at `now` (the callee, a transfer target, Outpost itself): the
    /// record's current leg is answered, if it was not yet.
    pub(super) fn answered(&mut self, now: Millis) {
        self.rec.answer.get_or_insert(now);
    }

    /// Ends the record's current leg at `now` (the call was transferred) and starts the
    /// next one between `caller` and `callee`, put together by `by`; returns the ended leg
    /// (its record is written with disposition `Transferred`).
    pub(super) fn next_leg(
        &mut self,
        now: Millis,
        caller: &str,
        callee: &str,
        by: String,
    ) -> RecordLeg {
        let next = RecordLeg {
            caller: caller.to_owned(),
            callee: callee.to_owned(),
            start: now,
            answer: None,
            transferred_by: Some(by),
        };
        let ended = std::mem::replace(&mut self.rec, next);
        if let Some(a) = ended.answer {
            self.talk_before_ms = self.talk_before_ms.saturating_add(now.saturating_sub(a));
        }
        ended
    }

    /// The auto attendant is ringing an extension for this caller.
    pub(super) fn transferring(&self) -> bool {
        self.winner.is_none()
            && match &self.app {
                Some(App::Menu(session)) => session.transferring(),
                Some(App::Transfer) => true,
                _ => false,
            }
    }

    /// The offer for a phone that is to become leg B: the caller's anchored offer while
    /// ringing; once the caller talks (to Outpost, or to a callee who transfers it), a
    /// fresh offer from what the caller agreed to.
    pub(super) fn offer_for_new_b(&mut self) -> Vec<u8> {
        if self.state != CallState::Answered {
            return self.b_offer.clone();
        }
        let Some(m) = self.media.as_mut() else {
            return Vec::new();
        };
        m.offer_to_b()
            .or_else(|_| m.offer(Leg::A, &self.a_sdp))
            .unwrap_or_default()
    }

    /// Forks still waiting for a final answer that counts.
    pub(super) fn pending_forks(&self) -> bool {
        self.forks.iter().any(Fork::pending)
    }

    /// Voicemail is recording this caller's message.
    pub(super) fn recording_message(&self) -> bool {
        matches!(
            &self.app,
            Some(App::Deposit(d)) if d.stage == DepositStage::Recording
        )
    }

    /// The auto-attendant session of this caller, if it is in a menu.
    pub(super) fn menu_mut(&mut self) -> Option<&mut MenuSession> {
        match &mut self.app {
            Some(App::Menu(session)) => Some(session),
            _ => None,
        }
    }
}

/// A call answered by Outpost itself.
#[derive(Debug)]
pub(super) enum App {
    /// Taking a message.
    Deposit(Deposit),
    /// The caller is in an auto-attendant menu (or being transferred from it).
    Menu(MenuSession),
    /// The callee transferred the caller (REFER); `target` rings while the caller hears
    /// ringback.
    Transfer,
    /// Saying goodbye: hang up when the prompt ends.
    Goodbye,
    /// Waiting in a park orbit, hearing music; the parked party is on leg B (`on_b`: the
    /// caller parked it) or on leg A.
    Parked { orbit: u32, on_b: bool },
    /// The mailbox owner listens to messages.
    Access(AccessSession),
    /// Paging: the caller talks into a mix that the paged phones (the forks) hear. Entry
    /// `i` is fork `i`'s media, `None` once that phone left or failed.
    Paging(Vec<Option<PageMember>>),
    /// In a conference (`super::conference`): this call's party on `leg` is in the mix of
    /// room `room`; its other side left (or is the conference number itself).
    Conference { room: u64, leg: Leg },
}

/// One paged phone's own relay session: leg B its phone, leg A absent; joined to the
/// caller's mix as a listener once it answers.
#[derive(Debug)]
pub(super) struct PageMember {
    /// Its relay session (an id from the call numbers, so it never clashes with a call's).
    pub(super) session: u64,
    /// Its relay port (RTCP the next one).
    pub(super) port: u16,
    /// Its leg B's SDP state: our sendonly offer, the phone's answer.
    pub(super) media: CallMedia,
    /// Its call record: the caller to the member, `transferred_by` `page:<number>`.
    pub(super) rec: RecordLeg,
}

/// Who leg B's INVITE says it is from and to.
#[derive(Debug)]
pub(super) struct ForkIdentity {
    pub(super) local_uri: NameAddr,
    pub(super) remote_uri: NameAddr,
    /// User part of our Contact.
    pub(super) contact_user: String,
    /// Caller-ID asserted to a trunk (P-Asserted-Identity).
    pub(super) asserted: Option<String>,
    /// Further headers of the INVITE (paging's auto-answer headers).
    pub(super) extra: Vec<(&'static str, String)>,
}

/// Where a call came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Origin {
    /// An authenticated extension.
    Extension,
    /// A provider, on this trunk.
    Trunk(usize),
}

/// Response aggregation across forks (RFC 3261 §16.7 step 6, simplified): busy beats other
/// failures so the caller hears busy when any phone was busy; otherwise the lowest class wins.
pub(super) fn better_failure(current: Option<u16>, new: u16) -> u16 {
    let rank = |s: u16| match s {
        600..=699 => 0,
        486 => 1,
        487 => 5,
        408 => 6,
        _ => 2 + u16::from(s >= 500),
    };
    match current {
        Some(c) if rank(c) <= rank(new) => c,
        _ => new,
    }
}

/// Records and signalling for the endpoint's unit tests.
/// The INVITE that brings a transfer target onto leg A (the caller transferred the
/// callee): the dialog Outpost opened with the target, until it answers.
#[derive(Debug)]
pub(super) struct PendingLegA {
    pub(super) call_id: String,
    pub(super) local_tag: String,
    pub(super) local_uri: NameAddr,
    pub(super) remote_uri: NameAddr,
    pub(super) target: Uri,
    pub(super) peer: Peer,
}

impl PendingLegA {
    /// Sends the INVITE for call `call` to the target's contact `target` at `peer`, from
    /// `from` (without tag) to `to`, offering `body`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn invite(
        sig: &mut Signalling,
        now: Millis,
        call: u64,
        peer: Peer,
        target: Uri,
        from: NameAddr,
        to: NameAddr,
        body: Vec<u8>,
    ) -> PendingLegA {
        let call_id = sig.new_call_id();
        let local_tag = sig.new_tag();
        let mut from_tagged = from.clone();
        from_tagged.params.set("tag", Some(local_tag.clone()));
        let mut headers = sig.request_headers(
            peer,
            from_tagged,
            to.clone(),
            call_id.clone(),
            1,
            Method::Invite,
        );
        headers.contact = vec![Contact::Addr(sig.our_contact(peer, None))];
        headers.content_type = (!body.is_empty()).then(|| "application/sdp".to_string());
        headers.push("Allow", ALLOW);
        let invite = Request {
            method: Method::Invite,
            uri: target.clone(),
            headers,
            body,
        };
        sig.send_request(now, invite, peer, ClientRole::NewLegA { call });
        PendingLegA {
            call_id,
            local_tag,
            local_uri: from,
            remote_uri: to,
            target,
            peer,
        }
    }

    /// The target answered with the 2xx `resp`: its dialog stands in for the caller's on
    /// leg `a`. Returns the Call-ID of the dialog it replaced.
    pub(super) fn take_over(self, a: &mut LegA, resp: &Response) -> String {
        let old_call_id = std::mem::replace(&mut a.call_id, self.call_id);
        a.local_tag = self.local_tag;
        a.remote_tag = resp.headers.to.tag().unwrap_or_default().to_string();
        a.local_uri = self.local_uri;
        a.remote_uri = self.remote_uri;
        a.target = first_contact_uri(&resp.headers).unwrap_or(self.target);
        a.peer = self.peer;
        a.local_cseq = 1;
        old_call_id
    }
}

#[cfg(test)]
pub(super) mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use crate::sip::transaction::{TimerConfig, Transactions};
    use crate::sip::wire;

    use super::*;

    pub(crate) fn signalling() -> Signalling {
        let local: SocketAddr = "10.0.0.1:5060".parse().expect("address");
        Signalling::new(
            Transactions::new(TimerConfig::default()),
            StdRng::seed_from_u64(7),
            vec![local],
            "outpost-test".to_string(),
        )
    }

    pub(crate) fn peer(addr: &str) -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: addr.parse().expect("address"),
        }
    }

    pub(crate) fn name(uri: &str) -> NameAddr {
        NameAddr::new(wire::parse_uri(uri).expect("uri"))
    }

    /// An answered fork towards extension 200 at 10.0.0.6, its INVITE sent with CSeq 1.
    pub(crate) fn answered_fork() -> Fork {
        let mut f = Fork::placeholder();
        f.call_id = "b-call@outpost".to_string();
        f.local_tag = "ours".to_string();
        f.remote_tag = Some("theirs".to_string());
        f.local_uri = name("sip:100@pbx");
        f.remote_uri = name("sip:200@pbx");
        f.target = wire::parse_uri("sip:200@10.0.0.6:5060").expect("uri");
        f.peer = peer("10.0.0.6:5060");
        f.invite_cseq = 1;
        f.local_cseq = 1;
        f.state = ForkState::Answered;
        f.retired = false;
        f
    }

    /// The caller's leg: extension 100 at 10.0.0.5, our tag `pbx-tag`.
    pub(crate) fn leg_a() -> LegA {
        let text = "INVITE sip:200@pbx SIP/2.0\r\n\
             Via: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bKa\r\n\
             From: <sip:100@pbx>;tag=caller\r\n\
             To: <sip:200@pbx>\r\n\
             Call-ID: a-call\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:100@10.0.0.5:5062>\r\n\
             Content-Length: 0\r\n\r\n";
        let Ok(crate::sip::Message::Request(invite)) = wire::parse(text.as_bytes()) else {
            panic!("test INVITE does not parse");
        };
        LegA {
            call_id: "a-call".to_string(),
            remote_tag: "caller".to_string(),
            local_tag: "pbx-tag".to_string(),
            remote_uri: name("sip:100@pbx"),
            local_uri: name("sip:200@pbx"),
            target: wire::parse_uri("sip:100@10.0.0.5:5062").expect("uri"),
            peer: peer("10.0.0.5:5062"),
            invite_key: TxKey {
                branch: "z9hG4bKa".to_string(),
                method: Method::Invite,
                server: true,
            },
            invite,
            local_cseq: 0,
        }
    }

    /// Every message `sig` sends, as text.
    pub(crate) fn sent(sig: &mut Signalling) -> Vec<String> {
        std::iter::from_fn(|| sig.tx.poll_transmit())
            .map(|t| String::from_utf8_lossy(&t.bytes).into_owned())
            .collect()
    }

    #[test]
    fn the_invite_ack_is_kept_for_a_retransmitted_2xx_and_a_reinvite_ack_is_not() {
        let mut sig = signalling();
        let mut f = answered_fork();
        f.send_ack(&mut sig, 1, Vec::new(), None);
        let out = sent(&mut sig);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].starts_with("ACK sip:200@10.0.0.6:5060 SIP/2.0"),
            "{}",
            out[0]
        );
        assert!(out[0].contains("CSeq: 1 ACK"), "{}", out[0]);
        assert!(out[0].contains("tag=ours"), "{}", out[0]);
        assert!(out[0].contains("tag=theirs"), "{}", out[0]);
        let kept = f.ack.clone().expect("the INVITE's ACK is kept");
        assert_eq!(kept.headers.cseq.seq, 1);

        f.send_ack(
            &mut sig,
            3,
            b"v=0\r\n".to_vec(),
            Some("application/sdp".into()),
        );
        let out = sent(&mut sig);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].contains("CSeq: 3 ACK"), "{}", out[0]);
        assert!(out[0].ends_with("v=0\r\n"), "{}", out[0]);
        assert_eq!(
            f.ack.as_ref().map(|a| a.headers.cseq.seq),
            Some(1),
            "a re-INVITE's ACK does not replace the INVITE's"
        );
        assert_eq!(f.local_cseq, 1, "an ACK takes no CSeq of its own");
    }

    #[test]
    fn an_ack_to_the_caller_goes_to_its_contact_with_both_tags() {
        let mut sig = signalling();
        let a = leg_a();
        let ack = a.out_leg(2).send_ack(&mut sig, Vec::new(), None);
        assert_eq!(ack.headers.from.tag(), Some("pbx-tag"));
        assert_eq!(ack.headers.to.tag(), Some("caller"));
        let out = sent(&mut sig);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].starts_with("ACK sip:100@10.0.0.5:5062 SIP/2.0"),
            "{}",
            out[0]
        );
        assert!(out[0].contains("Call-ID: a-call"), "{}", out[0]);
        assert!(out[0].contains("CSeq: 2 ACK"), "{}", out[0]);
        assert_eq!(a.local_cseq, 0);
    }

    #[test]
    fn a_bye_takes_the_next_cseq_and_is_retransmitted_until_answered() {
        let mut sig = signalling();
        let mut a = leg_a();
        a.next_out_leg().send_bye(&mut sig, 0);
        assert_eq!(a.local_cseq, 1);
        let out = sent(&mut sig);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].starts_with("BYE sip:100@10.0.0.5:5062 SIP/2.0"),
            "{}",
            out[0]
        );
        assert!(out[0].contains("CSeq: 1 BYE"), "{}", out[0]);
        assert!(sig.clients.values().any(|r| matches!(r, ClientRole::Bye)));
        // Timer E on the virtual clock: the BYE goes again after T1 over UDP.
        assert_eq!(sig.tx.poll_timeout(), Some(500));
        sig.tx.handle_timeout(499);
        assert!(sent(&mut sig).is_empty());
        sig.tx.handle_timeout(500);
        let again = sent(&mut sig);
        assert_eq!(again, out, "the same BYE is retransmitted");

        let mut f = answered_fork();
        f.next_out_leg().send_bye(&mut sig, 500);
        let out = sent(&mut sig);
        assert!(out[0].contains("CSeq: 2 BYE"), "{}", out[0]);
        assert_eq!(f.local_cseq, 2);
    }
}

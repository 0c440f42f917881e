//! A call's state: the caller's leg (A), the forks that ring the callee's phones (leg B),
//! what Outpost itself does with the caller (an [`App`]), and the roles of the client
//! transactions the endpoint starts.
//!
//! These are the records [`super::Endpoint`] keeps per call; the methods here answer
//! questions about one call and never send anything.

use std::net::SocketAddr;

use crate::media::anchor::CallMedia;
use crate::media::session::Leg;
use crate::sip::transaction::TxKey;
use crate::sip::{Method, NameAddr, Peer, Request, Transport, Uri};
use crate::Millis;

use super::ivr::MenuSession;
use super::routing;
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
            auth_tries: 0,
            trunk_invite: None,
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
    pub(super) plan: routing::RingPlan,
    /// Next step of the plan (next group member, next trunk when one stays silent).
    pub(super) step_deadline: Option<Millis>,
    /// The toll-fraud gate allowed this call: report its end.
    pub(super) gate: Option<routing::GateTicket>,
    /// Forwarding and transfer hops so far (loop guard).
    pub(super) hops: u8,
}

impl Call {
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
#[derive(Debug, Clone)]
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
    /// The mailbox owner listens to messages.
    Access(AccessSession),
}

/// The INVITE that brings a new party onto leg A (the caller transferred the callee).
#[derive(Debug)]
pub(super) struct PendingLegA {
    pub(super) call_id: String,
    pub(super) local_tag: String,
    pub(super) local_uri: NameAddr,
    pub(super) remote_uri: NameAddr,
    pub(super) target: Uri,
    pub(super) peer: Peer,
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
}

/// Where a call came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Origin {
    /// An authenticated extension.
    Extension,
    /// A provider, on this trunk.
    Trunk(usize),
}

/// Where and as what a request goes out on one leg of a dialog.
#[derive(Debug)]
pub(super) struct OutLeg {
    /// True when the request goes to leg B (it came from the caller).
    pub(super) to_b: bool,
    pub(super) peer: Peer,
    pub(super) target: Uri,
    pub(super) from: NameAddr,
    pub(super) to: NameAddr,
    pub(super) call_id: String,
    pub(super) cseq: u32,
}

/// What a client transaction belongs to.
#[derive(Debug, Clone)]
pub(super) enum ClientRole {
    Invite {
        call: u64,
        fork: usize,
    },
    Cancel,
    Bye,
    Relay {
        call: u64,
        relay: u64,
    },
    /// A NOTIFY about a REFER's progress.
    Notify,
    /// The INVITE to a transfer target that takes over leg A.
    NewLegA {
        call: u64,
    },
    /// A re-INVITE Outpost sent on its own to fork `fork` (attended transfer).
    Reoffer {
        call: u64,
        fork: usize,
    },
    /// A re-INVITE that takes the caller off hold after an attended transfer.
    ResumeA {
        call: u64,
    },
    /// A trunk's registration or health ping.
    Trunk {
        trunk: usize,
        purpose: crate::trunk::Purpose,
    },
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

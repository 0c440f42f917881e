//! One side of a dialog as Outpost's next request there goes out: Request-URI, From and
//! To with their tags, Call-ID, CSeq, and where it is sent. Each leg's record ([`super::call`])
//! makes one; the in-dialog requests (ACK, BYE, re-INVITE, NOTIFY) are built from it.

use crate::sip::{Contact, Method, NameAddr, Peer, Request, Uri};
use crate::Millis;

use super::signalling::{ClientRole, Signalling};

/// Where and as what a request goes out on one leg of a dialog.
#[derive(Debug, Clone)]
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

impl OutLeg {
    /// A request of one side of a dialog: From is our URI with our tag, To theirs with
    /// their tag once they have one.
    pub(super) fn in_dialog(
        to_b: bool,
        peer: Peer,
        target: &Uri,
        (local_uri, local_tag): (&NameAddr, &String),
        (remote_uri, remote_tag): (&NameAddr, Option<&String>),
        call_id: &str,
        cseq: u32,
    ) -> OutLeg {
        let mut from = local_uri.clone();
        from.params.set("tag", Some(local_tag.clone()));
        let mut to = remote_uri.clone();
        if let Some(tag) = remote_tag {
            to.params.set("tag", Some(tag.clone()));
        }
        OutLeg {
            to_b,
            peer,
            target: target.clone(),
            from,
            to,
            call_id: call_id.to_owned(),
            cseq,
        }
    }

    /// A request of `method` on this leg, without a body (takes a branch from `sig`).
    pub(super) fn request(self, sig: &mut Signalling, method: Method) -> Request {
        let headers = sig.request_headers(
            self.peer,
            self.from,
            self.to,
            self.call_id,
            self.cseq,
            method.clone(),
        );
        Request {
            method,
            uri: self.target,
            headers,
            body: Vec::new(),
        }
    }

    /// Sends an ACK on this leg (outside any transaction, RFC 3261 §13.2.2.4) and returns it.
    pub(super) fn send_ack(
        self,
        sig: &mut Signalling,
        body: Vec<u8>,
        content_type: Option<String>,
    ) -> Request {
        let peer = self.peer;
        let mut ack = self.request(sig, Method::Ack);
        ack.headers.content_type = content_type;
        ack.body = body;
        sig.tx.send_stateless_request(&ack, peer);
        ack
    }

    /// Sends a re-INVITE on this leg offering `offer` (none when empty); `role` handles
    /// its answer.
    pub(super) fn send_reinvite(
        self,
        sig: &mut Signalling,
        now: Millis,
        offer: Vec<u8>,
        role: ClientRole,
    ) {
        let peer = self.peer;
        let mut reinvite = self.request(sig, Method::Invite);
        reinvite.headers.contact = vec![Contact::Addr(sig.our_contact(peer, None))];
        reinvite.headers.content_type = (!offer.is_empty()).then(|| "application/sdp".to_string());
        reinvite.body = offer;
        sig.send_request(now, reinvite, peer, role);
    }

    /// Hangs up this leg.
    pub(super) fn send_bye(self, sig: &mut Signalling, now: Millis) {
        let peer = self.peer;
        let bye = self.request(sig, Method::Bye);
        sig.send_request(now, bye, peer, ClientRole::Bye);
    }
}

//! What the phone that asked for a blind transfer (the referrer) is told while Outpost
//! rings the target: the REFER's implicit subscription (RFC 3515 §2.4.4–2.4.5) carries the
//! target's real progress as `message/sipfrag` NOTIFYs — `100 Trying` when the REFER is
//! accepted, `180 Ringing` once the target rings, then its final answer, which ends the
//! subscription. The referrer's dialog stays up meanwhile, as RFC 5589 §6 expects: the
//! referrer is hung up once the target has answered; when the target fails, the phone
//! learns why (busy, unavailable) and the call goes back to it, so it can take the held
//! party back. A referrer that hangs up first is simply told nothing more.

use crate::sip::{message, Contact, Method, Request};
use crate::Millis;

use super::outleg::OutLeg;
use super::signalling::{ClientRole, Signalling};

/// How long the referrer's subscription is said to last (`Subscription-State: active`):
/// longer than any ring timeout, so it never ends before the final NOTIFY.
const SUBSCRIPTION_SECS: u32 = 180;

/// Which side of the call the referrer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// The caller transferred its callee.
    A,
    /// The callee (this fork of leg B) transferred its caller.
    Fork(usize),
}

/// The referrer of a blind transfer in progress, with its dialog.
#[derive(Debug)]
pub(super) struct Referrer {
    /// Its dialog as Outpost's next request there would go (CSeq advanced per request).
    leg: OutLeg,
    pub(super) side: Side,
    /// Our tag in its dialog: its requests are recognised by Call-ID and this.
    local_tag: String,
    /// The highest status told so far (each provisional is told once, in order).
    told: u16,
    /// The last SDP the referrer's phone sent: its media, should the call come back.
    sdp: Vec<u8>,
}

impl Referrer {
    /// The referrer whose dialog is `leg` (with the last CSeq Outpost used there), our tag
    /// `local_tag` there. Tells it `100 Trying` at once (the REFER's 202 has been sent).
    pub(super) fn accepted(
        sig: &mut Signalling,
        now: Millis,
        leg: OutLeg,
        side: Side,
        local_tag: String,
        sdp: Vec<u8>,
    ) -> Referrer {
        let mut r = Referrer {
            leg,
            side,
            local_tag,
            told: 0,
            sdp,
        };
        r.progress(sig, now, 100);
        r
    }

    /// True when `req` belongs to the referrer's dialog.
    pub(super) fn owns(&self, req: &Request) -> bool {
        req.headers.call_id == self.leg.call_id
            && req.headers.to.tag().unwrap_or_default() == self.local_tag
    }

    /// Tells a provisional status of the target (100, 180, 183); each once, in order.
    pub(super) fn progress(&mut self, sig: &mut Signalling, now: Millis, status: u16) {
        if status <= self.told || !(100..200).contains(&status) {
            return;
        }
        self.told = status;
        let leg = self.next_leg();
        notify(
            sig,
            now,
            leg,
            status,
            &format!("active;expires={SUBSCRIPTION_SECS}"),
        );
    }

    /// Tells the target's final status; the subscription ends with it.
    pub(super) fn finish(&mut self, sig: &mut Signalling, now: Millis, status: u16) {
        self.told = status;
        let leg = self.next_leg();
        notify(sig, now, leg, status, "terminated;reason=noresource");
    }

    /// Hangs up the referrer (after the target answered).
    pub(super) fn hang_up(mut self, sig: &mut Signalling, now: Millis) {
        self.next_leg().send_bye(sig, now);
    }

    /// The last SDP the referrer's phone sent.
    pub(super) fn sdp(&self) -> &[u8] {
        &self.sdp
    }

    /// The last CSeq Outpost used in the referrer's dialog: the leg's own counter must not
    /// fall behind it when the call goes back to the referrer.
    pub(super) fn last_cseq(&self) -> u32 {
        self.leg.cseq
    }

    fn next_leg(&mut self) -> OutLeg {
        self.leg.cseq = self.leg.cseq.saturating_add(1);
        self.leg.clone()
    }
}

/// A NOTIFY of the REFER's subscription carrying `status` as a sipfrag.
fn notify(sig: &mut Signalling, now: Millis, leg: OutLeg, status: u16, state: &str) {
    let peer = leg.peer;
    let mut notify = leg.request(sig, Method::Notify);
    notify.headers.push("Event", "refer");
    notify.headers.push("Subscription-State", state);
    notify.headers.contact = vec![Contact::Addr(sig.our_contact(peer, None))];
    notify.headers.content_type = Some("message/sipfrag;version=2.0".to_string());
    notify.body = format!("SIP/2.0 {status} {}\r\n", message::reason_phrase(status)).into_bytes();
    sig.send_request(now, notify, peer, ClientRole::Notify);
}

/// Tells the referrer of an attended transfer, which is complete when accepted, that it
/// succeeded: one NOTIFY with `200 OK` that ends the subscription.
pub(super) fn notify_done(sig: &mut Signalling, now: Millis, leg: OutLeg) {
    notify(sig, now, leg, 200, "terminated;reason=noresource");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::super::call::tests::{leg_a, sent, signalling};
    use super::*;

    #[test]
    fn the_referrer_hears_trying_then_ringing_once_then_the_final_answer() {
        let (mut sig, a) = (signalling(), leg_a());
        let leg = a.out_leg(a.local_cseq);
        let mut r = Referrer::accepted(&mut sig, 0, leg, Side::A, a.local_tag.clone(), Vec::new());
        r.progress(&mut sig, 1, 180);
        r.progress(&mut sig, 2, 180);
        r.progress(&mut sig, 3, 100);
        r.finish(&mut sig, 4, 486);
        let out = sent(&mut sig);
        assert_eq!(out.len(), 3, "{out:#?}");
        let cseqs: Vec<&str> = out
            .iter()
            .map(|m| m.lines().find(|l| l.starts_with("CSeq:")).unwrap())
            .collect();
        assert_eq!(
            cseqs,
            ["CSeq: 1 NOTIFY", "CSeq: 2 NOTIFY", "CSeq: 3 NOTIFY"]
        );
        assert!(
            out[0].contains("Subscription-State: active;expires=180"),
            "{}",
            out[0]
        );
        assert!(out[0].ends_with("SIP/2.0 100 Trying\r\n"), "{}", out[0]);
        assert!(out[1].ends_with("SIP/2.0 180 Ringing\r\n"), "{}", out[1]);
        assert!(
            out[2].contains("Subscription-State: terminated"),
            "{}",
            out[2]
        );
        assert!(out[2].ends_with("SIP/2.0 486 Busy Here\r\n"), "{}", out[2]);
        assert_eq!(r.last_cseq(), 3);
        r.hang_up(&mut sig, 5);
        let out = sent(&mut sig);
        assert!(
            out[0].starts_with("BYE sip:100@10.0.0.5:5062 "),
            "{}",
            out[0]
        );
        assert!(out[0].contains("CSeq: 4 BYE"), "{}", out[0]);
    }
}

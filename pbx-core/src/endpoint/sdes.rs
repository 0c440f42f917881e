//! SDES keys and the signalling transport (RFC 4568 §8.3): `a=crypto` keys may only travel
//! over a secure transport. Over UDP or TCP (unless `srtp_over_insecure` is set) an offer
//! that requires SRTP is refused, and every other body loses its keys before it is used or
//! passed on. The anchored path enforces the same in [`crate::media::anchor::CallMedia`].

use crate::media::sdp::{self, Sdp};
use crate::sip::Peer;
use crate::Millis;

/// Refusal log lines allowed per window: enough to diagnose a misconfigured phone, too
/// few for a flood of INVITEs to fill the log.
const LOG_LINES_PER_WINDOW: u32 = 5;
const LOG_WINDOW_MS: Millis = 60_000;

/// True if `body` is an SDP whose audio stream requires SRTP (`RTP/SAVP` or `RTP/SAVPF`).
pub(super) fn requires_srtp(body: &[u8]) -> bool {
    Sdp::parse(body)
        .ok()
        .and_then(|s| s.audio().map(|(_, m)| m.is_srtp()))
        .unwrap_or(false)
}

/// `body` without SDES keys and with plain RTP profiles. An SDP that does not parse passes
/// unchanged (it is refused or passed on as today; it carries no usable key of ours).
pub(super) fn without_sdes(body: &[u8]) -> Vec<u8> {
    match Sdp::parse(body) {
        Ok(mut s) if sdp::has_sdes(&s) || s.media.iter().any(|m| m.is_srtp()) => {
            sdp::strip_sdes(&mut s);
            s.emit()
        }
        _ => body.to_vec(),
    }
}

/// The log of SRTP offers refused for their transport, rate-limited (network-triggered).
#[derive(Debug, Default)]
pub(super) struct InsecureSrtpLog {
    window_start: Millis,
    logged: u32,
    suppressed: u64,
}

impl InsecureSrtpLog {
    /// Logs one refusal of an offer from `src`, unless this window's budget is spent.
    pub(super) fn note(&mut self, now: Millis, src: Peer) {
        if now.saturating_sub(self.window_start) >= LOG_WINDOW_MS {
            if self.suppressed > 0 {
                tracing::warn!(
                    suppressed = self.suppressed,
                    "more SRTP offers over insecure transports refused"
                );
            }
            self.window_start = now;
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged < LOG_LINES_PER_WINDOW {
            self.logged += 1;
            tracing::warn!(
                from = %src.addr,
                transport = src.transport.as_str(),
                "RTP/SAVP offer refused (488): SDES keys are only exchanged over TLS \
                 (media.srtp_over_insecure = false)"
            );
        } else {
            self.suppressed += 1;
        }
    }

    #[cfg(test)]
    fn counts(&self) -> (u32, u64) {
        (self.logged, self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::Transport;

    const SAVP: &str = "v=0\r\no=x 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\n\
        t=0 0\r\nm=audio 5000 RTP/SAVP 0\r\n\
        a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";

    #[test]
    fn keys_and_secure_profiles_are_removed() {
        assert!(requires_srtp(SAVP.as_bytes()));
        let plain = String::from_utf8(without_sdes(SAVP.as_bytes())).expect("UTF-8");
        assert!(plain.contains("m=audio 5000 RTP/AVP 0"), "{plain}");
        assert!(!plain.contains("crypto"), "{plain}");
        assert!(!requires_srtp(plain.as_bytes()));
    }

    #[test]
    fn refusal_lines_are_limited_per_window() {
        let src = Peer {
            transport: Transport::Udp,
            addr: "192.0.2.1:5060".parse().expect("address"),
        };
        let mut log = InsecureSrtpLog::default();
        for _ in 0..100 {
            log.note(1_000, src);
        }
        assert_eq!(log.counts(), (LOG_LINES_PER_WINDOW, 95));
        log.note(1_000 + LOG_WINDOW_MS, src);
        assert_eq!(log.counts(), (1, 0));
    }
}

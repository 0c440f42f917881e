//! Media: RTP/RTCP views, SDP offer/answer, G.711, RFC 4733 DTMF, and the commands and
//! events exchanged between the call core and the firmware's RTP relay.

pub mod anchor;
pub mod dtmf;
pub mod g711;
pub mod rtcp;
pub mod rtp;
pub mod sdp;
pub mod session;
pub mod srtp;

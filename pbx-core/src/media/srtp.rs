//! SRTP and SRTCP (RFC 3711) for the two crypto suites SDES phones offer (RFC 4568 §6.2):
//! `AES_CM_128_HMAC_SHA1_80` and `AES_CM_128_HMAC_SHA1_32`.
//!
//! One [`SrtpContext`] holds one master key and serves one direction of one leg: the relay
//! keeps an inbound context (the phone's key, to unprotect what it sends) and an outbound
//! one (our key, to protect what we send it). Decisions:
//! - key derivation rate 0 (the SDES default): session keys are derived once, at creation;
//! - no MKI (Outpost never offers one; a crypto line with an MKI is ignored by the SDP code);
//! - at most [`MAX_SSRCS`] streams per context, the least recently used one is forgotten
//!   when a new SSRC authenticates; an unauthenticated packet never creates state;
//! - a 128-packet replay window (RFC 3711 §3.3.2 asks for at least 64) on unprotect, and on
//!   protect too: a relayed duplicate is refused rather than encrypted twice with one
//!   keystream (a plain-RTP phone on the other leg could otherwise make us do that);
//! - the tag is checked (in constant time) before anything is decrypted or remembered;
//! - packets are rewritten in place in the caller's buffer; nothing allocates.

use std::fmt;

use aes::cipher::{BlockEncrypt, InnerIvInit, KeyInit, StreamCipher, StreamCipherCoreWrapper};
use aes::Aes128;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use thiserror::Error;

/// Length of an SDES master key (AES-128).
pub const MASTER_KEY_LEN: usize = 16;
/// Length of an SDES master salt.
pub const MASTER_SALT_LEN: usize = 14;
/// Master key followed by master salt, as carried base64-encoded in `a=crypto`.
pub const KEY_MATERIAL_LEN: usize = MASTER_KEY_LEN + MASTER_SALT_LEN;
/// Streams (SSRCs) one context keeps state for.
pub const MAX_SSRCS: usize = 8;
/// Packets the replay window covers behind the highest index seen.
pub const REPLAY_WINDOW: u64 = 128;
/// The most bytes protection adds to an RTP or RTCP packet (SRTCP index and 80-bit tag).
pub const MAX_TRAILER: usize = SRTCP_INDEX_LEN + TAG_80;

const TAG_80: usize = 10;
const TAG_32: usize = 4;
const SRTCP_INDEX_LEN: usize = 4;
const RTP_HEADER_LEN: usize = 12;
const RTCP_HEADER_LEN: usize = 8;
const AUTH_KEY_LEN: usize = 20;
/// SRTCP index space (31 bits; the top bit of the word is the E flag).
const SRTCP_INDEX_MASK: u32 = 0x7fff_ffff;

type HmacSha1 = Hmac<Sha1>;
type Aes128CtrCore = ctr::CtrCore<Aes128, ctr::flavors::Ctr128BE>;

/// An SDES crypto suite Outpost supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Suite {
    /// AES-128 counter mode, HMAC-SHA1 with an 80-bit tag.
    AesCm128HmacSha1_80,
    /// AES-128 counter mode, HMAC-SHA1 with a 32-bit tag on SRTP (80 bits on SRTCP).
    AesCm128HmacSha1_32,
}

impl Suite {
    /// The suite's name as written in `a=crypto` (RFC 4568 §6.2).
    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    /// The suite called `name` (exact, as RFC 4568 registers them), if supported.
    pub fn from_name(name: &str) -> Option<Suite> {
        match name {
            "AES_CM_128_HMAC_SHA1_80" => Some(Suite::AesCm128HmacSha1_80),
            "AES_CM_128_HMAC_SHA1_32" => Some(Suite::AesCm128HmacSha1_32),
            _ => None,
        }
    }

    /// Length of the SRTP authentication tag in bytes.
    pub fn rtp_tag_len(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 => TAG_80,
            Suite::AesCm128HmacSha1_32 => TAG_32,
        }
    }

    /// Length of the SRTCP authentication tag in bytes (80 bits for both suites).
    pub fn rtcp_tag_len(self) -> usize {
        TAG_80
    }
}

/// Why a packet could not be protected or unprotected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SrtpError {
    /// Shorter than its header plus trailer.
    #[error("packet too short")]
    TooShort,
    /// Not RTP/RTCP version 2, or the header runs past the end.
    #[error("malformed header")]
    Malformed,
    /// The buffer has no room for the trailer protection adds.
    #[error("buffer too small")]
    BufferTooSmall,
    /// The authentication tag does not match.
    #[error("authentication failed")]
    AuthFailed,
    /// The packet index was seen already or is behind the replay window.
    #[error("replayed packet")]
    Replay,
}

/// Session keys of one of SRTP or SRTCP.
#[derive(Clone)]
struct SessionKeys {
    cipher: Aes128,
    salt: [u8; MASTER_SALT_LEN],
    /// HMAC keyed once; cloned per packet.
    auth: HmacSha1,
}

impl SessionKeys {
    /// RFC 3711 §4.3: the keys for labels `label`, `label + 1`, `label + 2` (KDR 0).
    fn derive(master: &Aes128, master_salt: &[u8; MASTER_SALT_LEN], label: u8) -> Self {
        let mut enc = [0u8; MASTER_KEY_LEN];
        prf(master, master_salt, label, &mut enc);
        let mut auth = [0u8; AUTH_KEY_LEN];
        prf(master, master_salt, label + 1, &mut auth);
        let mut salt = [0u8; MASTER_SALT_LEN];
        prf(master, master_salt, label + 2, &mut salt);
        SessionKeys {
            cipher: Aes128::new(&enc.into()),
            salt,
            auth: <HmacSha1 as Mac>::new_from_slice(&auth)
                .expect("HMAC accepts keys of any length"),
        }
    }

    /// XORs the AES-CM keystream for (`ssrc`, `index`) into `data` (RFC 3711 §4.1.1).
    fn apply_keystream(&self, ssrc: u32, index: u64, data: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..MASTER_SALT_LEN].copy_from_slice(&self.salt);
        for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *b ^= s;
        }
        // The 48-bit index, shifted left by 16 bits.
        for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *b ^= s;
        }
        // The expanded key is copied, not re-expanded, per packet.
        let core = <Aes128CtrCore as InnerIvInit>::inner_iv_init(self.cipher.clone(), &iv.into());
        StreamCipherCoreWrapper::from_core(core).apply_keystream(data);
    }

    /// The full HMAC-SHA1 of `parts` in order.
    fn mac(&self, parts: &[&[u8]]) -> HmacSha1 {
        let mut mac = self.auth.clone();
        for p in parts {
            mac.update(p);
        }
        mac
    }
}

/// The key derivation PRF: AES-CM keyed with the master key, IV = (salt ^ label<<48)<<16.
fn prf(master: &Aes128, master_salt: &[u8; MASTER_SALT_LEN], label: u8, out: &mut [u8]) {
    let mut x = [0u8; 16];
    x[..MASTER_SALT_LEN].copy_from_slice(master_salt);
    x[7] ^= label;
    for (i, chunk) in out.chunks_mut(16).enumerate() {
        let mut block = x;
        // Fewer than 2^16 blocks are ever needed: the counter is the low 16 bits.
        let counter = u16::try_from(i).expect("at most two blocks per key");
        block[14..].copy_from_slice(&counter.to_be_bytes());
        let mut block = block.into();
        master.encrypt_block(&mut block);
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
}

/// A sliding window over packet indices: the highest seen and a bitmap behind it.
#[derive(Debug, Clone, Copy, Default)]
struct ReplayWindow {
    /// Highest index accepted (valid when `bits != 0`).
    top: u64,
    /// Bit `n` set: index `top - n` was accepted.
    bits: u128,
}

impl ReplayWindow {
    /// Whether `index` is new (not accepted before, not behind the window).
    fn check(&self, index: u64) -> Result<(), SrtpError> {
        if self.bits == 0 || index > self.top {
            return Ok(());
        }
        let behind = self.top - index;
        if behind >= REPLAY_WINDOW || self.bits & (1u128 << behind) != 0 {
            return Err(SrtpError::Replay);
        }
        Ok(())
    }

    /// Marks `index` as accepted (after `check` and authentication passed).
    fn accept(&mut self, index: u64) {
        if self.bits == 0 {
            self.top = index;
            self.bits = 1;
        } else if index > self.top {
            let ahead = index - self.top;
            self.bits = if ahead >= REPLAY_WINDOW {
                1
            } else {
                (self.bits << ahead) | 1
            };
            self.top = index;
        } else {
            self.bits |= 1u128 << (self.top - index);
        }
    }
}

/// What one context remembers about one SSRC.
#[derive(Debug, Clone, Copy)]
struct Stream {
    ssrc: u32,
    /// Recency stamp for eviction.
    used: u64,
    /// SRTP indices (ROC << 16 | SEQ).
    rtp: ReplayWindow,
    /// SRTCP indices received.
    rtcp: ReplayWindow,
    /// The next SRTCP index to send.
    rtcp_next: u32,
}

impl Stream {
    fn new(ssrc: u32) -> Self {
        Stream {
            ssrc,
            used: 0,
            rtp: ReplayWindow::default(),
            rtcp: ReplayWindow::default(),
            rtcp_next: 0,
        }
    }

    /// RFC 3711 §3.3.1 / Appendix A: the index of a packet with sequence number `seq`,
    /// or `None` when it would fall before index 0 (then it can only be a replay).
    fn estimate_index(&self, seq: u16) -> Option<u64> {
        if self.rtp.bits == 0 {
            return Some(u64::from(seq));
        }
        let roc = self.rtp.top >> 16;
        let s_l = self.rtp.top & 0xffff;
        let seq64 = u64::from(seq);
        let v = if s_l < 0x8000 {
            if seq64 > s_l && seq64 - s_l > 0x8000 {
                roc.checked_sub(1)?
            } else {
                roc
            }
        } else if s_l - 0x8000 > seq64 {
            // The ROC is 32 bits: it wraps, as RFC 3711 has it (the key must be long retired).
            (roc + 1) & 0xffff_ffff
        } else {
            roc
        };
        Some((v << 16) | seq64)
    }
}

/// SRTP/SRTCP state of one master key in one direction.
#[derive(Clone)]
pub struct SrtpContext {
    suite: Suite,
    rtp: SessionKeys,
    rtcp: SessionKeys,
    streams: [Option<Stream>; MAX_SSRCS],
    clock: u64,
}

impl fmt::Debug for SrtpContext {
    // Keys never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpContext")
            .field("suite", &self.suite)
            .field("streams", &self.streams.iter().flatten().count())
            .finish_non_exhaustive()
    }
}

impl SrtpContext {
    /// A context for `suite` with `key` = master key (16 bytes) || master salt (14 bytes).
    pub fn new(suite: Suite, key: &[u8; KEY_MATERIAL_LEN]) -> Self {
        let (master_key, master_salt) = key.split_at(MASTER_KEY_LEN);
        let master_key: [u8; MASTER_KEY_LEN] = master_key
            .try_into()
            .expect("the key material starts with 16 key bytes");
        let master_salt: [u8; MASTER_SALT_LEN] = master_salt
            .try_into()
            .expect("the key material ends with 14 salt bytes");
        let master = Aes128::new(&master_key.into());
        SrtpContext {
            suite,
            rtp: SessionKeys::derive(&master, &master_salt, 0),
            rtcp: SessionKeys::derive(&master, &master_salt, 3),
            streams: [None; MAX_SSRCS],
            clock: 0,
        }
    }

    /// The context's crypto suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Encrypts and authenticates the RTP packet in `buf[..len]` in place; returns the
    /// SRTP length (`len` plus the tag, which must fit in `buf`).
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let tag_len = self.suite.rtp_tag_len();
        let packet = buf.get(..len).ok_or(SrtpError::BufferTooSmall)?;
        let header_len = rtp_header_len(packet)?;
        let total = len.checked_add(tag_len).ok_or(SrtpError::BufferTooSmall)?;
        if buf.len() < total {
            return Err(SrtpError::BufferTooSmall);
        }
        let (ssrc, seq) = rtp_ids(buf);
        let (slot, stream) = self.stream(ssrc);
        let index = stream.estimate_index(seq).ok_or(SrtpError::Replay)?;
        stream.rtp.check(index)?;
        let roc = roc_of(index);
        self.rtp
            .apply_keystream(ssrc, index, &mut buf[header_len..len]);
        let tag = self.rtp.mac(&[&buf[..len], &roc.to_be_bytes()]).finalize();
        buf[len..total].copy_from_slice(&tag.into_bytes()[..tag_len]);
        let mut stream = stream;
        stream.rtp.accept(index);
        self.remember(slot, stream);
        Ok(total)
    }

    /// Authenticates and decrypts the SRTP packet `buf` in place; returns the length of
    /// the RTP packet now at the start of `buf`. Nothing is changed on error.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_len = self.suite.rtp_tag_len();
        let len = buf
            .len()
            .checked_sub(tag_len)
            .filter(|&l| l >= RTP_HEADER_LEN)
            .ok_or(SrtpError::TooShort)?;
        let header_len = rtp_header_len(&buf[..len])?;
        let (ssrc, seq) = rtp_ids(buf);
        let (slot, stream) = self.stream(ssrc);
        let index = stream.estimate_index(seq).ok_or(SrtpError::Replay)?;
        stream.rtp.check(index)?;
        let roc = roc_of(index);
        let (packet, tag) = buf.split_at_mut(len);
        self.rtp
            .mac(&[packet, &roc.to_be_bytes()])
            .verify_truncated_left(tag)
            .map_err(|_| SrtpError::AuthFailed)?;
        self.rtp
            .apply_keystream(ssrc, index, &mut packet[header_len..]);
        let mut stream = stream;
        stream.rtp.accept(index);
        self.remember(slot, stream);
        Ok(len)
    }

    /// Encrypts and authenticates the (compound) RTCP packet in `buf[..len]` in place;
    /// returns the SRTCP length (`len` plus index and tag, which must fit in `buf`).
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let tag_len = self.suite.rtcp_tag_len();
        let packet = buf.get(..len).ok_or(SrtpError::BufferTooSmall)?;
        check_rtcp_header(packet)?;
        let total = len
            .checked_add(SRTCP_INDEX_LEN + tag_len)
            .ok_or(SrtpError::BufferTooSmall)?;
        if buf.len() < total {
            return Err(SrtpError::BufferTooSmall);
        }
        let ssrc = rtcp_ssrc(buf);
        let (slot, mut stream) = self.stream(ssrc);
        let index = stream.rtcp_next;
        stream.rtcp_next = (index + 1) & SRTCP_INDEX_MASK;
        self.rtcp
            .apply_keystream(ssrc, u64::from(index), &mut buf[RTCP_HEADER_LEN..len]);
        let e_index = (index | !SRTCP_INDEX_MASK).to_be_bytes();
        buf[len..len + SRTCP_INDEX_LEN].copy_from_slice(&e_index);
        let tag = self.rtcp.mac(&[&buf[..len + SRTCP_INDEX_LEN]]).finalize();
        buf[len + SRTCP_INDEX_LEN..total].copy_from_slice(&tag.into_bytes()[..tag_len]);
        self.remember(slot, stream);
        Ok(total)
    }

    /// Authenticates and decrypts the SRTCP packet `buf` in place; returns the length of
    /// the RTCP packet now at the start of `buf`. Nothing is changed on error.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_len = self.suite.rtcp_tag_len();
        let authed = buf.len().checked_sub(tag_len).ok_or(SrtpError::TooShort)?;
        let len = authed
            .checked_sub(SRTCP_INDEX_LEN)
            .filter(|&l| l >= RTCP_HEADER_LEN)
            .ok_or(SrtpError::TooShort)?;
        check_rtcp_header(&buf[..len])?;
        let ssrc = rtcp_ssrc(buf);
        let mut word = [0u8; SRTCP_INDEX_LEN];
        word.copy_from_slice(&buf[len..authed]);
        let word = u32::from_be_bytes(word);
        let encrypted = word & !SRTCP_INDEX_MASK != 0;
        let index = u64::from(word & SRTCP_INDEX_MASK);
        let (slot, stream) = self.stream(ssrc);
        stream.rtcp.check(index)?;
        let (packet, tag) = buf.split_at_mut(authed);
        self.rtcp
            .mac(&[packet])
            .verify_truncated_left(tag)
            .map_err(|_| SrtpError::AuthFailed)?;
        if encrypted {
            self.rtcp
                .apply_keystream(ssrc, index, &mut packet[RTCP_HEADER_LEN..len]);
        }
        let mut stream = stream;
        stream.rtcp.accept(index);
        self.remember(slot, stream);
        Ok(len)
    }

    /// The state of `ssrc` (a fresh one if unknown) and where it lives or would go.
    fn stream(&self, ssrc: u32) -> (usize, Stream) {
        if let Some(i) = self
            .streams
            .iter()
            .position(|s| s.is_some_and(|s| s.ssrc == ssrc))
        {
            let stream = self.streams[i].expect("position found a stream");
            return (i, stream);
        }
        let slot = self
            .streams
            .iter()
            .position(Option::is_none)
            .unwrap_or_else(|| {
                // All taken: the least recently used stream makes room.
                self.streams
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.map_or(0, |s| s.used))
                    .map_or(0, |(i, _)| i)
            });
        (slot, Stream::new(ssrc))
    }

    /// Stores `stream` (after a packet passed) in `slot`.
    fn remember(&mut self, slot: usize, mut stream: Stream) {
        self.clock += 1;
        stream.used = self.clock;
        if let Some(s) = self.streams.get_mut(slot) {
            *s = Some(stream);
        }
    }
}

/// The ROC part of a 48-bit packet index.
fn roc_of(index: u64) -> u32 {
    u32::try_from(index >> 16).expect("a packet index has 48 bits")
}

/// Length of the RTP header (fixed part, CSRCs, extension) of `packet`, checked.
fn rtp_header_len(packet: &[u8]) -> Result<usize, SrtpError> {
    if packet.len() < RTP_HEADER_LEN {
        return Err(SrtpError::TooShort);
    }
    if packet[0] >> 6 != 2 {
        return Err(SrtpError::Malformed);
    }
    let mut len = RTP_HEADER_LEN + 4 * usize::from(packet[0] & 0x0f);
    if packet[0] & 0x10 != 0 {
        let ext = packet.get(len..len + 4).ok_or(SrtpError::Malformed)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    if len > packet.len() {
        return Err(SrtpError::Malformed);
    }
    Ok(len)
}

/// SSRC and sequence number of an RTP packet whose header was checked.
fn rtp_ids(packet: &[u8]) -> (u32, u16) {
    let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
    let seq = u16::from_be_bytes([packet[2], packet[3]]);
    (ssrc, seq)
}

/// Checks the first RTCP header of a compound packet (version 2, at least 8 bytes).
fn check_rtcp_header(packet: &[u8]) -> Result<(), SrtpError> {
    if packet.len() < RTCP_HEADER_LEN {
        return Err(SrtpError::TooShort);
    }
    if packet[0] >> 6 != 2 {
        return Err(SrtpError::Malformed);
    }
    Ok(())
}

/// The sender SSRC of an RTCP packet whose header was checked.
fn rtcp_ssrc(packet: &[u8]) -> u32 {
    u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        hex::decode(s).expect("test vector is hex")
    }

    fn key(seed: u8) -> [u8; KEY_MATERIAL_LEN] {
        std::array::from_fn(|i| seed.wrapping_add(u8::try_from(i).expect("small")))
    }

    fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0x00];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    /// Protects `packet` with `ctx`, returning the SRTP bytes.
    fn protect(ctx: &mut SrtpContext, packet: &[u8]) -> Vec<u8> {
        let mut buf = packet.to_vec();
        buf.resize(packet.len() + MAX_TRAILER, 0);
        let n = ctx.protect_rtp(&mut buf, packet.len()).expect("protects");
        buf.truncate(n);
        buf
    }

    fn unprotect(ctx: &mut SrtpContext, srtp: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut buf = srtp.to_vec();
        let n = ctx.unprotect_rtp(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    #[test]
    fn aes_cm_keystream_matches_rfc3711_b2() {
        // B.2: session key, session salt; SSRC 0, index 0.
        let keys = SessionKeys {
            cipher: Aes128::new(
                &<[u8; 16]>::try_from(unhex("2B7E151628AED2A6ABF7158809CF4F3C"))
                    .expect("16")
                    .into(),
            ),
            salt: unhex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD")
                .try_into()
                .expect("14"),
            auth: <HmacSha1 as Mac>::new_from_slice(&[0; 20]).expect("any key"),
        };
        let mut stream = [0u8; 48];
        keys.apply_keystream(0, 0, &mut stream);
        let expected = unhex(
            "E03EAD0935C95E80E166B16DD92B4EB4 D23513162B02D0F72A43A2FE4A5F97AB \
             41E95B3BB0A2E8DD477901E4FCA894C0",
        );
        assert_eq!(stream.to_vec(), expected);
    }

    #[test]
    fn key_derivation_matches_rfc3711_b3() {
        let master_key: [u8; 16] = unhex("E1F97A0D3E018BE0D64FA32C06DE4139")
            .try_into()
            .expect("16");
        let salt: [u8; 14] = unhex("0EC675AD498AFEEBB6960B3AABE6")
            .try_into()
            .expect("14");
        let master = Aes128::new(&master_key.into());
        let mut enc = [0u8; 16];
        prf(&master, &salt, 0, &mut enc);
        assert_eq!(enc.to_vec(), unhex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut session_salt = [0u8; 14];
        prf(&master, &salt, 2, &mut session_salt);
        assert_eq!(session_salt.to_vec(), unhex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut auth = [0u8; 20];
        prf(&master, &salt, 1, &mut auth);
        assert_eq!(
            auth.to_vec(),
            unhex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
    }

    #[test]
    fn rtp_round_trips_for_both_suites_and_hides_the_payload() {
        for suite in [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32] {
            let mut tx = SrtpContext::new(suite, &key(1));
            let mut rx = SrtpContext::new(suite, &key(1));
            for seq in [1000u16, 1001, 1003, 1002] {
                let plain = rtp(seq, 0x1234_5678, b"hello, srtp payload");
                let srtp = protect(&mut tx, &plain);
                assert_eq!(srtp.len(), plain.len() + suite.rtp_tag_len());
                assert_eq!(srtp[..12], plain[..12], "the header stays in clear");
                assert_ne!(
                    srtp[12..plain.len()],
                    plain[12..],
                    "the payload is encrypted"
                );
                assert_eq!(unprotect(&mut rx, &srtp), Ok(plain));
            }
        }
    }

    #[test]
    fn a_header_with_csrcs_and_extension_stays_in_clear() {
        let mut tx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &key(3));
        let mut rx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &key(3));
        let mut plain = vec![0x91, 0x00, 0, 7, 0, 0, 0, 1, 0, 0, 0, 9];
        plain.extend_from_slice(&[1, 2, 3, 4]); // CSRC
        plain.extend_from_slice(&[0xbe, 0xde, 0, 1, 5, 6, 7, 8]); // extension, 1 word
        plain.extend_from_slice(b"voice");
        let srtp = protect(&mut tx, &plain);
        assert_eq!(srtp[..24], plain[..24]);
        assert_eq!(unprotect(&mut rx, &srtp), Ok(plain));
    }

    #[test]
    fn a_tampered_packet_or_wrong_key_fails_authentication_and_changes_nothing() {
        let mut tx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &key(1));
        let mut rx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &key(1));
        let mut wrong = SrtpContext::new(Suite::AesCm128HmacSha1_80, &key(2));
        let plain = rtp(5, 42, b"payload");
        let srtp = protect(&mut tx, &plain);
        for i in 0..srtp.len() {
            let mut bad = srtp.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                unprotect(&mut rx, &bad),
                Err(SrtpError::AuthFailed),
                "byte {i}"
            );
        }
        assert_eq!(unprotect(&mut wrong, &srtp), Err(SrtpError::AuthFailed));
        // The failures left no trace: the genuine packet still passes.
        assert_eq!(unprotect(&mut rx, &srtp), Ok(plain));
    }

    #[test]
    fn a_replayed_or_too_old_packet_is_refused() {
        let mut tx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &key(1));
        let mut rx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &key(1));
        let first = protect(&mut tx, &rtp(10, 7, b"x"));
        assert!(unprotect(&mut rx, &first).is_ok());
        assert_eq!(unprotect(&mut rx, &first), Err(SrtpError::Replay));
        for seq in 11..=400u16 {
            let p = protect(&mut tx, &rtp(seq, 7, b"x"));
            assert!(unprotect(&mut rx, &p).is_ok());
        }
        // Seq 10 is now 390 behind: outside the window even with a fresh protection.
        let mut tx2 = SrtpContext::new(Suite::AesCm128HmacSha1_80, &key(1));
        let old = protect(&mut tx2, &rtp(200, 7, b"x"));
        assert_eq!(unprotect(&mut rx, &old), Err(SrtpError::Replay));
        // Inside the window, out of order but new: accepted.
        let mut rx2 = SrtpContext::new(Suite::AesCm128HmacSha1_80, &key(1));
        let mut tx3 = SrtpContext::new(Suite::AesCm128HmacSha1_80, &key(1));
        let a = protect(&mut tx3, &rtp(100, 7, b"a"));
        let b = protect(&mut tx3, &rtp(150, 7, b"b"));
        assert!(unprotect(&mut rx2, &b).is_ok());
        assert!(unprotect(&mut rx2, &a).is_ok());
        // Protecting the same index twice is refused (one keystream, one plaintext).
        assert_eq!(
            tx3.protect_rtp(
                &mut rtp(150, 7, b"c")
                    .into_iter()
                    .chain([0; 10])
                    .collect::<Vec<_>>(),
                13
            ),
            Err(SrtpError::Replay)
        );
    }

    #[test]
    fn the_rollover_counter_advances_when_the_sequence_number_wraps() {
        let mut tx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &key(9));
        let mut rx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &key(9));
        for seq in [65533u16, 65534, 65535, 0, 1, 2] {
            let plain = rtp(seq, 99, b"wrap");
            let srtp = protect(&mut tx, &plain);
            assert_eq!(unprotect(&mut rx, &srtp), Ok(plain), "seq {seq}");
        }
        let stream = rx.stream(99).1;
        assert_eq!(stream.rtp.top, (1 << 16) | 2, "ROC 1, SEQ 2");
        // A receiver that kept ROC 0 would fail: the ROC is in the tag.
        let mut fresh = SrtpContext::new(Suite::AesCm128HmacSha1_80, &key(9));
        let late = protect(&mut tx, &rtp(3, 99, b"wrap"));
        assert_eq!(unprotect(&mut fresh, &late), Err(SrtpError::AuthFailed));
        // A straggler from before the wrap still maps to ROC 0.
        let mut tx_old = SrtpContext::new(Suite::AesCm128HmacSha1_80, &key(9));
        let straggler = protect(&mut tx_old, &rtp(65530, 99, b"old"));
        assert_eq!(unprotect(&mut rx, &straggler), Ok(rtp(65530, 99, b"old")));
    }

    #[test]
    fn srtcp_round_trips_with_the_e_bit_and_refuses_replays() {
        for suite in [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32] {
            let mut tx = SrtpContext::new(suite, &key(4));
            let mut rx = SrtpContext::new(suite, &key(4));
            // A receiver report: V=2, RC=0, PT=201, length 1, SSRC; plus an SDES-ish tail.
            let plain = [0x80, 201, 0, 1, 0, 0, 0, 77, 0x81, 202, 0, 0];
            let mut seen = Vec::new();
            for expected_index in 0u32..3 {
                let mut buf = plain.to_vec();
                buf.resize(plain.len() + MAX_TRAILER, 0);
                let n = tx.protect_rtcp(&mut buf, plain.len()).expect("protects");
                assert_eq!(
                    n,
                    plain.len() + 4 + 10,
                    "SRTCP tag is 80 bits for {suite:?}"
                );
                buf.truncate(n);
                assert_eq!(buf[..8], plain[..8]);
                assert_ne!(buf[8..12], plain[8..]);
                let word = u32::from_be_bytes(buf[12..16].try_into().expect("4"));
                assert_eq!(word, 0x8000_0000 | expected_index);
                seen.push(buf.clone());
                let m = rx.unprotect_rtcp(&mut buf).expect("unprotects");
                assert_eq!(buf[..m], plain);
            }
            let mut again = seen[1].clone();
            assert_eq!(rx.unprotect_rtcp(&mut again), Err(SrtpError::Replay));
            let mut bad = plain.to_vec();
            bad.resize(plain.len() + MAX_TRAILER, 0);
            let n = tx.protect_rtcp(&mut bad, plain.len()).expect("protects");
            bad.truncate(n);
            bad[9] ^= 0x40;
            assert_eq!(rx.unprotect_rtcp(&mut bad), Err(SrtpError::AuthFailed));
        }
    }

    #[test]
    fn garbage_and_short_packets_are_errors_not_panics() {
        let mut ctx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &key(1));
        for len in 0..40 {
            let mut junk = vec![0x80u8; len];
            assert!(ctx.unprotect_rtp(&mut junk).is_err());
            let mut junk = vec![0x9fu8; len];
            assert!(ctx.unprotect_rtp(&mut junk).is_err());
            assert!(ctx.unprotect_rtcp(&mut junk).is_err());
        }
        let mut no_room = rtp(1, 1, b"abc");
        let n = no_room.len();
        assert_eq!(
            ctx.protect_rtp(&mut no_room, n),
            Err(SrtpError::BufferTooSmall)
        );
        assert_eq!(
            ctx.protect_rtp(&mut no_room, n + 1),
            Err(SrtpError::BufferTooSmall)
        );
    }

    #[test]
    fn ssrcs_beyond_the_bound_evict_the_least_recently_used() {
        let mut tx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &key(5));
        let mut rx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &key(5));
        for ssrc in 0..20u32 {
            let p = protect(&mut tx, &rtp(1, ssrc, b"s"));
            assert!(unprotect(&mut rx, &p).is_ok());
        }
        assert_eq!(rx.streams.iter().flatten().count(), MAX_SSRCS);
        assert!(rx.streams.iter().flatten().any(|s| s.ssrc == 19));
        assert!(!rx.streams.iter().flatten().any(|s| s.ssrc == 0));
    }

    #[test]
    fn debug_output_shows_no_key_material() {
        let ctx = SrtpContext::new(Suite::AesCm128HmacSha1_80, &[0xab; 30]);
        let shown = format!("{ctx:?}");
        assert!(!shown.to_lowercase().contains("ab, "), "{shown}");
        assert!(shown.contains("AesCm128HmacSha1_80"));
    }
}

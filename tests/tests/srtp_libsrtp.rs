//! Our SRTP (pbx-core `media::srtp`) against an independent implementation: Debian's
//! libsrtp2, driven by `tests/libsrtp/srtp-peer.c`, compiled here with the system `cc`
//! (tests/run-all installs `libsrtp2-dev`). For both crypto suites, with the same master
//! key and salt: libsrtp's SRTP packets are byte-for-byte ours, across a sequence number
//! wrap (65535 → 0: the rollover counter becomes 1), for two SSRCs, a header with CSRCs
//! and an extension, and payloads of 0 to 1000 bytes; each side unprotects the other's
//! packets to the original; a flipped bit is refused by both. SRTCP (80-bit tag, E flag
//! and index) likewise, byte for byte at the same index. The RFC 3711 appendix B vectors
//! are unit tests in pbx-core (`aes_cm_keystream_matches_rfc3711_b2`,
//! `key_derivation_matches_rfc3711_b3`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use outpost_tests::{run_with_input, run_with_timeout, workspace_root};
use pbx_core::media::srtp::{SrtpContext, SrtpError, Suite, KEY_MATERIAL_LEN, MAX_TRAILER};

const KEY: [u8; KEY_MATERIAL_LEN] = [
    0xe1, 0xf9, 0x7a, 0x0d, 0x3e, 0x01, 0x8b, 0xe0, 0xd6, 0x4f, 0xa3, 0x2c, 0x06, 0xde, 0x41,
    0x39, // master key
    0x0e, 0xc6, 0x75, 0xad, 0x49, 0x8a, 0xfe, 0xeb, 0xb6, 0x96, 0x0b, 0x3a, 0xab, 0xe6,
];
const SSRC_A: u32 = 0xdeca_fbad;
const SSRC_B: u32 = 0x0102_0304;
const PEER_LIMIT: Duration = Duration::from_secs(20);

/// Compiles srtp-peer into `dir`; returns its path.
fn build_peer(dir: &Path) -> PathBuf {
    let source = workspace_root().join("tests/libsrtp/srtp-peer.c");
    let exe = dir.join("srtp-peer");
    let out = run_with_timeout(
        Command::new("cc")
            .args(["-O2", "-Wall", "-o"])
            .arg(&exe)
            .arg(&source)
            .arg("-lsrtp2"),
        Duration::from_secs(60),
    );
    assert_eq!(
        out.code,
        Some(0),
        "cc {} -lsrtp2 failed (apt-get install gcc libsrtp2-dev; tests/run-all does): {out:?}",
        source.display()
    );
    exe
}

/// Runs srtp-peer with `suite` over `commands` (`(command char, packet)`); its answers:
/// `Ok(bytes)` or `Err(libsrtp status)`.
fn libsrtp(
    peer: &Path,
    dir: &Path,
    suite: Suite,
    commands: &[(char, Vec<u8>)],
) -> Vec<Result<Vec<u8>, i32>> {
    let input = dir.join(format!("input-{}", suite.name()));
    let text: String = commands
        .iter()
        .map(|(c, p)| format!("{c} {}\n", hex::encode(p)))
        .collect();
    fs::write(&input, text).expect("peer input");
    let tag = match suite {
        Suite::AesCm128HmacSha1_80 => "80",
        Suite::AesCm128HmacSha1_32 => "32",
    };
    let out = run_with_input(
        Command::new(peer).arg(tag).arg(hex::encode(KEY)),
        Stdio::from(fs::File::open(&input).expect("open input")),
        PEER_LIMIT,
    );
    assert_eq!(out.code, Some(0), "srtp-peer: {out:?}");
    let answers: Vec<Result<Vec<u8>, i32>> = out
        .stdout
        .lines()
        .map(|l| match l.split_once(' ') {
            Some(("OK", h)) => Ok(hex::decode(h).expect("hex")),
            Some(("ERR", n)) => Err(n.parse().expect("status")),
            _ => panic!("srtp-peer printed {l:?}"),
        })
        .collect();
    assert_eq!(answers.len(), commands.len(), "one answer per command");
    answers
}

/// An RTP packet: version 2, `csrcs` CSRCs, an optional one-word header extension.
fn rtp(seq: u16, ssrc: u32, csrcs: u8, extension: bool, payload_len: usize) -> Vec<u8> {
    let mut p = vec![0x80 | csrcs | if extension { 0x10 } else { 0 }, 0];
    if seq.is_multiple_of(7) {
        p[1] |= 0x80; // marker
    }
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&u32::from(seq).wrapping_mul(160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    for c in 0..u32::from(csrcs) {
        p.extend_from_slice(&(0x1000 + c).to_be_bytes());
    }
    if extension {
        p.extend_from_slice(&[0xbe, 0xde, 0x00, 0x01, 0x10, 0xaa, 0x00, 0x00]);
    }
    let [_, low] = seq.to_be_bytes();
    p.extend((0..payload_len).map(|i| i.to_le_bytes()[0] ^ low));
    p
}

/// The RTP stream of the test: SSRC A across the wrap (seq 65530 … 4), SSRC B
/// interleaved from seq 1000, header variants and payload sizes.
fn rtp_stream() -> Vec<Vec<u8>> {
    let mut packets = Vec::new();
    let mut seq_a: u16 = 65530;
    for i in 0..12u16 {
        let (csrcs, ext) = match i % 4 {
            1 => (2, false),
            2 => (0, true),
            3 => (1, true),
            _ => (0, false),
        };
        let len = [160usize, 1, 0, 1000][usize::from(i % 4)];
        packets.push(rtp(seq_a, SSRC_A, csrcs, ext, len));
        if i % 3 == 0 {
            packets.push(rtp(1000 + i, SSRC_B, 0, false, 20));
        }
        seq_a = seq_a.wrapping_add(1);
    }
    packets
}

/// An RTCP sender report for `ssrc` with one reception report, then an SDES CNAME.
fn rtcp(ssrc: u32, n: u32) -> Vec<u8> {
    let mut p = vec![0x81, 200, 0x00, 0x0c];
    p.extend_from_slice(&ssrc.to_be_bytes());
    for word in [0x83aa_7e80, n, 0x0000_1000 + n, 100 + n, 16_000 + n] {
        p.extend_from_slice(&u32::to_be_bytes(word));
    }
    p.extend_from_slice(&SSRC_B.to_be_bytes());
    for word in [0x0100_0002, 0x0000_ffff + n, 7, 0, 0] {
        p.extend_from_slice(&u32::to_be_bytes(word));
    }
    p.extend_from_slice(&[0x81, 202, 0x00, 0x03]);
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[1, 5, b'o', b'u', b't', b'p', b's', 0]);
    p
}

fn our_protect_rtp(ctx: &mut SrtpContext, packet: &[u8]) -> Vec<u8> {
    let mut buf = packet.to_vec();
    buf.resize(packet.len() + MAX_TRAILER, 0);
    let n = ctx
        .protect_rtp(&mut buf, packet.len())
        .expect("protect_rtp");
    buf.truncate(n);
    buf
}

fn our_unprotect_rtp(ctx: &mut SrtpContext, srtp: &[u8]) -> Result<Vec<u8>, SrtpError> {
    let mut buf = srtp.to_vec();
    let n = ctx.unprotect_rtp(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

fn our_protect_rtcp(ctx: &mut SrtpContext, packet: &[u8]) -> Vec<u8> {
    let mut buf = packet.to_vec();
    buf.resize(packet.len() + MAX_TRAILER, 0);
    let n = ctx
        .protect_rtcp(&mut buf, packet.len())
        .expect("protect_rtcp");
    buf.truncate(n);
    buf
}

fn our_unprotect_rtcp(ctx: &mut SrtpContext, srtcp: &[u8]) -> Result<Vec<u8>, SrtpError> {
    let mut buf = srtcp.to_vec();
    let n = ctx.unprotect_rtcp(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// The E flag and SRTCP index of an SRTCP packet with an 80-bit tag.
fn srtcp_index(srtcp: &[u8]) -> u32 {
    let at = srtcp.len() - 10 - 4;
    u32::from_be_bytes(srtcp[at..at + 4].try_into().expect("4 bytes"))
}

fn check_suite(peer: &Path, dir: &Path, suite: Suite) {
    let name = suite.name();
    let plain = rtp_stream();
    let reports: Vec<Vec<u8>> = (0..3).map(|n| rtcp(SSRC_A, n)).collect();

    // Ours first (libsrtp's answers come in one run).
    let mut ours_tx = SrtpContext::new(suite, &KEY);
    let ours: Vec<Vec<u8>> = plain
        .iter()
        .map(|p| our_protect_rtp(&mut ours_tx, p))
        .collect();
    let mut tampered = ours[3].clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;

    // libsrtp: protect the plain packets; unprotect ours; refuse the tampered one; then
    // SRTCP both ways.
    let mut commands: Vec<(char, Vec<u8>)> = plain.iter().map(|p| ('P', p.clone())).collect();
    commands.extend(ours.iter().map(|p| ('U', p.clone())));
    commands.push(('U', tampered.clone()));
    commands.extend(reports.iter().map(|r| ('p', r.clone())));
    let answers = libsrtp(peer, dir, suite, &commands);
    let (theirs, rest) = answers.split_at(plain.len());
    let (their_plain, rest) = rest.split_at(ours.len());
    let (their_tampered, their_srtcp) = rest.split_at(1);

    for (i, (mine, theirs)) in ours.iter().zip(theirs).enumerate() {
        let theirs = theirs
            .as_ref()
            .unwrap_or_else(|e| panic!("{name}: libsrtp refused to protect packet {i}: {e}"));
        assert_eq!(
            hex::encode(mine),
            hex::encode(theirs),
            "{name}: packet {i} (seq {}) protected byte for byte alike",
            u16::from_be_bytes([plain[i][2], plain[i][3]])
        );
    }
    for (i, back) in their_plain.iter().enumerate() {
        assert_eq!(
            back.as_ref().map(hex::encode),
            Ok(hex::encode(&plain[i])),
            "{name}: libsrtp unprotects our packet {i}"
        );
    }
    assert!(
        their_tampered[0].is_err(),
        "{name}: libsrtp refuses a packet with a flipped bit"
    );

    // Ours unprotects libsrtp's packets (a fresh receiver, through the wrap).
    let mut ours_rx = SrtpContext::new(suite, &KEY);
    for (i, srtp) in theirs.iter().enumerate() {
        let srtp = srtp.as_ref().expect("protected");
        assert_eq!(
            our_unprotect_rtp(&mut ours_rx, srtp).map(hex::encode),
            Ok(hex::encode(&plain[i])),
            "{name}: we unprotect libsrtp's packet {i}"
        );
    }
    assert!(matches!(
        our_unprotect_rtp(&mut ours_rx, theirs[0].as_ref().expect("protected")),
        Err(SrtpError::Replay)
    ));
    let mut fresh = SrtpContext::new(suite, &KEY);
    assert_eq!(
        our_unprotect_rtp(&mut fresh, &tampered).map(|_| ()),
        Err(SrtpError::AuthFailed),
        "{name}: we refuse a packet with a flipped bit"
    );

    // SRTCP: libsrtp's packets at its indices; ours brought to the same index first.
    let their_srtcp: Vec<Vec<u8>> = their_srtcp
        .iter()
        .map(|r| r.clone().expect("libsrtp protects RTCP"))
        .collect();
    let first = srtcp_index(&their_srtcp[0]);
    assert!(first & 0x8000_0000 != 0, "{name}: the E flag is set");
    let first = first & 0x7fff_ffff;
    let mut ours_rtcp = SrtpContext::new(suite, &KEY);
    for _ in 0..first {
        our_protect_rtcp(&mut ours_rtcp, &reports[0]);
    }
    let mut our_srtcp = Vec::new();
    for (n, (report, theirs)) in reports.iter().zip(&their_srtcp).enumerate() {
        let mine = our_protect_rtcp(&mut ours_rtcp, report);
        assert_eq!(
            hex::encode(&mine),
            hex::encode(theirs),
            "{name}: SRTCP packet {n} byte for byte alike"
        );
        our_srtcp.push(mine);
    }
    let mut ours_rx = SrtpContext::new(suite, &KEY);
    for (n, theirs) in their_srtcp.iter().enumerate() {
        assert_eq!(
            our_unprotect_rtcp(&mut ours_rx, theirs).map(hex::encode),
            Ok(hex::encode(&reports[n])),
            "{name}: we unprotect libsrtp's SRTCP packet {n}"
        );
    }
    // libsrtp unprotects ours (its index starts at 0 here: the first packets ours made).
    let mut ours_from_zero = SrtpContext::new(suite, &KEY);
    let fresh_srtcp: Vec<(char, Vec<u8>)> = reports
        .iter()
        .map(|r| ('u', our_protect_rtcp(&mut ours_from_zero, r)))
        .collect();
    let back = libsrtp(peer, dir, suite, &fresh_srtcp);
    for (n, b) in back.iter().enumerate() {
        assert_eq!(
            b.as_ref().map(hex::encode),
            Ok(hex::encode(&reports[n])),
            "{name}: libsrtp unprotects our SRTCP packet {n}"
        );
    }
    println!(
        "{name}: {} SRTP packets (seq 65530 → 5, ROC 0 → 1) and {} SRTCP packets (from index {first}) identical to libsrtp's",
        plain.len(),
        reports.len()
    );
}

#[test]
fn srtp_and_srtcp_match_libsrtp_byte_for_byte_across_the_rollover() {
    let dir = tempfile::tempdir().expect("temp dir");
    let peer = build_peer(dir.path());
    for suite in [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32] {
        check_suite(&peer, dir.path(), suite);
    }
}

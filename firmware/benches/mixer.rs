//! Mixer benchmark: the CPU of one 20 ms tick of a G.711 conference mixer, and its memory.
//!
//! For each party count of a ramp (2 to the cap, [`MAX_PARTIES`]), half the parties μ-law
//! and half A-law, all talking (the worst case: every jitter buffer decodes, every party's
//! frame is summed, subtracted and encoded), it feeds each party one 20 ms packet and runs
//! one tick, `MIXER_BENCH_TICKS` times (default 50,000: 1,000 s of audio), on this thread,
//! and prints the time per tick, per party and tick, the share of one core a mixer takes
//! at 50 ticks/s, and the mixer's memory.
//!
//! Run: `cargo bench -p firmware --bench mixer`.

// Figures are printed as floats.
#![allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use firmware::media::mixer::{Mixer, Role, MAX_PARTIES, PACKET_LEN};
use firmware::media::stream::OutStream;
use pbx_core::media::g711;
use pbx_core::media::rtp::{RtpPacket, RtpRepr};
use pbx_core::media::session::Codec;

fn main() {
    let ticks: u32 = std::env::var("MIXER_BENCH_TICKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    println!("mixer bench: {ticks} ticks per step, every party talking, PCMU and PCMA halves");
    println!(
        "{:>7} {:>10} {:>14} {:>12} {:>10}",
        "parties", "µs/tick", "ns/party/tick", "core %", "memory B"
    );
    for parties in 2..=MAX_PARTIES {
        let (per_tick, memory) = run(parties, ticks);
        let us = per_tick.as_secs_f64() * 1e6;
        println!(
            "{parties:>7} {us:>10.2} {:>14.0} {:>12.3} {memory:>10}",
            us * 1000.0 / parties as f64,
            us / 20_000.0 * 100.0,
        );
    }
}

/// Runs `ticks` ticks of a mixer of `parties`; returns the time per tick and its memory.
fn run(parties: usize, ticks: u32) -> (Duration, usize) {
    let mut mixer = Mixer::new();
    let codecs: Vec<(u32, Codec, u8)> = (0..parties as u32)
        .map(|id| {
            if id % 2 == 0 {
                (id, Codec::Pcmu, 0)
            } else {
                (id, Codec::Pcma, 8)
            }
        })
        .collect();
    for &(id, codec, pt) in &codecs {
        mixer
            .join(id, codec, pt, Role::Both, OutStream::new(id, 0, 0))
            .expect("below the cap");
    }
    // One packet per party, its sequence number rewritten each tick.
    let mut packets: Vec<Vec<u8>> = codecs
        .iter()
        .map(|&(id, codec, pt)| {
            let payload: Vec<u8> = (0..160)
                .map(|i| {
                    let level = ((i * 97 + id as usize * 1000) % 16_000) as i16 - 8000;
                    match codec {
                        Codec::Pcma => g711::linear_to_alaw(level),
                        _ => g711::linear_to_ulaw(level),
                    }
                })
                .collect();
            let mut buf = vec![0u8; PACKET_LEN];
            RtpRepr {
                marker: false,
                payload_type: pt,
                sequence_number: 0,
                timestamp: 0,
                ssrc: id,
            }
            .emit(&mut buf, &payload)
            .expect("fits");
            buf
        })
        .collect();
    let t0 = Instant::now();
    let mut sent = 0u64;
    let start = Instant::now();
    for tick in 0..ticks {
        for (packet, &(id, _, _)) in packets.iter_mut().zip(&codecs) {
            let mut view = RtpPacket::new_checked(&mut packet[..]).expect("RTP");
            view.set_sequence_number(tick as u16);
            mixer.push(id, &view);
        }
        mixer.tick(t0 + Duration::from_millis(20) * tick, &mut |_, bytes| {
            sent += black_box(bytes.len()) as u64;
        });
    }
    let elapsed = start.elapsed();
    black_box(sent);
    (elapsed / ticks, mixer.memory_bytes())
}

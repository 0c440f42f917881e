//! ITU-T G.711 companding: µ-law and A-law to and from 16-bit linear PCM, and table-driven
//! µ-law ↔ A-law transcoding for the relay (one table lookup per sample, tables built at
//! compile time).
//!
//! Linear values are 16-bit: µ-law spans ±32124, A-law ±32256, as in the common reference
//! implementations (µ-law's 14-bit and A-law's 13-bit ranges shifted up).

use super::session::Codec;

/// µ-law bias added before finding the segment (33 in 14-bit units, ×4 in 16-bit).
const ULAW_BIAS: i32 = 0x84;
/// Largest magnitude µ-law encodes before clipping (32767 - bias, rounded down to a step).
const ULAW_CLIP: i32 = 32635;

/// Decodes one µ-law byte to linear PCM.
pub const fn ulaw_to_linear(u: u8) -> i16 {
    let u = !u;
    let exponent = (u >> 4) & 0x07;
    let mantissa = (u & 0x0f) as i32;
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    // At most ((15 << 3) + 132) << 7 - 132 = 32124: fits an i16.
    #[allow(clippy::cast_possible_truncation)]
    let magnitude = magnitude as i16;
    if u & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// Encodes linear PCM to a µ-law byte (rounding towards zero within a step, clipping at
/// the top of the range).
pub const fn linear_to_ulaw(sample: i16) -> u8 {
    let s = sample as i32;
    let (sign, mut magnitude) = if s < 0 { (0x80u8, -s) } else { (0u8, s) };
    if magnitude > ULAW_CLIP {
        magnitude = ULAW_CLIP;
    }
    magnitude += ULAW_BIAS;
    // magnitude is in 0x84..=0x7fff: its top bit is bit 7..=14, giving segment 0..=7.
    let top_bit = 31 - magnitude.leading_zeros();
    let exponent = top_bit - 7;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let mantissa = ((magnitude >> (exponent + 3)) & 0x0f) as u8;
    #[allow(clippy::cast_possible_truncation)]
    let code = sign | ((exponent as u8) << 4) | mantissa;
    !code
}

/// Decodes one A-law byte to linear PCM.
pub const fn alaw_to_linear(a: u8) -> i16 {
    let a = a ^ 0x55;
    let segment = (a >> 4) & 0x07;
    let mantissa = ((a & 0x0f) as i32) << 4;
    let magnitude = if segment == 0 {
        mantissa + 8
    } else {
        (mantissa + 0x108) << (segment - 1)
    };
    // At most (0xf0 + 0x108) << 6 = 32256: fits an i16.
    #[allow(clippy::cast_possible_truncation)]
    let magnitude = magnitude as i16;
    if a & 0x80 != 0 {
        magnitude
    } else {
        -magnitude
    }
}

/// Encodes linear PCM to an A-law byte.
pub const fn linear_to_alaw(sample: i16) -> u8 {
    // A-law works on 13 bits; negative values use the one's complement, so -1..-8 share
    // the smallest negative code.
    let (sign, magnitude) = if sample >= 0 {
        (0x80u8, (sample >> 3) as i32)
    } else {
        (0u8, (!sample >> 3) as i32)
    };
    // magnitude is 0..=4095.
    let code = if magnitude < 32 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let m = (magnitude >> 1) as u8;
        m
    } else {
        let segment = 31 - magnitude.leading_zeros() - 4; // 1..=7
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let mantissa = ((magnitude >> segment) & 0x0f) as u8;
        #[allow(clippy::cast_possible_truncation)]
        let seg = segment as u8;
        (seg << 4) | mantissa
    };
    (sign | code) ^ 0x55
}

const fn build_ulaw_to_alaw() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        #[allow(clippy::cast_possible_truncation)]
        let code = i as u8;
        table[i] = linear_to_alaw(ulaw_to_linear(code));
        i += 1;
    }
    table
}

const fn build_alaw_to_ulaw() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        #[allow(clippy::cast_possible_truncation)]
        let code = i as u8;
        table[i] = linear_to_ulaw(alaw_to_linear(code));
        i += 1;
    }
    table
}

static ULAW_TO_ALAW: [u8; 256] = build_ulaw_to_alaw();
static ALAW_TO_ULAW: [u8; 256] = build_alaw_to_ulaw();

/// Converts one µ-law byte to the A-law byte of the nearest lower-or-equal level.
#[inline]
pub fn ulaw_to_alaw(u: u8) -> u8 {
    ULAW_TO_ALAW[usize::from(u)]
}

/// Converts one A-law byte to the µ-law byte of the nearest lower-or-equal level.
#[inline]
pub fn alaw_to_ulaw(a: u8) -> u8 {
    ALAW_TO_ULAW[usize::from(a)]
}

/// Transcodes a G.711 payload in place; same codec or [`Codec::Other`] on either side is a
/// no-op.
pub fn transcode(payload: &mut [u8], from: Codec, to: Codec) {
    let table = match (from, to) {
        (Codec::Pcmu, Codec::Pcma) => &ULAW_TO_ALAW,
        (Codec::Pcma, Codec::Pcmu) => &ALAW_TO_ULAW,
        _ => return,
    };
    for b in payload {
        *b = table[usize::from(*b)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quantisation step of µ-law around a linear level.
    fn ulaw_step(x: i32) -> i32 {
        let m = x.abs().min(32635) + 0x84;
        let exponent = 31 - m.leading_zeros() as i32 - 7;
        8 << exponent
    }

    fn alaw_step(x: i32) -> i32 {
        let m = x.abs() >> 3;
        if m < 32 {
            16
        } else {
            16 << (31 - m.leading_zeros() as i32 - 5)
        }
    }

    #[test]
    fn ulaw_known_values() {
        // Values of the Sun/CCITT reference decoder (g711.c ulaw2linear).
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(ulaw_to_linear(0x7f), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0xfe), 8);
        assert_eq!(ulaw_to_linear(0x7e), -8);
        assert_eq!(ulaw_to_linear(0xef), 132); // segment 1, mantissa 0
        assert_eq!(ulaw_to_linear(0xa5), 6652); // !0xa5 = 0x5a: (10 * 8 + 132) << 5 - 132
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(linear_to_ulaw(-32124), 0x00);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(8), 0xfe);
        assert_eq!(linear_to_ulaw(-1), 0x7f);
    }

    #[test]
    fn alaw_known_values() {
        // Values of the Sun/CCITT reference decoder (g711.c alaw2linear).
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xaa), 32256);
        assert_eq!(alaw_to_linear(0x2a), -32256);
        assert_eq!(alaw_to_linear(0x80), 5504);
        assert_eq!(alaw_to_linear(0x00), -5504);
        assert_eq!(alaw_to_linear(0xc5), 264); // segment 1, mantissa 0
        assert_eq!(linear_to_alaw(0), 0xd5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(-8), 0x55);
        assert_eq!(linear_to_alaw(i16::MAX), 0xaa);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2a);
        assert_eq!(linear_to_alaw(5504), 0x80);
    }

    #[test]
    fn every_code_decodes_and_reencodes_to_itself() {
        for c in 0..=255u8 {
            let u = linear_to_ulaw(ulaw_to_linear(c));
            // µ-law has two zeros (0x7f and 0xff); both decode to 0, which encodes as 0xff.
            if c == 0x7f {
                assert_eq!(u, 0xff);
            } else {
                assert_eq!(u, c, "µ-law {c:#04x}");
            }
            assert_eq!(linear_to_alaw(alaw_to_linear(c)), c, "A-law {c:#04x}");
        }
    }

    #[test]
    fn linear_round_trip_stays_within_one_quantisation_step() {
        for x in (i16::MIN..=i16::MAX).step_by(7) {
            let xi = i32::from(x);
            let u = i32::from(ulaw_to_linear(linear_to_ulaw(x)));
            assert!(
                (u - xi.clamp(-32124, 32124)).abs() <= ulaw_step(xi),
                "µ {x} -> {u}"
            );
            let a = i32::from(alaw_to_linear(linear_to_alaw(x)));
            assert!((a - xi).abs() <= alaw_step(xi), "A {x} -> {a}");
        }
    }

    /// Position of a µ-law code on the ordered scale of 256 levels (-127..=127, two zeros).
    fn ulaw_level(c: u8) -> i32 {
        let m = i32::from(!c & 0x7f);
        if !c & 0x80 != 0 {
            -m
        } else {
            m
        }
    }

    #[test]
    fn ulaw_through_alaw_and_back_moves_at_most_one_step() {
        for c in 0..=255u8 {
            let back = alaw_to_ulaw(ulaw_to_alaw(c));
            let diff = (ulaw_level(back) - ulaw_level(c)).abs();
            assert!(diff <= 1, "{c:#04x} -> {back:#04x}");
            let a = ulaw_to_alaw(c);
            let again = ulaw_to_alaw(alaw_to_ulaw(a));
            assert_eq!(again, a, "A-law {a:#04x} is stable after one trip");
        }
    }

    #[test]
    fn tables_match_the_arithmetic_codecs() {
        for c in 0..=255u8 {
            assert_eq!(ulaw_to_alaw(c), linear_to_alaw(ulaw_to_linear(c)));
            assert_eq!(alaw_to_ulaw(c), linear_to_ulaw(alaw_to_linear(c)));
            let ul = i32::from(ulaw_to_linear(c));
            let al = i32::from(alaw_to_linear(ulaw_to_alaw(c)));
            assert!((ul - al).abs() <= alaw_step(ul), "{c:#04x}: {ul} vs {al}");
        }
        assert_eq!(ulaw_to_alaw(0xff), 0xd5); // silence stays silence
        assert_eq!(alaw_to_ulaw(0xd5), 0xfe); // +8 in µ-law
    }

    #[test]
    fn transcode_in_place_and_no_op_cases() {
        let orig = [0xffu8, 0x00, 0x80, 0x7e, 0x42];
        let mut p = orig;
        transcode(&mut p, Codec::Pcmu, Codec::Pcma);
        let expected: Vec<u8> = orig.iter().map(|&c| ulaw_to_alaw(c)).collect();
        assert_eq!(p.to_vec(), expected);
        transcode(&mut p, Codec::Pcma, Codec::Pcmu);
        let back: Vec<u8> = expected.iter().map(|&c| alaw_to_ulaw(c)).collect();
        assert_eq!(p.to_vec(), back);
        let mut q = orig;
        transcode(&mut q, Codec::Pcmu, Codec::Pcmu);
        transcode(&mut q, Codec::Other, Codec::Pcma);
        transcode(&mut q, Codec::Pcma, Codec::Other);
        assert_eq!(q, orig);
        transcode(&mut [], Codec::Pcmu, Codec::Pcma);
    }
}

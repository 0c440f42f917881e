//! WAV files of 8 kHz mono telephone audio: the writer produces G.711 µ-law files (format
//! tag 7, with the `fact` chunk non-PCM formats require), the reader accepts µ-law, A-law
//! and 16-bit PCM at 8 kHz mono and returns µ-law samples, ready to be sent as RTP.
//!
//! Files are written to `<path>.tmp`, synced, then renamed over `<path>` and the directory
//! synced, so a power cut leaves either no file or a complete one.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use pbx_core::media::g711;

/// WAVE format tag of 16-bit linear PCM.
const FORMAT_PCM: u16 = 1;
/// WAVE format tag of G.711 A-law.
const FORMAT_ALAW: u16 = 6;
/// WAVE format tag of G.711 µ-law.
const FORMAT_ULAW: u16 = 7;
/// The only sample rate telephone audio here uses.
pub const SAMPLE_RATE: u32 = 8000;
/// Largest WAV file the reader accepts (a 10-minute µ-law message is 4.8 MB).
pub const MAX_FILE_LEN: u64 = 5 * 1024 * 1024;
/// Length of the header [`encode_ulaw`] writes before the samples.
pub const HEADER_LEN: usize = 58;

/// Why bytes are not a WAV file this module can play.
#[derive(Debug, Error)]
pub enum WavError {
    /// Reading the file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Larger than [`MAX_FILE_LEN`].
    #[error("file larger than {MAX_FILE_LEN} bytes")]
    TooLarge,
    /// Not a RIFF/WAVE file, or a chunk runs past the end.
    #[error("not a well-formed RIFF/WAVE file")]
    Malformed,
    /// No `fmt ` or no `data` chunk.
    #[error("missing {0} chunk")]
    MissingChunk(&'static str),
    /// A format other than 8 kHz mono µ-law, A-law or 16-bit PCM.
    #[error("unsupported format (tag {tag}, {channels} channels, {rate} Hz, {bits} bits)")]
    Unsupported {
        /// Format tag.
        tag: u16,
        /// Channel count.
        channels: u16,
        /// Sample rate.
        rate: u32,
        /// Bits per sample.
        bits: u16,
    },
}

/// A complete µ-law WAV file holding `samples` (8 kHz mono).
pub fn encode_ulaw(samples: &[u8]) -> Vec<u8> {
    let n = samples.len();
    let pad = n % 2;
    let mut out = Vec::with_capacity(HEADER_LEN + n + pad);
    // RIFF size: everything after its own 8-byte header.
    let riff_len = u32::try_from(HEADER_LEN - 8 + n + pad).unwrap_or(u32::MAX);
    let data_len = u32::try_from(n).unwrap_or(u32::MAX);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&riff_len.to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&18u32.to_le_bytes());
    out.extend_from_slice(&FORMAT_ULAW.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // channels
    out.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
    out.extend_from_slice(&SAMPLE_RATE.to_le_bytes()); // bytes per second
    out.extend_from_slice(&1u16.to_le_bytes()); // block align
    out.extend_from_slice(&8u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(&0u16.to_le_bytes()); // no extra format bytes
    out.extend_from_slice(b"fact");
    out.extend_from_slice(&4u32.to_le_bytes());
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    debug_assert_eq!(out.len(), HEADER_LEN);
    out.extend_from_slice(samples);
    if pad == 1 {
        // RIFF chunks are word-aligned; the pad byte is not counted in the data size.
        out.push(0);
    }
    out
}

/// Writes `samples` as a µ-law WAV file atomically (temporary file, sync, rename).
pub fn write_ulaw(path: &Path, samples: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        // A mailbox's first message creates its directory.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let mut file = File::create(&tmp)?;
        file.write_all(&encode_ulaw(samples))?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is on disk.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The µ-law samples of a WAV file's bytes (µ-law, A-law or 16-bit PCM; 8 kHz mono).
pub fn decode(bytes: &[u8]) -> Result<Vec<u8>, WavError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::Malformed);
    }
    let mut fmt = None;
    let mut data = None;
    let mut rest = &bytes[12..];
    while rest.len() >= 8 {
        let id = &rest[0..4];
        let len = usize::try_from(u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]))
            .map_err(|_| WavError::Malformed)?;
        let body = rest.get(8..8 + len);
        // Writers that stream often leave a data size of 0 or 0xFFFFFFFF: take what is there.
        let body = match (id, body) {
            (_, Some(body)) => body,
            (b"data", None) => &rest[8..],
            _ => return Err(WavError::Malformed),
        };
        match id {
            b"fmt " => fmt = Some(body),
            b"data" => data = Some(body),
            _ => {}
        }
        let advance = (8 + len + len % 2).min(rest.len());
        rest = &rest[advance..];
    }
    let fmt = fmt.ok_or(WavError::MissingChunk("fmt"))?;
    let data = data.ok_or(WavError::MissingChunk("data"))?;
    if fmt.len() < 16 {
        return Err(WavError::Malformed);
    }
    let u16_at = |i: usize| u16::from_le_bytes([fmt[i], fmt[i + 1]]);
    let tag = u16_at(0);
    let channels = u16_at(2);
    let rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
    let bits = u16_at(14);
    let unsupported = WavError::Unsupported {
        tag,
        channels,
        rate,
        bits,
    };
    if channels != 1 || rate != SAMPLE_RATE {
        return Err(unsupported);
    }
    match (tag, bits) {
        (FORMAT_ULAW, 8) => Ok(data.to_vec()),
        (FORMAT_ALAW, 8) => Ok(data.iter().map(|&a| g711::alaw_to_ulaw(a)).collect()),
        (FORMAT_PCM, 16) => Ok(data
            .chunks_exact(2)
            .map(|s| g711::linear_to_ulaw(i16::from_le_bytes([s[0], s[1]])))
            .collect()),
        _ => Err(unsupported),
    }
}

/// Reads a WAV file (at most [`MAX_FILE_LEN`] bytes) and returns its µ-law samples.
pub fn read_ulaw(path: &Path) -> Result<Vec<u8>, WavError> {
    let io_err = |source| WavError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    if len > MAX_FILE_LEN {
        return Err(WavError::TooLarge);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(WavError::TooLarge);
    }
    decode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_file_reads_back_with_correct_riff_sizes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("msg.wav");
        let samples: Vec<u8> = (0..8001u32)
            .map(|i| u8::try_from(i % 251).expect("small"))
            .collect();
        write_ulaw(&path, &samples).expect("written");

        let bytes = fs::read(&path).expect("file exists");
        assert_eq!(bytes.len(), HEADER_LEN + 8001 + 1, "odd data is padded");
        let riff = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        assert_eq!(riff as usize, bytes.len() - 8);
        assert_eq!(u16::from_le_bytes([bytes[20], bytes[21]]), 7, "µ-law tag");
        let data_len = u32::from_le_bytes(bytes[54..58].try_into().expect("4 bytes"));
        assert_eq!(data_len, 8001);
        assert_eq!(&bytes[46..50], &8001u32.to_le_bytes(), "fact sample count");
        assert_eq!(read_ulaw(&path).expect("parses"), samples);
        assert!(
            !dir.path().join("msg.wav.tmp").exists(),
            "no temporary left"
        );
    }

    #[test]
    fn alaw_and_pcm_files_are_converted_to_ulaw() {
        let mut alaw = encode_ulaw(&[0xd5, 0x55]);
        alaw[20] = 6; // FORMAT_ALAW
        assert_eq!(
            decode(&alaw).expect("A-law"),
            vec![g711::alaw_to_ulaw(0xd5), g711::alaw_to_ulaw(0x55)]
        );

        let mut pcm = Vec::new();
        pcm.extend_from_slice(b"RIFF\x00\x00\x00\x00WAVEfmt \x10\x00\x00\x00");
        pcm.extend_from_slice(&[1, 0, 1, 0]);
        pcm.extend_from_slice(&8000u32.to_le_bytes());
        pcm.extend_from_slice(&16000u32.to_le_bytes());
        pcm.extend_from_slice(&[2, 0, 16, 0]);
        pcm.extend_from_slice(b"data\x04\x00\x00\x00");
        pcm.extend_from_slice(&0i16.to_le_bytes());
        pcm.extend_from_slice(&1000i16.to_le_bytes());
        assert_eq!(
            decode(&pcm).expect("PCM"),
            vec![g711::linear_to_ulaw(0), g711::linear_to_ulaw(1000)]
        );
    }

    #[test]
    fn garbage_and_unsupported_formats_are_refused() {
        assert!(matches!(decode(b"RIFF"), Err(WavError::Malformed)));
        assert!(matches!(
            decode(b"RIFF\0\0\0\0WAVEfmt \xff\xff\xff\x00"),
            Err(WavError::Malformed)
        ));
        let mut stereo = encode_ulaw(&[1, 2]);
        stereo[22] = 2;
        assert!(matches!(
            decode(&stereo),
            Err(WavError::Unsupported { channels: 2, .. })
        ));
        let no_data = &encode_ulaw(&[])[..HEADER_LEN - 8];
        assert!(matches!(
            decode(no_data),
            Err(WavError::MissingChunk("data"))
        ));
    }
}

//! The prompts the relay plays, held in memory by name as 8 kHz G.711 µ-law samples.
//!
//! Spoken prompts come from a directory of raw µ-law files (`<name>.ul`) that
//! `scripts/make-prompts DIR` generates from the catalogue `prompts/en.toml`. Three tones are
//! always there even without that directory, synthesised here from a sine table: `beep`,
//! `ringback` and `moh` (music on hold), so a caller on hold never hears silence.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use pbx_core::media::g711;

/// Largest prompt file loaded; bigger files are skipped (5 MiB is 11 minutes of audio).
pub const MAX_PROMPT_BYTES: u64 = 5 * 1024 * 1024;
/// Most prompts loaded from a directory.
pub const MAX_PROMPTS: usize = 256;
/// Longest prompt name.
const MAX_NAME_LEN: usize = 64;
/// Samples per second of every prompt.
const RATE: u32 = 8000;
/// The catalogue of spoken prompts the firmware expects (used to name the missing ones).
const CATALOGUE: &str = include_str!("../../../prompts/en.toml");

/// Prompt audio by name: µ-law samples shared with every player.
#[derive(Debug, Clone)]
pub struct PromptStore {
    prompts: HashMap<String, Arc<[u8]>>,
}

impl Default for PromptStore {
    fn default() -> Self {
        Self::builtin()
    }
}

impl PromptStore {
    /// Only the built-in tones: `beep`, `ringback` and `moh`.
    pub fn builtin() -> Self {
        let mut prompts = HashMap::new();
        prompts.insert("beep".to_owned(), Arc::from(beep()));
        prompts.insert("ringback".to_owned(), Arc::from(ringback()));
        prompts.insert("moh".to_owned(), Arc::from(music_on_hold()));
        PromptStore { prompts }
    }

    /// The built-in tones plus every `<name>.ul` file of `dir` (files win over built-ins).
    ///
    /// Never fails: unreadable, oversized or badly named files are skipped with a warning,
    /// at most [`MAX_PROMPTS`] files are loaded, and a missing directory or missing spoken
    /// prompts are logged together with the command that generates them.
    pub fn load(dir: &Path) -> Self {
        let mut store = Self::builtin();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(
                    "prompts: cannot read {} ({e}); only the built-in tones (beep, ringback, \
                     moh) are available; generate the spoken prompts with \
                     `scripts/make-prompts {}`",
                    dir.display(),
                    dir.display()
                );
                return store;
            }
        };
        let mut files: Vec<(String, std::path::PathBuf)> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "ul"))
            .filter_map(|p| {
                let name = p.file_stem()?.to_str()?.to_owned();
                Some((name, p))
            })
            .collect();
        files.sort();
        let mut loaded = 0;
        for (name, path) in files {
            if loaded >= MAX_PROMPTS {
                tracing::warn!(
                    "prompts: more than {MAX_PROMPTS} files in {}; the rest are ignored",
                    dir.display()
                );
                break;
            }
            if !valid_name(&name) {
                tracing::warn!("prompts: skipped {}: bad name", path.display());
                continue;
            }
            match read_bounded(&path) {
                Ok(samples) if samples.is_empty() => {
                    tracing::warn!("prompts: skipped {}: empty", path.display());
                }
                Ok(samples) => {
                    store.prompts.insert(name, Arc::from(samples));
                    loaded += 1;
                }
                Err(why) => tracing::warn!("prompts: skipped {}: {why}", path.display()),
            }
        }
        let missing = store.missing_spoken();
        if missing.is_empty() {
            tracing::info!("prompts: {loaded} loaded from {}", dir.display());
        } else {
            tracing::warn!(
                "prompts: {loaded} loaded from {}; missing {} spoken prompts ({}); generate \
                 them with `scripts/make-prompts {}`",
                dir.display(),
                missing.len(),
                missing.join(", "),
                dir.display()
            );
        }
        store
    }

    /// Adds or replaces a prompt; refused (false) for a bad name, more than
    /// [`MAX_PROMPT_BYTES`] of audio, or a new name beyond [`MAX_PROMPTS`] + the tones.
    pub fn insert(&mut self, name: &str, ulaw: Vec<u8>) -> bool {
        let too_many = !self.prompts.contains_key(name) && self.prompts.len() >= MAX_PROMPTS + 3;
        if !valid_name(name) || ulaw.len() as u64 > MAX_PROMPT_BYTES || too_many {
            return false;
        }
        self.prompts.insert(name.to_owned(), Arc::from(ulaw));
        true
    }

    /// The µ-law samples of a prompt.
    pub fn get(&self, name: &str) -> Option<&Arc<[u8]>> {
        self.prompts.get(name)
    }

    /// How many prompts are held.
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    /// Whether no prompt is held (never true: the tones are always there).
    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }

    /// Names of the catalogue's spoken prompts that are not loaded.
    pub fn missing_spoken(&self) -> Vec<String> {
        catalogue_names()
            .into_iter()
            .filter(|n| !self.prompts.contains_key(n))
            .collect()
    }
}

/// The prompt names of the built-in catalogue (`prompts/en.toml`).
pub fn catalogue_names() -> Vec<String> {
    toml::from_str::<BTreeMap<String, String>>(CATALOGUE)
        .map(|m| m.into_keys().collect())
        .unwrap_or_default()
}

/// Prompt names are file names and command arguments: keep them plain.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = File::open(path)?;
    if file.metadata()?.len() > MAX_PROMPT_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_PROMPT_BYTES} bytes"
        )));
    }
    let mut samples = Vec::new();
    file.take(MAX_PROMPT_BYTES + 1).read_to_end(&mut samples)?;
    if samples.len() as u64 > MAX_PROMPT_BYTES {
        return Err(std::io::Error::other("grew while being read"));
    }
    Ok(samples)
}

/// Entries of the sine table (one period).
const SINE_LEN: usize = 1024;

/// A sine-table oscillator mixer: renders notes (sums of partials) into linear samples.
#[derive(Debug)]
struct Synth {
    table: Vec<f32>,
    out: Vec<f32>,
}

impl Synth {
    fn new() -> Self {
        let table = (0..SINE_LEN)
            .map(|i| (i as f32 * std::f32::consts::TAU / SINE_LEN as f32).sin())
            .collect();
        Synth {
            table,
            out: Vec::new(),
        }
    }

    /// Appends `ms` of the partials `(frequency Hz, amplitude)` with linear fades of
    /// `fade_in_ms` and `fade_out_ms`.
    fn tone(&mut self, ms: u32, partials: &[(f32, f32)], fade_in_ms: u32, fade_out_ms: u32) {
        let n = samples_in(ms);
        let (fin, fout) = (
            samples_in(fade_in_ms).max(1),
            samples_in(fade_out_ms).max(1),
        );
        let steps: Vec<u32> = partials.iter().map(|&(f, _)| phase_step(f)).collect();
        let mut phases = vec![0u32; partials.len()];
        for i in 0..n {
            let mut v = 0.0;
            for ((phase, step), &(_, amp)) in phases.iter_mut().zip(&steps).zip(partials) {
                // The top 10 bits of the 32-bit phase index the 1024-entry table.
                v += amp * self.table[(*phase >> 22) as usize];
                *phase = phase.wrapping_add(*step);
            }
            let envelope = (i as f32 / fin as f32)
                .min((n - i) as f32 / fout as f32)
                .min(1.0);
            self.out.push(v * envelope);
        }
    }

    fn silence(&mut self, ms: u32) {
        self.out.extend(std::iter::repeat_n(0.0, samples_in(ms)));
    }

    /// The rendered audio as µ-law (full scale 1.0).
    fn into_ulaw(self) -> Vec<u8> {
        self.out
            .into_iter()
            .map(|v| {
                // Clamped to i16's range first, so the cast cannot wrap.
                #[allow(clippy::cast_possible_truncation)]
                let s = (v * 32767.0).clamp(-32768.0, 32767.0) as i16;
                g711::linear_to_ulaw(s)
            })
            .collect()
    }
}

fn samples_in(ms: u32) -> usize {
    (ms * RATE / 1000) as usize
}

/// Phase increment per sample of a 32-bit accumulator for `freq` Hz.
fn phase_step(freq: f32) -> u32 {
    // 0 <= freq < RATE, so the product is below 2^32.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let step = (f64::from(freq) / f64::from(RATE) * 4_294_967_296.0) as u32;
    step
}

/// 1 kHz for 500 ms at half scale.
fn beep() -> Vec<u8> {
    let mut synth = Synth::new();
    synth.tone(500, &[(1000.0, 0.5)], 10, 10);
    synth.into_ulaw()
}

/// North American ringback: 440 + 480 Hz for 2 s, then 4 s of silence (play with repeat).
fn ringback() -> Vec<u8> {
    let mut synth = Synth::new();
    synth.tone(2000, &[(440.0, 0.125), (480.0, 0.125)], 10, 10);
    synth.silence(4000);
    synth.into_ulaw()
}

/// Length of one eighth note of the hold music.
const EIGHTH_MS: u32 = 280;

/// The hold music: pitch name and length in eighths. Same score as `scripts/make-prompts`.
#[rustfmt::skip]
const MOH_SCORE: &[(&str, u32)] = &[
    // C, Am, F, G arpeggios.
    ("C4", 1), ("E4", 1), ("G4", 1), ("C5", 1), ("G4", 1), ("E4", 1), ("C4", 1), ("E4", 1),
    ("A3", 1), ("C4", 1), ("E4", 1), ("A4", 1), ("E4", 1), ("C4", 1), ("A3", 1), ("C4", 1),
    ("F3", 1), ("A3", 1), ("C4", 1), ("F4", 1), ("C4", 1), ("A3", 1), ("F3", 1), ("A3", 1),
    ("G3", 1), ("B3", 1), ("D4", 1), ("G4", 1), ("D4", 1), ("B3", 1), ("G3", 1), ("B3", 1),
    // Melody.
    ("E5", 2), ("D5", 2), ("C5", 2), ("G4", 2), ("A4", 2), ("C5", 2), ("E5", 4),
    ("F5", 2), ("E5", 2), ("D5", 2), ("C5", 2), ("D5", 4), ("G4", 4),
    // The arpeggios again, and a closing C.
    ("C4", 1), ("E4", 1), ("G4", 1), ("C5", 1), ("G4", 1), ("E4", 1), ("C4", 1), ("E4", 1),
    ("A3", 1), ("C4", 1), ("E4", 1), ("A4", 1), ("E4", 1), ("C4", 1), ("A3", 1), ("C4", 1),
    ("F3", 1), ("A3", 1), ("C4", 1), ("F4", 1), ("C4", 1), ("A3", 1), ("F3", 1), ("A3", 1),
    ("G3", 1), ("B3", 1), ("D4", 1), ("G4", 1), ("D4", 1), ("B3", 1), ("G3", 1), ("B3", 1),
    ("C5", 6),
];

fn pitch_hz(name: &str) -> f32 {
    match name {
        "F3" => 174.61,
        "G3" => 196.00,
        "A3" => 220.00,
        "B3" => 246.94,
        "C4" => 261.63,
        "D4" => 293.66,
        "E4" => 329.63,
        "F4" => 349.23,
        "G4" => 392.00,
        "A4" => 440.00,
        "B4" => 493.88,
        "C5" => 523.25,
        "D5" => 587.33,
        "E5" => 659.25,
        "F5" => 698.46,
        _ => 783.99,
    }
}

/// About 28.6 s of a generated melody: sine notes with a soft second harmonic.
fn music_on_hold() -> Vec<u8> {
    let mut synth = Synth::new();
    for &(pitch, eighths) in MOH_SCORE {
        let f = pitch_hz(pitch);
        synth.tone(eighths * EIGHTH_MS, &[(f, 0.28), (2.0 * f, 0.07)], 10, 80);
    }
    synth.into_ulaw()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peak(ulaw: &[u8]) -> i32 {
        ulaw.iter()
            .map(|&u| i32::from(g711::ulaw_to_linear(u)).abs())
            .max()
            .unwrap_or(0)
    }

    /// Counts zero crossings upward: about the frequency, per second of audio.
    fn rising_crossings(ulaw: &[u8]) -> usize {
        ulaw.windows(2)
            .filter(|w| g711::ulaw_to_linear(w[0]) < 0 && g711::ulaw_to_linear(w[1]) >= 0)
            .count()
    }

    #[test]
    fn builtin_tones_have_their_lengths_levels_and_pitch() {
        let store = PromptStore::builtin();
        let beep = store.get("beep").expect("beep");
        assert_eq!(beep.len(), 4000, "500 ms");
        assert!(
            (495..=505).contains(&rising_crossings(beep)),
            "~1 kHz for 0.5 s"
        );
        assert!((15000..=17500).contains(&peak(beep)), "half scale");

        let ringback = store.get("ringback").expect("ringback");
        assert_eq!(ringback.len(), 48_000, "2 s on + 4 s off");
        assert!(peak(&ringback[..16_000]) > 5000, "tone in the first 2 s");
        assert!(peak(&ringback[16_000..]) < 100, "silence after");

        let moh = store.get("moh").expect("moh");
        let secs = moh.len() as f32 / 8000.0;
        assert!((20.0..=30.0).contains(&secs), "{secs} s of music");
        assert!(peak(moh) > 5000);
    }

    #[test]
    fn a_directory_of_ul_files_is_loaded_by_name_and_bounded() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("goodbye.ul"), [1u8, 2, 3]).expect("write");
        std::fs::write(dir.path().join("beep.ul"), [9u8; 10]).expect("write");
        std::fs::write(dir.path().join("notes.txt"), b"ignored").expect("write");
        std::fs::write(dir.path().join("empty.ul"), b"").expect("write");
        std::fs::write(dir.path().join("bad name.ul"), [1u8]).expect("write");
        let big = File::create(dir.path().join("huge.ul")).expect("create");
        big.set_len(MAX_PROMPT_BYTES + 1).expect("sparse file");

        let store = PromptStore::load(dir.path());
        assert_eq!(
            store.get("goodbye").map(|p| p.to_vec()),
            Some(vec![1, 2, 3])
        );
        assert_eq!(store.get("beep").map(|p| p.len()), Some(10), "a file wins");
        assert!(store.get("moh").is_some() && store.get("ringback").is_some());
        for skipped in ["notes", "empty", "bad name", "huge"] {
            assert!(store.get(skipped).is_none(), "{skipped}");
        }
        assert!(store.missing_spoken().contains(&"main-menu".to_owned()));
        assert!(!store.missing_spoken().contains(&"goodbye".to_owned()));
    }

    #[test]
    fn a_missing_directory_still_gives_the_tones() {
        let store = PromptStore::load(Path::new("/nonexistent/outpost-prompts"));
        assert_eq!(store.len(), 3);
        assert_eq!(store.missing_spoken().len(), catalogue_names().len());
        assert!(catalogue_names().len() >= 26, "the catalogue parses");
    }

    #[test]
    fn insert_refuses_bad_names_and_oversized_audio() {
        let mut store = PromptStore::builtin();
        assert!(store.insert("greeting-100", vec![0xff; 800]));
        assert!(!store.insert("../etc", vec![0xff]));
        assert!(!store.insert("", vec![0xff]));
        let too_big = usize::try_from(MAX_PROMPT_BYTES).expect("fits") + 1;
        assert!(!store.insert("big", vec![0; too_big]));
        assert_eq!(store.len(), 4);
    }
}

//! Call recordings on the box: `<data_dir>/recordings/<id>.wav` (8 kHz mono G.711 µ-law,
//! the voicemail's format) with `<id>.json` beside it (who, when, how long). The call
//! core records each leg into its own file from the same instant; [`Recordings::store`]
//! mixes the two into one recording (both parties heard), writes it and its description,
//! and removes the parts. Listing reads the descriptions; deleting removes both files.
//! Kept until deleted, like voicemail; at most `max_stored` (a recording beyond is
//! discarded and logged). Nothing leaves the box unless the admin downloads it.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use pbx_core::media::g711;
use serde::{Deserialize, Serialize};

use crate::media::wav;

/// A description file larger than this is not ours: skipped.
const MAX_DESCRIPTION: u64 = 4 * 1024;

/// One recording as listed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RecordingEntry {
    /// Its number: the file name's stem.
    pub id: u64,
    /// The call's first Call-ID (the call records' `linked_id`).
    pub call_id: String,
    pub caller: String,
    pub callee: String,
    /// The extension that asked for it.
    pub by: String,
    /// When it started (ms since the epoch).
    pub started: u64,
    pub duration_ms: u32,
}

/// What the call core reported of a finished recording.
#[derive(Debug, Clone)]
pub struct Finished {
    pub call_id: String,
    pub caller: String,
    pub callee: String,
    pub by: String,
    pub started: u64,
    /// Each leg's file, when it was written.
    pub parts: [Option<PathBuf>; 2],
}

/// The recordings directory.
#[derive(Debug, Clone)]
pub struct Recordings {
    dir: PathBuf,
    max_stored: usize,
}

impl Recordings {
    /// The recordings under `dir`, at most `max_stored` of them.
    pub fn new(dir: PathBuf, max_stored: usize) -> Recordings {
        Recordings { dir, max_stored }
    }

    /// The directory (the call core writes the parts there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every recording (of calls `ext` was in, when given), newest first.
    pub fn list(&self, ext: Option<&str>) -> Vec<RecordingEntry> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<RecordingEntry> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .take(self.max_stored.saturating_mul(2))
            .filter_map(|e| read_description(&e.path()))
            .filter(|r| ext.is_none_or(|x| r.caller == x || r.callee == x || r.by == x))
            .collect();
        out.sort_by(|a, b| b.started.cmp(&a.started).then(b.id.cmp(&a.id)));
        out
    }

    /// Recording `id` and its audio file.
    pub fn get(&self, id: u64) -> Option<(RecordingEntry, PathBuf)> {
        let entry = read_description(&self.dir.join(format!("{id}.json")))?;
        Some((entry, self.dir.join(format!("{id}.wav"))))
    }

    /// Deletes recording `id` (audio and description); its description, or `None` when
    /// there is no such recording.
    pub fn delete(&self, id: u64) -> std::io::Result<Option<RecordingEntry>> {
        let Some((entry, wav)) = self.get(id) else {
            return Ok(None);
        };
        match fs::remove_file(&wav) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::remove_file(self.dir.join(format!("{id}.json")))?;
        Ok(Some(entry))
    }

    /// Mixes a finished recording's parts into one recording and describes it; removes
    /// the parts. Blocking (reads and writes up to a few MB): run it off the SIP loop.
    pub fn store(&self, done: &Finished) -> Result<RecordingEntry, String> {
        let parts: Vec<Vec<u8>> = done
            .parts
            .iter()
            .flatten()
            .map(|p| wav::read_ulaw(p).map_err(|e| format!("{}: {e}", p.display())))
            .collect::<Result<_, _>>()?;
        for p in done.parts.iter().flatten() {
            let _ = fs::remove_file(p);
        }
        if parts.is_empty() {
            return Err("neither leg's recording was written".into());
        }
        if self.list(None).len() >= self.max_stored {
            return Err(format!(
                "{} recordings are stored already (recording.max_stored); delete some",
                self.max_stored
            ));
        }
        let samples = mix(&parts);
        let mut id = done.started.saturating_mul(10);
        while self.dir.join(format!("{id}.json")).exists() {
            id += 1;
        }
        let entry = RecordingEntry {
            id,
            call_id: done.call_id.clone(),
            caller: done.caller.clone(),
            callee: done.callee.clone(),
            by: done.by.clone(),
            started: done.started,
            duration_ms: u32::try_from(samples.len() / 8).unwrap_or(u32::MAX),
        };
        wav::write_ulaw(&self.dir.join(format!("{id}.wav")), &samples)
            .map_err(|e| format!("cannot write the recording: {e}"))?;
        let json = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
        fs::write(self.dir.join(format!("{id}.json")), json)
            .map_err(|e| format!("cannot write the recording's description: {e}"))?;
        Ok(entry)
    }
}

/// Finished recordings waiting for the mixing thread, at most.
const MIX_QUEUE: usize = 64;

/// The thread that mixes and stores finished recordings, off the SIP loop.
#[derive(Debug)]
pub struct Mixer {
    tx: mpsc::SyncSender<Finished>,
}

impl Mixer {
    /// Starts the thread storing into `recordings` (its directory is made, 0700).
    pub fn start(recordings: Recordings) -> std::io::Result<Mixer> {
        fs::create_dir_all(recordings.dir())?;
        let (tx, rx) = mpsc::sync_channel::<Finished>(MIX_QUEUE);
        std::thread::Builder::new()
            .name("recordings".into())
            .spawn(move || {
                for done in rx {
                    match recordings.store(&done) {
                        Ok(r) => tracing::info!(
                            id = r.id,
                            caller = %r.caller,
                            callee = %r.callee,
                            by = %r.by,
                            duration_ms = r.duration_ms,
                            "call recording stored"
                        ),
                        Err(err) => tracing::error!(
                            caller = %done.caller,
                            callee = %done.callee,
                            "call recording not stored: {err}"
                        ),
                    }
                }
            })?;
        Ok(Mixer { tx })
    }

    /// Queues a finished recording; a full queue discards it (logged) and removes its parts.
    pub fn submit(&self, done: Finished) {
        if let Err(mpsc::TrySendError::Full(done) | mpsc::TrySendError::Disconnected(done)) =
            self.tx.try_send(done)
        {
            tracing::error!(caller = %done.caller, callee = %done.callee, "call recording discarded: the mixing queue is full");
            for p in done.parts.iter().flatten() {
                let _ = fs::remove_file(p);
            }
        }
    }
}

fn read_description(path: &Path) -> Option<RecordingEntry> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_DESCRIPTION {
        return None;
    }
    let entry: RecordingEntry = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
    // The file's name is its number: a description naming another is not trusted.
    let stem = path.file_stem()?.to_str()?;
    (stem == entry.id.to_string()).then_some(entry)
}

/// The sum of µ-law streams that start together, saturated, as long as the longest.
pub fn mix(parts: &[Vec<u8>]) -> Vec<u8> {
    let len = parts.iter().map(Vec::len).max().unwrap_or(0);
    (0..len)
        .map(|i| {
            let sum: i32 = parts
                .iter()
                .filter_map(|p| p.get(i))
                .map(|&u| i32::from(g711::ulaw_to_linear(u)))
                .sum();
            let clamped = sum.clamp(i32::from(i16::MIN), i32::from(i16::MAX));
            g711::linear_to_ulaw(i16::try_from(clamped).unwrap_or(0))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    fn tone(len: usize, amp: i16) -> Vec<u8> {
        (0..len)
            .map(|i| g711::linear_to_ulaw(if i % 2 == 0 { amp } else { -amp }))
            .collect()
    }

    #[test]
    fn mixing_sums_both_legs_saturates_and_keeps_the_longer() {
        let a = tone(4, 1000);
        let b = tone(6, 2000);
        let m = mix(&[a, b]);
        assert_eq!(m.len(), 6);
        let lin: Vec<i16> = m.iter().map(|&u| g711::ulaw_to_linear(u)).collect();
        assert!((2900..=3100).contains(&lin[0]), "{lin:?}");
        assert!((1900..=2100).contains(&lin[4]), "{lin:?}");
        let loud = mix(&[tone(2, 30_000), tone(2, 30_000)]);
        assert!(g711::ulaw_to_linear(loud[0]) > 30_000);
    }

    #[test]
    fn a_recording_is_stored_listed_fetched_and_deleted_and_parts_removed() {
        let dir = tempfile::tempdir().unwrap();
        let recs = Recordings::new(dir.path().to_path_buf(), 2);
        let part = |name: &str, samples: &[u8]| {
            let p = dir.path().join(name);
            wav::write_ulaw(&p, samples).unwrap();
            p
        };
        let done = Finished {
            call_id: "c1".into(),
            caller: "100".into(),
            callee: "101".into(),
            by: "100".into(),
            started: 1_700_000_000_000,
            parts: [
                Some(part("x-a.wav", &tone(800, 500))),
                Some(part("x-b.wav", &tone(1600, 700))),
            ],
        };
        let entry = recs.store(&done).unwrap();
        assert_eq!(entry.duration_ms, 200);
        assert!(!dir.path().join("x-a.wav").exists() && !dir.path().join("x-b.wav").exists());
        assert_eq!(recs.list(None), std::slice::from_ref(&entry));
        assert_eq!(recs.list(Some("101")).len(), 1);
        assert!(recs.list(Some("102")).is_empty());
        let (got, wav_path) = recs.get(entry.id).unwrap();
        assert_eq!(got, entry);
        assert_eq!(wav::read_ulaw(&wav_path).unwrap().len(), 1600);
        // One leg failed: the other alone is kept. The cap refuses the third.
        let one = Finished {
            parts: [None, Some(part("y-b.wav", &tone(80, 700)))],
            ..done.clone()
        };
        assert!(recs.store(&one).is_ok());
        let third = Finished {
            parts: [Some(part("z-a.wav", &tone(80, 700))), None],
            ..done
        };
        assert!(recs.store(&third).unwrap_err().contains("max_stored"));
        assert_eq!(recs.list(None).len(), 2);
        assert_eq!(recs.delete(entry.id).unwrap(), Some(entry.clone()));
        assert_eq!(recs.delete(entry.id).unwrap(), None);
        assert_eq!(recs.list(None).len(), 1);
        // A description under another file's name is not trusted.
        fs::write(
            dir.path().join("5.json"),
            br#"{"id":6,"call_id":"","caller":"","callee":"","by":"","started":0,"duration_ms":0}"#,
        )
        .unwrap();
        assert_eq!(recs.list(None).len(), 1);
    }
}

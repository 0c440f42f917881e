//! The relay's file thread: disk I/O that must not stall the packet loop.
//!
//! Writing a recording means a sync to flash (tens of milliseconds on an SD card, whatever
//! the file's size), and reading a voicemail message for playback may miss the page cache;
//! either would delay every call's packets if the relay thread did it. So the relay thread
//! hands finished recordings (µ-law samples in memory, at most [`MAX_RECORD_MS`] each) and
//! playlists that name files to this one thread, which writes or reads them and reports
//! back: `RecordingDone`/`RecordingFailed` straight to the daemon's event channel, loaded
//! clips to the relay through a callback. Jobs are bounded by the sessions that exist
//! (one recording and one playlist per leg), so the queue needs no further bound.
//!
//! [`MAX_RECORD_MS`]: super::player::MAX_RECORD_MS

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use tokio::sync::mpsc as tokio_mpsc;

use pbx_core::media::session::{Leg, MediaEvent, SessionId};

use super::prompts::PromptStore;
use super::wav;

/// Work for the file thread.
#[derive(Debug)]
pub(crate) enum FileJob {
    /// Write a finished recording as a µ-law WAV file, then report it.
    Write {
        session: SessionId,
        leg: Leg,
        path: PathBuf,
        samples: Vec<u8>,
    },
    /// Resolve a playlist whose clips include files; the result goes to the callback.
    Load(Playlist),
}

/// A playlist to resolve: prompt names and absolute WAV file paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Playlist {
    pub session: SessionId,
    pub leg: Leg,
    /// Tells the relay whether this is still the leg's latest `Play`.
    pub generation: u64,
    pub clips: Vec<String>,
    pub repeat: bool,
}

/// A resolved playlist: the audio of every clip that was found.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub playlist: Playlist,
    pub audio: Vec<Arc<[u8]>>,
}

/// Handle of the file thread; dropping it lets the thread finish its queue and exit.
#[derive(Debug)]
pub(crate) struct FileWorker {
    tx: Option<mpsc::Sender<FileJob>>,
    thread: Option<JoinHandle<()>>,
}

impl FileWorker {
    /// Starts the thread. `loaded` is called (on the file thread) with each resolved
    /// playlist; `events` receives the recording reports.
    pub(crate) fn start(
        prompts: Arc<PromptStore>,
        events: tokio_mpsc::Sender<MediaEvent>,
        loaded: impl Fn(Loaded) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<FileJob>();
        let thread = std::thread::Builder::new()
            .name("media-files".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        FileJob::Write {
                            session,
                            leg,
                            path,
                            samples,
                        } => emit(&events, write_recording(session, leg, path, &samples)),
                        FileJob::Load(playlist) => {
                            let audio = resolve(&prompts, &playlist.clips);
                            loaded(Loaded { playlist, audio });
                        }
                    }
                }
            })?;
        Ok(FileWorker {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a job (dropped with an error log if the thread is gone).
    pub(crate) fn submit(&self, job: FileJob) {
        let Some(tx) = &self.tx else {
            return;
        };
        if tx.send(job).is_err() {
            tracing::error!("media file thread is gone; a recording or playlist is lost");
        }
    }

    /// Lets the thread finish what is queued and waits for it.
    pub(crate) fn finish(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("media file thread panicked");
            }
        }
    }
}

impl Drop for FileWorker {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Most clips in one playlist; the rest are ignored.
pub(crate) const MAX_CLIPS: usize = 64;
/// Most bytes of WAV files one playlist may load (the prompts are shared, not counted).
pub(crate) const MAX_PLAYLIST_FILE_BYTES: usize = 16 * 1024 * 1024;

/// The audio of each clip: a prompt by name, or a WAV file by absolute path. Clips that
/// cannot be found or read, clips beyond [`MAX_CLIPS`] and files beyond
/// [`MAX_PLAYLIST_FILE_BYTES`] are skipped with a warning.
pub(crate) fn resolve(prompts: &PromptStore, clips: &[String]) -> Vec<Arc<[u8]>> {
    if clips.len() > MAX_CLIPS {
        tracing::warn!(
            "playback: {} clips, only the first {MAX_CLIPS} play",
            clips.len()
        );
    }
    let mut file_bytes = 0usize;
    let mut audio = Vec::with_capacity(clips.len().min(MAX_CLIPS));
    for clip in clips.iter().take(MAX_CLIPS) {
        if is_file_clip(clip) {
            match wav::read_ulaw(Path::new(clip)) {
                Ok(samples) if file_bytes + samples.len() > MAX_PLAYLIST_FILE_BYTES => {
                    tracing::warn!("playback: {clip} skipped, the playlist is too large");
                }
                Ok(samples) => {
                    file_bytes += samples.len();
                    audio.push(Arc::from(samples));
                }
                Err(e) => tracing::warn!("playback: cannot play {clip}: {e}"),
            }
        } else {
            match prompts.get(clip) {
                Some(samples) => audio.push(Arc::clone(samples)),
                None => tracing::warn!(
                    "playback: no prompt named {clip:?} (generate them with \
                     scripts/make-prompts)"
                ),
            }
        }
    }
    audio
}

/// Whether a clip names a file (an absolute path) rather than a prompt.
pub(crate) fn is_file_clip(clip: &str) -> bool {
    clip.starts_with('/')
}

fn write_recording(session: SessionId, leg: Leg, path: PathBuf, samples: &[u8]) -> MediaEvent {
    match wav::write_ulaw(&path, samples) {
        Ok(()) => MediaEvent::RecordingDone {
            session,
            leg,
            path,
            duration_ms: u32::try_from(samples.len() / 8).unwrap_or(u32::MAX),
        },
        Err(e) => {
            tracing::error!("recording: cannot write {}: {e}", path.display());
            MediaEvent::RecordingFailed {
                session,
                leg,
                path,
                reason: e.to_string(),
            }
        }
    }
}

fn emit(events: &tokio_mpsc::Sender<MediaEvent>, event: MediaEvent) {
    if let Err(tokio_mpsc::error::TrySendError::Full(event)) = events.try_send(event) {
        tracing::error!("media events queue full; lost {event:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recordings_are_written_and_reported_and_playlists_resolved() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (tx, mut rx) = tokio_mpsc::channel(8);
        let (loaded_tx, loaded_rx) = mpsc::channel();
        let mut worker = FileWorker::start(Arc::new(PromptStore::builtin()), tx, move |l| {
            let _ = loaded_tx.send(l);
        })
        .expect("thread starts");

        let path = dir.path().join("vm.wav");
        worker.submit(FileJob::Write {
            session: 4,
            leg: Leg::A,
            path: path.clone(),
            samples: vec![0xff; 16_000],
        });
        // A regular file where the mailbox directory should be: cannot be written.
        std::fs::write(dir.path().join("not-a-dir"), b"x").expect("write");
        let bad = dir.path().join("not-a-dir").join("x.wav");
        worker.submit(FileJob::Write {
            session: 4,
            leg: Leg::B,
            path: bad.clone(),
            samples: vec![1],
        });
        let playlist = Playlist {
            session: 4,
            leg: Leg::A,
            generation: 9,
            clips: vec![
                path.display().to_string(),
                "beep".into(),
                "nonexistent".into(),
            ],
            repeat: false,
        };
        worker.submit(FileJob::Load(playlist.clone()));
        worker.finish();

        assert_eq!(
            rx.try_recv().ok(),
            Some(MediaEvent::RecordingDone {
                session: 4,
                leg: Leg::A,
                path: path.clone(),
                duration_ms: 2000
            })
        );
        assert!(matches!(
            rx.try_recv(),
            Ok(MediaEvent::RecordingFailed { leg: Leg::B, path, .. }) if path == bad
        ));
        let loaded = loaded_rx.recv().expect("loaded");
        assert_eq!(loaded.playlist, playlist);
        let lens: Vec<usize> = loaded.audio.iter().map(|a| a.len()).collect();
        assert_eq!(
            lens,
            vec![16_000, 4000],
            "the WAV and the beep; unknown skipped"
        );
    }
}

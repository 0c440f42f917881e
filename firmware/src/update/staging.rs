//! Updates from the web page: the daemon stages a bundle in a spool directory, the
//! installer agent (`outpostctl update agent`, a separate process with the admin's rights)
//! installs it. outpostd never gets the right to write a firmware slot.
//!
//! The spool directory (`/data/spool/update` on the image, `outpost:outpost-admin` 2770;
//! `<data_dir>/update-spool` elsewhere) holds, at most:
//! - `bundle.partial`: the upload in progress, written by the daemon piece by piece;
//! - `bundle`: an upload that passed [`super::check_bundle`] at its finish (mode 0640);
//! - `request`: one line for the agent, [`Request`] (at most [`MAX_REQUEST`] bytes);
//! - `state`: the agent's [`AgentState`] (JSON, at most [`MAX_STATE`] bytes, 0644).
//!
//! Who trusts what: the agent never trusts the daemon's check (it runs [`super::install`],
//! which verifies the signature and the payload again), opens what the daemon wrote without
//! following symbolic links and replaces its own state file by `O_EXCL` creation and a
//! rename, so a daemon that plants links in the directory can only fool its own page. The
//! daemon in turn only shows the agent's state. One bundle at a time: an upload is refused
//! while another is in progress, a bundle waits for the agent, or the agent installs.
//!
//! Blocking code: the daemon runs it on a blocking thread, the agent in `outpostctl`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::chunk::{free_space, PieceError, PieceWriter};

pub use crate::admin::update::{AgentState, SpoolStatus, UploadState, CHUNK, MAX_BUNDLE};

use super::{check_bundle, InstallOptions, Layout, UpdateError};

/// Free space an upload always leaves on the file system (the daemon's store needs room).
pub const RESERVE: u64 = 64 * 1024 * 1024;
/// An upload without a request for this long is abandoned (the next one replaces it).
pub const IDLE: Duration = Duration::from_secs(120);
/// Longest request line the agent reads.
pub const MAX_REQUEST: u64 = 256;
/// Largest state file read.
pub const MAX_STATE: u64 = 16 * 1024;

/// The upload in progress.
pub const PARTIAL: &str = "bundle.partial";
/// The checked bundle waiting for (or being installed by) the agent.
pub const BUNDLE: &str = "bundle";
/// The request line for the agent.
pub const REQUEST: &str = "request";
/// The agent's state.
pub const STATE: &str = "state";

/// Why a staging command was refused.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// Another upload is in progress.
    #[error("another update upload is in progress; try again when it has finished (or in {} s, when it is abandoned)", IDLE.as_secs())]
    Busy,
    /// A bundle waits for the installer or is being installed.
    #[error("the installer is busy with {0}; wait until it has finished")]
    InstallerBusy(String),
    /// The id names no upload in progress.
    #[error("no update upload {0} in progress (it was finished, aborted, or abandoned after {secs} s without data)", secs = IDLE.as_secs())]
    Unknown(String),
    /// A piece does not continue where the last one ended.
    #[error("the piece starts at byte {got}, but {expected} bytes were received")]
    Offset {
        /// The offset sent.
        got: u64,
        /// The bytes received.
        expected: u64,
    },
    /// The data is not base64 or too large.
    #[error("{0}")]
    Chunk(String),
    /// More than announced, or more than [`MAX_BUNDLE`].
    #[error("the bundle is larger than {limit} bytes ({what})")]
    TooLarge {
        /// The limit passed.
        limit: u64,
        /// Which limit.
        what: &'static str,
    },
    /// The file system would fill up.
    #[error(
        "not enough space on the box: {free} bytes free, {need} needed ({RESERVE} must stay free)"
    )]
    NoSpace {
        /// Bytes free.
        free: u64,
        /// Bytes the upload needs with the reserve.
        need: u64,
    },
    /// The checksum does not match what the client sent.
    #[error("the upload arrived damaged: {0}")]
    Mismatch(String),
    /// The bundle is not one this box installs (the reason is the installer's own).
    #[error("the bundle was refused: {0}")]
    Refused(UpdateError),
    /// A reboot was asked for with nothing installed.
    #[error("nothing is installed and armed: there is nothing to reboot into")]
    NothingArmed,
    /// A file operation failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StagingError {
    let path = path.display().to_string();
    move |source| StagingError::Io { what, path, source }
}

impl From<PieceError> for StagingError {
    fn from(e: PieceError) -> Self {
        match e {
            PieceError::Offset { got, expected } => StagingError::Offset { got, expected },
            PieceError::Data(why) => StagingError::Chunk(why),
        }
    }
}

/// The upload in progress.
#[derive(Debug)]
pub struct Upload {
    spool: PathBuf,
    /// `bundle.partial`, written piece by piece.
    file: PieceWriter,
    size: u64,
}

impl Upload {
    /// Starts receiving a bundle of at most `size` bytes into `spool` (made if missing).
    /// The caller makes sure no other upload runs; this refuses while the agent has work.
    pub fn begin(spool: &Path, size: u64) -> Result<Upload, StagingError> {
        if size > MAX_BUNDLE {
            return Err(StagingError::TooLarge {
                limit: MAX_BUNDLE,
                what: "the most an update upload may have",
            });
        }
        std::fs::create_dir_all(spool).map_err(io_err("create", spool))?;
        if let Some(busy) = installer_busy(spool) {
            return Err(StagingError::InstallerBusy(busy));
        }
        let need = size.saturating_add(RESERVE);
        let free = free_space(spool).map_err(io_err("measure the free space of", spool))?;
        if free < need {
            return Err(StagingError::NoSpace { free, need });
        }
        // What an earlier upload or a finished install left: only one bundle is ever here.
        for name in [PARTIAL, BUNDLE] {
            let path = spool.join(name);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err("remove", &path)(e))
                }
                _ => {}
            }
        }
        let partial = spool.join(PARTIAL);
        let file = PieceWriter::create(&partial).map_err(io_err("create", &partial))?;
        Ok(Upload {
            spool: spool.to_path_buf(),
            file,
            size,
        })
    }

    /// The upload's id.
    pub fn id(&self) -> &str {
        self.file.id()
    }

    /// No request for [`IDLE`].
    pub fn is_abandoned(&self) -> bool {
        self.file.idle_for(IDLE)
    }

    /// Where it stands.
    pub fn state(&self) -> UploadState {
        UploadState {
            id: self.file.id().to_owned(),
            received: self.file.received(),
            size: self.size,
            checked: None,
        }
    }

    /// Appends one piece (`data` in base64) that must start at `offset`.
    pub fn chunk(&mut self, offset: u64, data: &str) -> Result<UploadState, StagingError> {
        let bytes = self.file.piece(offset, data)?;
        let len = bytes.len() as u64;
        if self.file.received().saturating_add(len) > self.size {
            return Err(StagingError::TooLarge {
                limit: self.size,
                what: "the size announced at the start",
            });
        }
        let partial = self.spool.join(PARTIAL);
        self.file.write(&bytes).map_err(io_err("write", &partial))?;
        Ok(self.state())
    }

    /// The upload is complete: checks the client's SHA-256, then the bundle as the
    /// installer would (signature, board, kernel, release, payload); a good one becomes
    /// `bundle` with a request for the agent, a bad one is deleted with the reason.
    pub fn finish(
        self,
        layout: &Layout,
        sha256: &str,
        opts: InstallOptions,
    ) -> Result<UploadState, StagingError> {
        let partial = self.spool.join(PARTIAL);
        let result = self.check_and_hand_over(layout, sha256, opts);
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result
    }

    fn check_and_hand_over(
        &self,
        layout: &Layout,
        sha256: &str,
        opts: InstallOptions,
    ) -> Result<UploadState, StagingError> {
        let partial = self.spool.join(PARTIAL);
        let got = self.file.sha256();
        if !got.eq_ignore_ascii_case(sha256.trim()) {
            return Err(StagingError::Mismatch(format!(
                "its SHA-256 is {got}, the one sent is {}",
                sha256.trim()
            )));
        }
        self.file.sync().map_err(io_err("sync", &partial))?;
        let mut reader = io::BufReader::with_capacity(
            256 * 1024,
            File::open(&partial).map_err(io_err("open", &partial))?,
        );
        let checked = check_bundle(layout, &mut reader, opts).map_err(StagingError::Refused)?;
        // The agent (the admin group) reads it; nobody else.
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o640))
            .map_err(io_err("set the mode of", &partial))?;
        let bundle = self.spool.join(BUNDLE);
        std::fs::rename(&partial, &bundle).map_err(io_err("rename", &partial))?;
        write_request(
            &self.spool,
            &Request::Install {
                id: self.file.id().to_owned(),
                force: opts.force,
            },
        )?;
        tracing::info!(
            id = %self.file.id(),
            release = %checked.release,
            bytes = self.file.received(),
            "update bundle received and checked; handed to the installer"
        );
        Ok(UploadState {
            id: self.file.id().to_owned(),
            received: self.file.received(),
            size: self.size,
            checked: Some(checked),
        })
    }

    /// Gives up: deletes the partial file.
    pub fn abort(self) {
        let partial = self.spool.join(PARTIAL);
        match std::fs::remove_file(&partial) {
            Ok(()) => {
                tracing::info!(id = %self.file.id(), bytes = self.file.received(), "update upload abandoned")
            }
            Err(err) => {
                tracing::warn!(file = %partial.display(), %err, "cannot remove an abandoned update upload")
            }
        }
    }
}

/// What the agent has to do or is doing, in words; `None` when it is free.
fn installer_busy(spool: &Path) -> Option<String> {
    if let Ok(Some(Request::Install { id, .. })) = read_request(spool) {
        return Some(format!("bundle {id}, waiting to be installed"));
    }
    match read_state(spool) {
        Ok(AgentState::Installing { id, .. }) => Some(format!("bundle {id}")),
        _ => None,
    }
}

/// One request for the agent: the line `install <id>[ force]` or `reboot <id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Install `bundle` (forced: an older or the running release too).
    Install {
        /// The upload's id.
        id: String,
        /// Allow a downgrade or reinstall.
        force: bool,
    },
    /// Reboot into the slot the install `id` armed.
    Reboot {
        /// The install's id.
        id: String,
    },
}

/// An id is 1 to 32 lowercase hex digits (what [`Upload::begin`] makes).
fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Request {
    /// Parses one request line; anything else is `None`.
    pub fn parse(line: &str) -> Option<Request> {
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        match words.as_slice() {
            ["install", id] if valid_id(id) => Some(Request::Install {
                id: (*id).to_owned(),
                force: false,
            }),
            ["install", id, "force"] if valid_id(id) => Some(Request::Install {
                id: (*id).to_owned(),
                force: true,
            }),
            ["reboot", id] if valid_id(id) => Some(Request::Reboot {
                id: (*id).to_owned(),
            }),
            _ => None,
        }
    }

    /// The line, newline included.
    pub fn render(&self) -> String {
        match self {
            Request::Install { id, force: false } => format!("install {id}\n"),
            Request::Install { id, force: true } => format!("install {id} force\n"),
            Request::Reboot { id } => format!("reboot {id}\n"),
        }
    }
}

/// Replaces `name` in `dir` with `text`, readable by `mode`: a fresh `name.new` (never one
/// that is there already, nor through a link), synced, renamed over.
fn replace_file(dir: &Path, name: &str, text: &[u8], mode: u32) -> Result<(), StagingError> {
    let tmp = dir.join(format!("{name}.new"));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("remove", &tmp)(e)),
        _ => {}
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    // The mode given to open is masked by the umask (the daemon's is 077).
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| f.write_all(text))
        .and_then(|()| f.sync_all())
        .map_err(io_err("write", &tmp))?;
    drop(f);
    let path = dir.join(name);
    std::fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))
}

/// Opens `path` for reading without following a link or blocking on a FIFO, and reads
/// at most `max` bytes of it (`None`: there is none).
fn read_bounded(path: &Path, max: u64) -> io::Result<Option<String>> {
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    f.take(max).read_to_string(&mut text)?;
    Ok(Some(text))
}

/// Hands `request` to the agent (the daemon; replaces an earlier one).
pub fn write_request(spool: &Path, request: &Request) -> Result<(), StagingError> {
    replace_file(spool, REQUEST, request.render().as_bytes(), 0o640)
}

/// The request waiting for the agent, if any. A line that is not a request is an error.
pub fn read_request(spool: &Path) -> Result<Option<Request>, StagingError> {
    let path = spool.join(REQUEST);
    let Some(text) = read_bounded(&path, MAX_REQUEST).map_err(io_err("read", &path))? else {
        return Ok(None);
    };
    let line = text.lines().next().unwrap_or_default();
    Request::parse(line)
        .map(Some)
        .ok_or_else(|| StagingError::Io {
            what: "understand",
            path: path.display().to_string(),
            source: io::Error::new(io::ErrorKind::InvalidData, "not a request line"),
        })
}

/// Removes the request (the agent, when it takes it on).
pub fn take_request(spool: &Path) -> Result<(), StagingError> {
    let path = spool.join(REQUEST);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &path)(e)),
        _ => Ok(()),
    }
}

/// Writes the agent's state (the agent; readable by the daemon).
pub fn write_state(spool: &Path, state: &AgentState) -> Result<(), StagingError> {
    let json = serde_json::to_vec(state).map_err(|e| StagingError::Io {
        what: "encode",
        path: STATE.to_owned(),
        source: io::Error::other(e),
    })?;
    replace_file(spool, STATE, &json, 0o644)
}

/// The agent's state; [`AgentState::Idle`] when it wrote none.
pub fn read_state(spool: &Path) -> Result<AgentState, StagingError> {
    let path = spool.join(STATE);
    match read_bounded(&path, MAX_STATE).map_err(io_err("read", &path))? {
        None => Ok(AgentState::Idle),
        Some(text) => serde_json::from_str(&text).map_err(|e| StagingError::Io {
            what: "understand",
            path: path.display().to_string(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        }),
    }
}

/// The spool's status (the upload in progress is the caller's).
pub fn status(spool: &Path, upload: Option<UploadState>) -> SpoolStatus {
    let pending = read_request(spool)
        .ok()
        .flatten()
        .map(|r| r.render().trim_end().to_owned());
    let (agent, agent_error) = match read_state(spool) {
        Ok(s) => (s, None),
        Err(e) => (AgentState::Idle, Some(e.to_string())),
    };
    SpoolStatus {
        upload,
        pending,
        agent,
        agent_error,
    }
}

/// Asks the agent to reboot into the slot its last install armed.
pub fn request_reboot(spool: &Path) -> Result<String, StagingError> {
    match read_state(spool)? {
        AgentState::Installed { id, slot, .. } => {
            write_request(spool, &Request::Reboot { id })?;
            Ok(format!("the installer reboots the box into slot {slot}"))
        }
        _ => Err(StagingError::NothingArmed),
    }
}

/// What the agent does when it starts: an install it was cut off in (the agent or the box
/// stopped) is reported as failed; a reboot that happened, or an armed slot that is no
/// longer armed (booted, or replaced over SSH), is no longer offered.
pub fn agent_start(layout: &Layout, spool: &Path) -> Result<(), StagingError> {
    let fresh = match read_state(spool) {
        Ok(AgentState::Installing { id, .. }) => Some(AgentState::failed(
            &id,
            "the installer stopped in the middle of the install; nothing was armed, upload the bundle again",
        )),
        Ok(AgentState::Rebooting { .. }) => Some(AgentState::Idle),
        Ok(AgentState::Installed { slot, .. }) => {
            let armed = super::status(layout).ok().and_then(|s| s.armed);
            (armed.map(|s| s.as_str()) != Some(slot.as_str())).then_some(AgentState::Idle)
        }
        _ => None,
    };
    match fresh {
        Some(state) => write_state(spool, &state),
        None => Ok(()),
    }
}

/// One round of the installer agent: takes the waiting request, if any, and carries it
/// out with [`super::install`] (which checks the bundle again: the daemon's check is not
/// trusted). `reboot` asks init for the reboot. `Ok(false)`: there was nothing to do.
pub fn agent_step(
    layout: &Layout,
    spool: &Path,
    now_secs: u64,
    reboot: &mut dyn FnMut() -> Result<(), String>,
) -> Result<bool, StagingError> {
    let request = match read_request(spool) {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(false),
        Err(e) => {
            // Not a request: dropped, so that it is not read again every round.
            take_request(spool)?;
            return Err(e);
        }
    };
    // Taken before it is carried out: a crash in the middle never repeats it in a loop.
    take_request(spool)?;
    match request {
        Request::Install { id, force } => {
            write_state(
                spool,
                &AgentState::Installing {
                    id: id.clone(),
                    percent: 0,
                    slot: None,
                },
            )?;
            let outcome = install_staged(layout, spool, &id, force, now_secs);
            let bundle = spool.join(BUNDLE);
            if let Err(e) = std::fs::remove_file(&bundle) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(file = %bundle.display(), err = %e, "cannot remove the installed bundle");
                }
            }
            let state = match outcome {
                Ok(done) => AgentState::Installed {
                    id,
                    slot: done.slot.as_str().to_owned(),
                    booted: done.booted.as_str().to_owned(),
                    release: done.release,
                    key_id: done.key_id,
                    forced: done.forced,
                },
                Err(reason) => AgentState::failed(&id, &reason),
            };
            write_state(spool, &state)?;
        }
        Request::Reboot { id } => match read_state(spool)? {
            AgentState::Installed {
                id: installed,
                slot,
                ..
            } if installed == id => {
                let before = read_state(spool)?;
                write_state(spool, &AgentState::Rebooting { id, slot })?;
                if let Err(why) = reboot() {
                    // Still installed and armed: the page offers the reboot again.
                    write_state(spool, &before)?;
                    return Err(StagingError::Io {
                        what: "reboot through",
                        path: "init".to_owned(),
                        source: io::Error::other(why),
                    });
                }
            }
            _ => return Err(StagingError::NothingArmed),
        },
    }
    Ok(true)
}

/// Installs `spool/bundle`; the error is the installer's reason.
fn install_staged(
    layout: &Layout,
    spool: &Path,
    id: &str,
    force: bool,
    now_secs: u64,
) -> Result<super::Installed, String> {
    let path = spool.join(BUNDLE);
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| format!("cannot open the uploaded bundle {}: {e}", path.display()))?;
    match file.metadata() {
        Ok(m) if m.is_file() => {}
        _ => return Err(format!("{} is not a regular file", path.display())),
    }
    let mut reader = io::BufReader::with_capacity(256 * 1024, file);
    super::install(
        layout,
        &mut reader,
        InstallOptions { force },
        now_secs,
        &mut |p| {
            let (slot, percent) = match p {
                super::Progress::Verified { slot } => (slot, 0),
                super::Progress::Writing { slot, percent } => (slot, percent),
                super::Progress::Verifying { slot } => (slot, 100),
            };
            // Progress is for the page only: a failed write of it changes nothing.
            let _ = write_state(
                spool,
                &AgentState::Installing {
                    id: id.to_owned(),
                    percent,
                    slot: Some(slot.as_str().to_owned()),
                },
            );
        },
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use base64::Engine as _;

    use sha2::{Digest, Sha256};

    use super::*;
    use crate::update::tests::{bundle_with, payload, FakeBox};
    use crate::update::Slot;

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    /// Uploads `bytes` in pieces of `piece` bytes.
    fn upload(spool: &Path, bytes: &[u8], piece: usize) -> Upload {
        let mut up = Upload::begin(spool, bytes.len() as u64).unwrap();
        let mut at = 0;
        for p in bytes.chunks(piece) {
            up.chunk(at, &b64(p)).unwrap();
            at += p.len() as u64;
        }
        up
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_good_bundle_is_checked_and_handed_to_the_installer() {
        let b = FakeBox::new(Slot::A, false, "slot=a\n");
        let spool = b.layout.bootdata.parent().unwrap().join("spool");
        let bundle = bundle_with(&b.key, &payload(), |_| {});
        let up = upload(&spool, &bundle, 7000);
        let id = up.id().to_owned();
        let done = up
            .finish(&b.layout, &sha(&bundle), InstallOptions::default())
            .unwrap();
        let checked = done.checked.unwrap();
        assert_eq!(checked.release.version, "0.2.0");
        assert!(!checked.forced);
        assert_eq!(names(&spool), [BUNDLE, REQUEST]);
        assert_eq!(std::fs::read(spool.join(BUNDLE)).unwrap(), bundle);
        let mode = std::fs::metadata(spool.join(BUNDLE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640, "the agent's group reads it");
        assert_eq!(
            read_request(&spool).unwrap(),
            Some(Request::Install { id, force: false })
        );
        // One bundle at a time: no new upload while it waits for the installer.
        assert!(matches!(
            Upload::begin(&spool, 10),
            Err(StagingError::InstallerBusy(_))
        ));
    }

    #[test]
    fn bad_uploads_are_refused_at_finish_with_the_reason_and_leave_nothing() {
        let b = FakeBox::new(Slot::A, false, "slot=a\n");
        let spool = b.layout.bootdata.parent().unwrap().join("spool");
        let rogue = outpost_bundle::generate_key();
        let p = payload();
        let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
            (
                "signature",
                bundle_with(&rogue, &p, |_| {}),
                false,
                "bad signature",
            ),
            (
                "board",
                bundle_with(&b.key, &p, |m| m.profile = "rpi4".to_owned()),
                false,
                "for board rpi4",
            ),
            (
                "downgrade",
                bundle_with(&b.key, &p, |m| m.release.version = "0.0.9".to_owned()),
                false,
                "downgrade refused",
            ),
            (
                "not a bundle",
                b"hello world".to_vec(),
                false,
                "not an Outpost update bundle",
            ),
            (
                "changed payload",
                {
                    let mut x = bundle_with(&b.key, &p, |_| {});
                    let last = x.len() - 1;
                    x[last] ^= 1;
                    x
                },
                true,
                "SHA-256",
            ),
        ];
        for (name, bytes, force, want) in cases {
            let up = upload(&spool, &bytes, 4096);
            let err = up
                .finish(&b.layout, &sha(&bytes), InstallOptions { force })
                .unwrap_err();
            assert!(matches!(err, StagingError::Refused(_)), "{name}: {err}");
            assert!(err.to_string().contains(want), "{name}: {err}");
            assert!(names(&spool).is_empty(), "{name}: {:?}", names(&spool));
        }
        // The downgrade goes through when forced.
        let old = bundle_with(&b.key, &p, |m| m.release.version = "0.0.9".to_owned());
        let up = upload(&spool, &old, 4096);
        let done = up
            .finish(&b.layout, &sha(&old), InstallOptions { force: true })
            .unwrap();
        assert!(done.checked.unwrap().forced);
        assert!(matches!(
            read_request(&spool).unwrap(),
            Some(Request::Install { force: true, .. })
        ));
    }

    #[test]
    fn sizes_offsets_and_hashes_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        assert!(matches!(
            Upload::begin(&spool, MAX_BUNDLE + 1),
            Err(StagingError::TooLarge { .. })
        ));
        assert!(matches!(
            Upload::begin(&spool, u64::MAX / 2),
            Err(StagingError::TooLarge { .. })
        ));
        let mut up = Upload::begin(&spool, 10).unwrap();
        up.chunk(0, &b64(b"hello")).unwrap();
        assert!(matches!(
            up.chunk(3, &b64(b"x")),
            Err(StagingError::Offset {
                got: 3,
                expected: 5
            })
        ));
        assert!(matches!(
            up.chunk(5, "not base64!"),
            Err(StagingError::Chunk(_))
        ));
        assert!(matches!(
            up.chunk(5, &b64(b"world!")),
            Err(StagingError::TooLarge { limit: 10, .. })
        ));
        let big = b64(&vec![1u8; CHUNK + 1]);
        assert!(matches!(up.chunk(5, &big), Err(StagingError::Chunk(_))));
        up.chunk(5, &b64(b"world")).unwrap();
        assert_eq!(up.state().received, 10);
        let layout = Layout::under(dir.path());
        let err = up
            .finish(&layout, &sha(b"something else"), InstallOptions::default())
            .unwrap_err();
        assert!(matches!(err, StagingError::Mismatch(_)), "{err}");
        assert!(names(&spool).is_empty(), "the partial file is gone");
        // An aborted upload leaves nothing either.
        let mut up = Upload::begin(&spool, 10).unwrap();
        up.chunk(0, &b64(b"abc")).unwrap();
        assert_eq!(names(&spool), [PARTIAL]);
        up.abort();
        assert!(names(&spool).is_empty());
    }

    #[test]
    fn requests_are_one_bounded_line() {
        for r in [
            Request::Install {
                id: "0123abcd".into(),
                force: false,
            },
            Request::Install {
                id: "ff".into(),
                force: true,
            },
            Request::Reboot { id: "9a".into() },
        ] {
            assert_eq!(Request::parse(&r.render()), Some(r.clone()));
        }
        for bad in [
            "",
            "install",
            "install ../../x",
            "install AB",
            "install ab now",
            "reboot",
            "rm -rf /",
            &format!("install {}", "a".repeat(33)),
        ] {
            assert_eq!(Request::parse(bad), None, "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(REQUEST), "install ab\n".repeat(100)).unwrap();
        assert!(
            read_request(dir.path()).unwrap().is_some(),
            "only the first line counts"
        );
        std::fs::write(dir.path().join(REQUEST), "a".repeat(10_000)).unwrap();
        assert!(read_request(dir.path()).is_err());
        // A link planted in the spool is not followed.
        std::fs::remove_file(dir.path().join(REQUEST)).unwrap();
        std::fs::write(dir.path().join("elsewhere"), "install ab\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join(REQUEST)).unwrap();
        assert!(read_request(dir.path()).is_err());
    }

    #[test]
    fn the_agent_installs_reports_and_reboots_on_request() {
        let b = FakeBox::new(Slot::A, false, "slot=a\n");
        let spool = b.layout.bootdata.parent().unwrap().join("spool");
        let bundle = bundle_with(&b.key, &payload(), |_| {});
        let up = upload(&spool, &bundle, 65536);
        let id = up.id().to_owned();
        up.finish(&b.layout, &sha(&bundle), InstallOptions::default())
            .unwrap();
        let mut reboots = 0;
        let mut reboot = || {
            reboots += 1;
            Ok(())
        };
        assert!(agent_step(&b.layout, &spool, 1_750_000_000, &mut reboot).unwrap());
        match read_state(&spool).unwrap() {
            AgentState::Installed {
                id: i,
                slot,
                booted,
                release,
                ..
            } => {
                assert_eq!(
                    (i.as_str(), slot.as_str(), booted.as_str()),
                    (id.as_str(), "b", "a")
                );
                assert_eq!(release.version, "0.2.0");
            }
            other => panic!("{other:?}"),
        }
        assert!(b.env().contains("try=b\n"), "armed: {}", b.env());
        assert_eq!(&b.slot("vda3")[..payload().len()], &payload()[..]);
        assert_eq!(names(&spool), [STATE], "bundle and request are gone");
        // Nothing more to do; then the reboot the page asks for.
        assert!(!agent_step(&b.layout, &spool, 1, &mut reboot).unwrap());
        request_reboot(&spool).unwrap();
        assert!(agent_step(&b.layout, &spool, 1, &mut reboot).unwrap());
        assert_eq!(reboots, 1);
        assert!(matches!(
            read_state(&spool).unwrap(),
            AgentState::Rebooting { ref slot, .. } if slot == "b"
        ));
        // No reboot when nothing is armed.
        assert!(matches!(
            request_reboot(&spool),
            Err(StagingError::NothingArmed)
        ));
    }

    #[test]
    fn the_agent_checks_again_and_never_trusts_the_daemon() {
        // A bundle the daemon did not check (or a compromised daemon): the installer's own
        // signature check refuses it and nothing is armed.
        let b = FakeBox::new(Slot::A, false, "slot=a\n");
        let spool = b.layout.bootdata.parent().unwrap().join("spool");
        std::fs::create_dir_all(&spool).unwrap();
        let rogue = outpost_bundle::generate_key();
        std::fs::write(spool.join(BUNDLE), bundle_with(&rogue, &payload(), |_| {})).unwrap();
        write_request(
            &spool,
            &Request::Install {
                id: "ab".into(),
                force: true,
            },
        )
        .unwrap();
        let mut reboot = || Ok(());
        assert!(agent_step(&b.layout, &spool, 1, &mut reboot).unwrap());
        match read_state(&spool).unwrap() {
            AgentState::Failed { id, reason } => {
                assert_eq!(id, "ab");
                assert!(reason.contains("bad signature"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(b.env(), "slot=a\n");
        assert!(b.slot("vda3").iter().all(|&x| x == 0xee));
        // A link instead of the bundle is not followed.
        std::fs::write(spool.join("real"), bundle_with(&b.key, &payload(), |_| {})).unwrap();
        std::os::unix::fs::symlink(spool.join("real"), spool.join(BUNDLE)).unwrap();
        write_request(
            &spool,
            &Request::Install {
                id: "cd".into(),
                force: false,
            },
        )
        .unwrap();
        assert!(agent_step(&b.layout, &spool, 1, &mut reboot).unwrap());
        assert!(matches!(
            read_state(&spool).unwrap(),
            AgentState::Failed { .. }
        ));
        assert_eq!(b.env(), "slot=a\n");
        // A planted state.new link does not redirect the agent's write.
        let target = spool.join("victim");
        std::fs::write(&target, "untouched").unwrap();
        std::os::unix::fs::symlink(&target, spool.join("state.new")).unwrap();
        write_state(&spool, &AgentState::Idle).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        assert_eq!(read_state(&spool).unwrap(), AgentState::Idle);
    }
}

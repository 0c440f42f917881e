//! `update` commands (the web page's uploads): runs the staging ([`crate::update::staging`])
//! on a blocking thread, never on the daemon's loop, and holds the one upload in progress.
//! Here rather than in the admin layer because staging belongs to [`crate::update`], a
//! client of the admin layer (as `facts` for `system`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use crate::admin::proto::Reply;
use crate::admin::update::UpdateCommand;
use crate::update::staging::{self, StagingError, Upload};
use crate::update::{InstallOptions, Layout};

/// The upload in progress (at most one), shared with the blocking threads.
#[derive(Debug, Default, Clone)]
pub(super) struct Updates {
    upload: Arc<Mutex<Option<Upload>>>,
}

/// Where the staging files go and which image's keys and release check them.
#[derive(Debug, Clone)]
pub(super) struct Paths {
    /// The spool directory shared with the installer agent.
    pub(super) spool: PathBuf,
    /// The image's paths (trusted keys, running release, kernel).
    pub(super) layout: Layout,
}

impl Paths {
    /// The spool (`--update-spool`, else `<data_dir>/update-spool`) and the image's paths
    /// (under `--system-root`).
    pub(super) fn new(data_dir: &std::path::Path) -> Paths {
        let fixed = crate::fixed::get();
        let root = &fixed.system_root;
        let layout = if root == std::path::Path::new("/") {
            Layout::system()
        } else {
            Layout::under(root)
        };
        Paths {
            spool: fixed
                .update_spool
                .clone()
                .unwrap_or_else(|| data_dir.join("update-spool")),
            layout,
        }
    }
}

impl Updates {
    /// No upload in progress.
    pub(super) fn new() -> Updates {
        Updates::default()
    }

    /// Runs `cmd` off the loop; `reply` gets the wire reply.
    pub(super) fn execute(&self, paths: Paths, cmd: UpdateCommand, reply: oneshot::Sender<Reply>) {
        let upload = self.upload.clone();
        tokio::task::spawn_blocking(move || {
            let answer = match run(&upload, &paths, cmd) {
                Ok(r) => r,
                Err(e) => Reply::error(e.to_string()),
            };
            let _ = reply.send(answer);
        });
    }
}

/// One command, on a blocking thread.
fn run(
    slot: &Mutex<Option<Upload>>,
    paths: &Paths,
    cmd: UpdateCommand,
) -> Result<Reply, StagingError> {
    // Held for the whole command: a piece and the finish of the same upload never overlap.
    let mut current = slot.lock().unwrap_or_else(PoisonError::into_inner);
    match cmd {
        UpdateCommand::UploadBegin { size } => {
            if let Some(up) = current.take() {
                if !up.is_abandoned() {
                    *current = Some(up);
                    return Err(StagingError::Busy);
                }
                up.abort();
            }
            let up = Upload::begin(&paths.spool, size)?;
            let state = up.state();
            *current = Some(up);
            Ok(Reply::UpdateUpload(state))
        }
        UpdateCommand::UploadChunk { id, offset, data } => {
            let up = matching(&mut current, &id)?;
            Ok(Reply::UpdateUpload(up.chunk(offset, &data)?))
        }
        UpdateCommand::UploadFinish { id, sha256, force } => {
            matching(&mut current, &id)?;
            let up = current.take().ok_or(StagingError::Unknown(id))?;
            let done = up.finish(&paths.layout, &sha256, InstallOptions { force })?;
            Ok(Reply::UpdateUpload(done))
        }
        UpdateCommand::UploadAbort { id } => {
            matching(&mut current, &id)?;
            if let Some(up) = current.take() {
                up.abort();
            }
            Ok(Reply::done(format!("update upload {id} abandoned")))
        }
        UpdateCommand::State => {
            if current.as_ref().is_some_and(Upload::is_abandoned) {
                if let Some(up) = current.take() {
                    up.abort();
                }
            }
            let upload = current.as_ref().map(Upload::state);
            Ok(Reply::UpdateState(staging::status(&paths.spool, upload)))
        }
        UpdateCommand::Reboot => Ok(Reply::done(staging::request_reboot(&paths.spool)?)),
    }
}

/// The upload in progress when its id is `id`.
fn matching<'a>(current: &'a mut Option<Upload>, id: &str) -> Result<&'a mut Upload, StagingError> {
    match current {
        Some(up) if up.id() == id => Ok(up),
        _ => Err(StagingError::Unknown(id.to_owned())),
    }
}

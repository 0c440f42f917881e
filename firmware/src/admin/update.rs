//! The wire types of the update commands (`{"cmd":"update","update":"state"}`): staging a
//! bundle uploaded through the web page for the installer agent and asking it to reboot.
//! Here, in the admin layer, because the protocol names them; the staging itself is
//! `crate::update::staging`, executed by the daemon off its loop.

use outpost_bundle::Release;
use serde::{Deserialize, Serialize};

/// Largest bundle accepted: the image's root slots are 128 MiB; this leaves room for
/// boards with larger slots (the installer refuses what does not fit the slot) and stays
/// well below what `/data` holds.
pub const MAX_BUNDLE: u64 = 512 * 1024 * 1024;
/// Largest piece of one `upload_chunk` (decoded); 1.4 MiB of base64 in a 4 MiB line.
pub const CHUNK: usize = 1024 * 1024;
/// Longest failure reason kept in the agent's state.
pub const MAX_REASON: usize = 2000;

/// An update command; travels inside the admin protocol's `Command::Update`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "update", rename_all = "snake_case", deny_unknown_fields)]
pub enum UpdateCommand {
    /// Start receiving a bundle of at most `size` bytes (one upload at a time, at most
    /// [`MAX_BUNDLE`]).
    UploadBegin {
        /// The bundle's size, or an upper bound of it.
        size: u64,
    },
    /// The next piece of the upload.
    UploadChunk {
        /// The upload's id.
        id: String,
        /// Where the piece starts (the bytes received so far).
        offset: u64,
        /// The bytes, standard base64 (at most [`CHUNK`] decoded).
        data: String,
    },
    /// The upload is complete: checked against the SHA-256, then as the installer checks a
    /// bundle; a good one is handed to the installer agent.
    UploadFinish {
        /// The upload's id.
        id: String,
        /// SHA-256 of the whole file, hex.
        sha256: String,
        /// Allow an older release or the running one again.
        #[serde(default)]
        force: bool,
    },
    /// Give up an upload (its partial file is deleted).
    UploadAbort {
        /// The upload's id.
        id: String,
    },
    /// The upload in progress, the request waiting and what the installer last reported.
    State,
    /// Reboot into the slot the installer armed (asked of the installer, which asks init).
    Reboot,
}

impl UpdateCommand {
    /// The wire name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            UpdateCommand::UploadBegin { .. } => "update_upload_begin",
            UpdateCommand::UploadChunk { .. } => "update_upload_chunk",
            UpdateCommand::UploadFinish { .. } => "update_upload_finish",
            UpdateCommand::UploadAbort { .. } => "update_upload_abort",
            UpdateCommand::State => "update_state",
            UpdateCommand::Reboot => "update_reboot",
        }
    }
}

/// What `update::check_bundle` found in a bundle that passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checked {
    /// The release it holds.
    pub release: Release,
    /// The key that signed it.
    pub key_id: String,
    /// Bytes of its root filesystem.
    pub bytes: u64,
    /// A downgrade or reinstall allowed only because it was forced.
    pub forced: bool,
}

/// Where an upload stands (the answer to every upload command).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    /// The upload's id (also the installer request's).
    pub id: String,
    /// Bytes received.
    pub received: u64,
    /// The size announced at the start (an upper bound).
    pub size: u64,
    /// What the bundle holds, once it was checked and handed to the installer.
    pub checked: Option<Checked>,
}

/// What the installer agent last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentState {
    /// Nothing installed since the agent started.
    Idle,
    /// Checking and writing a bundle.
    Installing {
        /// The upload's id.
        id: String,
        /// Percent of the slot written.
        percent: u8,
        /// The slot being written, once known.
        slot: Option<String>,
    },
    /// Installed and armed: the next boot tries it.
    Installed {
        /// The upload's id.
        id: String,
        /// The slot written and armed.
        slot: String,
        /// The slot running now (the fallback).
        booted: String,
        /// The release installed.
        release: Release,
        /// The key that signed it.
        key_id: String,
        /// A downgrade or reinstall that was forced.
        forced: bool,
    },
    /// The install was refused or failed; nothing was armed.
    Failed {
        /// The upload's id.
        id: String,
        /// Why, in the installer's words.
        reason: String,
    },
    /// A reboot into the armed slot was asked of init.
    Rebooting {
        /// The install's id.
        id: String,
        /// The slot the box boots next.
        slot: String,
    },
}

impl AgentState {
    /// A failure, its reason cut to a bounded length.
    pub fn failed(id: &str, reason: &str) -> AgentState {
        AgentState::Failed {
            id: id.to_owned(),
            reason: reason.chars().take(MAX_REASON).collect(),
        }
    }
}

/// The answer to `update state`: the upload, the request waiting and the agent's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolStatus {
    /// The upload in progress.
    pub upload: Option<UploadState>,
    /// The request waiting for the agent (`install <id>`, `reboot <id>`).
    pub pending: Option<String>,
    /// What the agent last reported.
    pub agent: AgentState,
    /// Why the state file could not be read, if it could not.
    pub agent_error: Option<String>,
}

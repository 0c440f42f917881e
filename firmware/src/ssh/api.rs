//! The typed operations of the SSH-key subsystem and their results. Only the admin layer
//! turns an [`SshOutcome`] or a [`super::SshError`] into a wire reply.

use serde::{Deserialize, Serialize};

/// An SSH command; travels inside the admin protocol's `Command::Ssh`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "ssh", rename_all = "snake_case", deny_unknown_fields)]
pub enum SshCommand {
    /// Authorise a public key (one OpenSSH `authorized_keys` line without options).
    KeysAdd {
        /// `ssh-ed25519 AAAA... comment`; the daemon parses and checks it.
        line: String,
    },
    /// Remove a key, named by its SHA256 fingerprint or its comment.
    KeysDel {
        /// `SHA256:...` or the key's comment.
        key: String,
    },
    /// The authorised keys.
    KeysList,
}

impl SshCommand {
    /// The wire name of the command, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            SshCommand::KeysAdd { .. } => "ssh_keys_add",
            SshCommand::KeysDel { .. } => "ssh_keys_del",
            SshCommand::KeysList => "ssh_keys_list",
        }
    }
}

/// One authorised SSH key.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SshKeyInfo {
    /// `SHA256:<base64>`, as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    /// `ssh-ed25519`, `ecdsa-sha2-nistp256` or `ssh-rsa`.
    pub key_type: String,
    /// Key size in bits.
    pub bits: u32,
    /// The comment given with the key.
    pub comment: Option<String>,
    /// When it was added (ms since the epoch).
    pub added: u64,
}

/// What an SSH-key operation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshOutcome {
    /// `keys_list`: the authorised keys.
    Keys(Vec<SshKeyInfo>),
    /// `keys_add`, `keys_del`: what changed.
    Done(String),
}

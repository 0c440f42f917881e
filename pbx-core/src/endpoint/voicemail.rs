//! Voicemail: mailboxes as the driver's index knows them, PINs, and the recordings in
//! progress.

use crate::Millis;

/// One message in a mailbox, as the driver's index knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxMessage {
    /// Index id (for delete / mark-heard events).
    pub id: u64,
    /// The WAV file played back.
    pub path: std::path::PathBuf,
    /// Not heard yet.
    pub new: bool,
}

/// The stored form of a voicemail PIN: never the digits themselves.
pub fn pin_hash(ext: &str, pin: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"outpost-vm-pin:");
    h.update(ext.as_bytes());
    h.update(b":");
    h.update(pin.as_bytes());
    hex::encode(h.finalize())
}

/// A recording in progress or being written, keyed by relay session.
#[derive(Debug, Clone)]
pub(super) struct PendingMessage {
    pub(super) mailbox: String,
    pub(super) caller: String,
    pub(super) at: Millis,
}

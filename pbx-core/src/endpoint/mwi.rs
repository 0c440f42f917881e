//! Message-waiting indication (RFC 3842): the table of `message-summary` subscriptions.

use crate::sip::{NameAddr, Peer, Uri};
use crate::Millis;

/// An MWI subscription (RFC 3842): a dialog in which we NOTIFY message counts.
#[derive(Debug, Clone)]
pub(super) struct MwiSubscription {
    pub(super) mailbox: String,
    pub(super) local_tag: String,
    pub(super) local_uri: NameAddr,
    pub(super) remote_uri: NameAddr,
    pub(super) target: Uri,
    pub(super) peer: Peer,
    pub(super) expires_at: Millis,
    pub(super) cseq: u32,
}

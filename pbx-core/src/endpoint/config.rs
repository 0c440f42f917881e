//! The endpoint's public settings: what the firmware's config file turns into, handed to
//! [`super::Endpoint::new`] and [`super::Endpoint::reconfigure`], and the toll-fraud gate it
//! asks before every outbound call.

use std::net::{IpAddr, SocketAddr};

use crate::registrar::RegistrarConfig;
use crate::sip::auth::NonceConfig;
use crate::sip::message::Transport;
use crate::sip::transaction::TimerConfig;
#[cfg(doc)]
use crate::sip::transaction::DEFAULT_MAX_SERVER;
use crate::Millis;

/// Settings of the call core.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Digest realm.
    pub realm: String,
    /// Value of our Server / User-Agent headers.
    pub user_agent: String,
    /// Our own addresses, used in Via and Contact of what we send (one per family is enough).
    pub local: Vec<SocketAddr>,
    /// Registration interval limits.
    pub registrar: RegistrarConfig,
    /// Digest nonce lifetime and replay tracking.
    pub nonce: NonceConfig,
    /// Digest algorithms offered, most preferred first.
    pub auth_algorithms: Vec<crate::sip::auth::Algorithm>,
    /// RFC 3261 timer base values.
    pub timers: TimerConfig,
    /// Cap on live server transactions; a new request beyond it gets 503 with Retry-After
    /// (see `sip::transaction`'s memory bound). Default [`DEFAULT_MAX_SERVER`].
    pub max_server_transactions: usize,
    /// How long the callee's phones ring before the caller gets 480.
    pub ring_timeout_ms: u64,
    /// Key for nonces (persisted by the driver so nonces outlive a restart).
    pub secret_key: [u8; 32],
    /// Seed for tags, branches and Call-IDs.
    pub seed: u64,
    /// Media anchoring through the relay; `None` passes SDP through untouched.
    pub media: Option<MediaSettings>,
    /// Voicemail (needs media anchoring); `None` answers unreachable callees with 480/486.
    pub voicemail: Option<VoicemailSettings>,
    /// Call recording on demand (needs media anchoring); `None`: nobody may record.
    pub recording: Option<RecordingSettings>,
    /// Auto-attendant menus (need media anchoring).
    pub ivr: Vec<IvrMenu>,
    /// Ring groups.
    pub groups: Vec<RingGroup>,
    /// Paging groups (need media anchoring).
    pub paging: Vec<PagingGroup>,
    /// Feature codes dialled by extensions.
    pub features: FeatureCodes,
    /// Outbound routes, emergency numbers and inbound DIDs.
    pub dialplan: crate::dialplan::Dialplan,
    /// SIP trunks towards providers.
    pub trunks: Vec<crate::trunk::TrunkConfig>,
    /// Exchange SDES-SRTP keys (`a=crypto`, RFC 4568) over UDP and TCP signalling too.
    /// Off by default: RFC 4568 §8.3 allows keys only over a secure transport, so an
    /// `RTP/SAVP` offer over UDP/TCP gets 488 and every other SDP over them loses its keys.
    pub srtp_over_insecure: bool,
}

impl EndpointConfig {
    /// May SDES keys travel over signalling on `transport`?
    pub fn sdes_allowed(&self, transport: Transport) -> bool {
        transport == Transport::Tls || self.srtp_over_insecure
    }
}

/// A number that rings several extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingGroup {
    /// The number that reaches the group (also a DID target).
    pub number: String,
    /// Member extensions, in hunting order.
    pub members: Vec<String>,
    /// All at once, or one after the other.
    pub strategy: RingStrategy,
    /// In order: how long each member rings before the next one.
    pub member_timeout_ms: u64,
    /// How long the group rings in total before the fallback.
    pub timeout_ms: u64,
    /// Mailbox that takes a message when nobody answers (`None`: the caller gets 480).
    pub voicemail: Option<String>,
}

/// A number that pages several extensions: every phone of every member that is not in a
/// call answers by itself and hears the caller, one way (see `endpoint::paging`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagingGroup {
    /// The number extensions dial to page (not reachable from trunks).
    pub number: String,
    /// Member extensions.
    pub members: Vec<String>,
    /// A paged phone still ringing after this long (it did not auto-answer) is cancelled.
    pub ring_ms: u64,
}

/// How a ring group rings its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingStrategy {
    /// Every member's phones at once; the first to answer wins.
    Simultaneous,
    /// One member after the other, `member_timeout_ms` each.
    InOrder,
}

/// Numbers a no-answer forwarding (follow-me) may try in turn: `no_answer` and those in
/// `no_answer_then` together.
pub const MAX_FOLLOW_ME: usize = 4;

/// Call forwarding of one extension: each target is a dialled number (an extension, a
/// group, or an external number the extension may call).
///
/// The no-answer numbers form a follow-me list: `no_answer` first, then each of
/// `no_answer_then`, each ringing `no_answer_ms` (the ring timeout when 0) until one
/// answers; after the last, the extension's voicemail (else 480).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Forwarding {
    /// Every call goes there without ringing the extension.
    pub always: Option<String>,
    /// When the extension is busy.
    pub busy: Option<String>,
    /// When nobody answers within `no_answer_ms` (or no phone is registered).
    pub no_answer: Option<String>,
    /// Ring time of the extension's phones before `no_answer` applies, and of each number
    /// of the list; 0 = the global ring timeout.
    pub no_answer_ms: u64,
    /// Tried in turn after `no_answer` when it does not answer (follow-me); empty without
    /// `no_answer`, at most [`MAX_FOLLOW_ME`] − 1. Absent from records stored before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_answer_then: Vec<String>,
}

impl Forwarding {
    /// The no-answer numbers in the order they are tried.
    pub fn no_answer_list(&self) -> Vec<&str> {
        self.no_answer
            .iter()
            .chain(&self.no_answer_then)
            .map(String::as_str)
            .collect()
    }

    /// Sets the no-answer numbers from a comma-separated list (`0301234567,01701234567`;
    /// blanks around each are dropped): the first is `no_answer`, the rest
    /// `no_answer_then`. Checking them is the caller's (an empty part stays, to be refused).
    pub fn set_no_answer_list(&mut self, list: Option<&str>) {
        let mut numbers = list
            .into_iter()
            .flat_map(|l| l.split(','))
            .map(|n| n.trim().to_string());
        self.no_answer = numbers.next();
        self.no_answer_then = numbers.collect();
    }
}

/// Numbers with a special meaning when an extension dials them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureCodes {
    /// Picks up any call ringing an extension.
    pub pickup: String,
    /// Followed by an extension: picks up the call ringing that extension.
    pub directed_pickup: String,
    /// Call park: a call transferred here waits in the first free orbit (empty: no park).
    pub park: String,
    /// The number of the first orbit; orbits are numbered from it, one per slot.
    pub park_first: u32,
    /// How many calls may be parked at once (orbits `park_first` ..).
    pub park_slots: u32,
    /// A call parked this long rings back the phone that parked it.
    pub park_timeout_ms: u64,
    /// Turns do-not-disturb on for the extension that dials it.
    pub dnd_on: String,
    /// Turns do-not-disturb off.
    pub dnd_off: String,
    /// The conference number (factory URI): the phone's calls join one conference
    /// (empty: off).
    pub conference: String,
}

impl Default for FeatureCodes {
    fn default() -> Self {
        FeatureCodes {
            pickup: "*8".to_string(),
            directed_pickup: "**".to_string(),
            park: "*70".to_string(),
            park_first: 701,
            park_slots: 8,
            park_timeout_ms: 120_000,
            dnd_on: "*78".to_string(),
            dnd_off: "*79".to_string(),
            conference: "*3".to_string(),
        }
    }
}

/// The toll-fraud check the call core asks before every outbound (trunk) call of an
/// extension; the firmware implements it with `firewall::policy::CallPolicy`.
pub trait CallGate: std::fmt::Debug + Send {
    /// May `ext` call `dialled` over `trunk`?
    fn check(&mut self, now: Millis, ext: &str, dialled: &str, trunk: Option<&str>)
        -> GateDecision;
    /// A call that `check` allowed is over (`talk_secs` 0 when it never connected).
    fn ended(&mut self, now: Millis, ext: &str, dialled: &str, trunk: Option<&str>, talk_secs: u64);
}

/// The answer of a [`CallGate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateDecision {
    /// Place the call.
    Allow,
    /// Refuse it with 403 and this reason phrase.
    Refuse {
        /// Fit for a SIP reason phrase.
        reason: String,
        /// The extension was locked to internal calls by this refusal.
        lock: bool,
    },
}

/// Where messages go and how long they may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoicemailSettings {
    /// Messages are written to `<dir>/<mailbox>/<time>-<call>.wav`.
    pub dir: std::path::PathBuf,
    /// Longest message.
    pub max_ms: u32,
    /// The number extensions dial to hear their messages (e.g. `*97`).
    pub access_number: String,
}

/// Who may record their calls on demand, how, and where the recordings go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingSettings {
    /// The extensions that opted in: only they start (and stop) a recording.
    pub extensions: Vec<String>,
    /// Dialled during a call (DTMF), starts or stops the recording (e.g. `*1`).
    pub code: String,
    /// Each leg is recorded to `<dir>/<time>-<call>-a.wav` / `-b.wav` (the driver mixes
    /// them into one file).
    pub dir: std::path::PathBuf,
    /// Longest recording.
    pub max_ms: u32,
}

/// An auto-attendant menu: a dialable number that answers, plays a greeting and sends the
/// caller to an extension by digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IvrMenu {
    /// The number that reaches the menu (also a DID target later).
    pub number: String,
    /// Prompt played on answer (and again after a timeout or an invalid digit).
    pub greeting: String,
    /// Digit → extension.
    pub options: std::collections::BTreeMap<char, String>,
    /// How long to wait for a digit after the greeting.
    pub timeout_ms: u64,
    /// Greetings replayed after a timeout or an invalid digit before hanging up.
    pub retries: u32,
}

/// Where the relay listens, as the call core advertises it in SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSettings {
    /// Our media addresses (one per family is enough); the one matching a leg's
    /// signalling family goes into that leg's SDP.
    pub addrs: Vec<IpAddr>,
    /// The relay's port range (RTP on even ports, RTCP on the odd port above).
    pub port_first: u16,
    pub port_last: u16,
}

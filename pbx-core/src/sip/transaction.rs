//! RFC 3261 §17 transactions, with the RFC 6026 "Accepted" state for INVITE 2xx, sans-IO.
//!
//! Inputs are `receive_*`, `send_*` and [`Transactions::handle_timeout`]; outputs are drained
//! with [`Transactions::poll_transmit`] (bytes to send), [`Transactions::poll_event`]
//! (timeouts and terminations) and [`Transactions::poll_timeout`] (when to call
//! `handle_timeout` next). After every input the driver drains transmits, then events, then
//! asks for the next deadline.
//!
//! Timers are data: every armed RFC 3261 timer of every transaction is one entry
//! `(deadline, transaction id, Timer)` in an ordered set, so arming, cancelling and finding
//! the earliest deadline are O(log n) and the set never holds stale entries. Transactions are
//! found by [`TxKey`] in a hash map; a terminated transaction is removed at once.
//!
//! Zero-length client timers (Timer D, K on reliable transports) are armed at `now` rather
//! than terminating on the spot, so the TU can still read the request of a transaction that
//! has just delivered its final response; it disappears on the next `handle_timeout`.
//!
//! # Completed server transactions keep only their final response
//! Once a server transaction has sent its final response and the TU has nothing more to do
//! with it, it leaves the live table (a `Terminated` event follows at once) and becomes a
//! compact entry in the *completed cache*: its key and sent-by, where responses go, the
//! final response bytes (moved, not copied) and its deadline. A retransmitted request is
//! answered from it with the same bytes, an ACK is absorbed, exactly as the full
//! transaction did. What moves, and when:
//! - non-INVITE in Completed (a final response sent statefully), for Timer J (64*T1 on
//!   UDP; on reliable transports Timer J is zero, so nothing is kept at all);
//! - INVITE in Confirmed (the ACK of our stateful non-2xx arrived), for Timer I (T4 on UDP;
//!   zero, so nothing kept, on reliable transports): RFC 3261 §17.2.1 only absorbs ACKs and
//!   INVITE retransmissions there, without re-sending, so the entry holds no bytes;
//! - INVITE in Accepted once the ACK of our 2xx arrived (RFC 6026 §8.7), until Timer L: the
//!   TU has had its ACK, no 2xx is retransmitted any more and an INVITE retransmission
//!   "MUST NOT be passed to the TU", so the entry holds no bytes and absorbs both INVITE
//!   and ACK retransmissions (the latter through the Call-ID/CSeq/To-tag index). Before its
//!   ACK an Accepted INVITE stays live: it retransmits the 2xx (Timer G) and tells the TU
//!   when Timer L fires without an ACK.
//!
//! An INVITE in Completed (non-2xx after a dialog-creating provisional) stays live until
//! its ACK, because it retransmits and may time out (Timer H). After the move the
//! transaction is gone for the TU: [`Transactions::state`] is `None`, a CANCEL finds no
//! INVITE (481), and `send_response` answers [`TransactionError::FinalResponseAlreadySent`].
//!
//! Completed entries do not count against `max_server`. The cache holds at most
//! [`MAX_COMPLETED_ENTRIES`] entries and [`MAX_COMPLETED_BYTES`] of response bytes; its
//! entries are kept in arrival order and expire from the front (all lifetimes are at most
//! 64*T1, so an entry whose shorter deadline passed while an older one is still at the front
//! is already ignored by lookups and freed when it reaches the front). When it is full the
//! oldest entry is dropped early and counted ([`Transactions::completed_dropped`]): a
//! request retransmitted after that is processed again as a new request, which is harmless
//! for OPTIONS, BYE (481) and REGISTER (the registrar answers an exact repeat with the
//! current bindings, see `registrar`).
//!
//! # Stateless until a dialog
//! A final non-2xx response of a server transaction that never sent a dialog-creating
//! provisional (101–199 with a To tag) is sent statelessly: the transaction ends at once
//! (a `Terminated` event follows), no Timer G/H/J runs, nothing is retransmitted. The
//! response goes into a small cache ([`MAX_STATELESS_ENTRIES`] entries and
//! [`MAX_STATELESS_BYTES`] of response bytes, at most 64*T1 old, checked on lookup, no
//! timers) so a retransmitted request is answered again with the same bytes (and counted
//! once by the TU) and the ACK of a rejected INVITE is absorbed. So a flood of requests
//! that are rejected (401/403/404/480/486/503/...) leaves no transaction state at all.
//!
//! # Memory bound
//! At most `max_server` server transactions are *live* (pending: no final response yet, a
//! stateful non-2xx INVITE awaiting its ACK, a 2xx INVITE awaiting its ACK) at once
//! ([`DEFAULT_MAX_SERVER`]); a new request beyond it is answered
//! [`ServerInput::Overloaded`] (the TU sends 503 with Retry-After, statelessly). CANCELs of
//! live INVITEs and in-dialog requests (To tag) may use a reserve of `max_server / 8` more,
//! so calls can still be cancelled and hung up when new requests fill the table. A live
//! server transaction costs about 0.5 KiB plus its last response (typically 0.4–1 KiB, at
//! most [`MAX_MESSAGE`]) plus, for an INVITE until its final response, the parsed request
//! (typically 2–4 KiB, bounded by [`MAX_MESSAGE`] on the wire): at the default cap
//! (2,048 + 256) typically 5–12 MiB, never more than about 2,304 × 40 KiB ≈ 90 MiB (every
//! request a maximal INVITE). The default is unchanged since completed transactions left
//! the table: 2,048 requests *in progress at one instant* is ~4 per phone for 500 phones,
//! and at 12,000 REGISTER/s leaves 170 ms for each one's store commit. There is no
//! per-source cap on purpose: behind NAT a whole office is one source.
//!
//! The completed cache holds at most [`MAX_COMPLETED_ENTRIES`] (65,536) entries and
//! [`MAX_COMPLETED_BYTES`] (32 MiB) of response bytes. An entry costs about 0.6 KiB besides
//! its response (its slot in a hash table kept under 7/8 full, ~350 B; its place in the
//! arrival queue, ~100 B; the branch twice and the sent-by host) plus the response buffer
//! (at most 512 B beyond its length): ≈ 75 MiB when full of REGISTER 200s (~450 B each),
//! never more than ≈ 90 MiB. The stateless cache adds at most [`MAX_STATELESS_BYTES`] plus
//! ~200 B per entry (≈ 5.6 MiB). Worst case of the three together ≈ 185 MiB; at 12,000
//! REGISTER/s ≈ 85 MiB (see bench/README.md for the measured peak). The completed cache's
//! tables shrink back once a burst has expired.

use std::collections::{BTreeSet, HashMap, VecDeque};

use thiserror::Error;

use crate::sip::message::{CSeq, Headers, Method, Peer, Request, Response};
#[cfg(doc)]
use crate::sip::wire::MAX_MESSAGE;
use crate::sip::wire::{emit_request, emit_response};
use crate::Millis;

mod cache;
use cache::{CompletedCache, CompletedEntry, StatelessCache};

/// Default cap on live (pending) server transactions (see the module docs' memory bound):
/// completed ones no longer count, so this is what is answered or awaited at one instant
/// (a REGISTER waiting for its store commit, a ringing INVITE), not 32 s of history.
pub const DEFAULT_MAX_SERVER: usize = 2_048;
/// Most completed server transactions kept to answer retransmissions (module docs).
pub const MAX_COMPLETED_ENTRIES: usize = 65_536;
/// Most final-response bytes kept in the completed cache.
pub const MAX_COMPLETED_BYTES: usize = 32 * 1024 * 1024;
/// Most responses kept to answer retransmissions of statelessly rejected requests: every
/// first REGISTER gets a 401 from here, so at 12,000 REGISTER/s this is ~0.7 s of them,
/// longer than a phone's first retransmission (T1, 500 ms); 1,024 covered 85 ms, and a late
/// retransmission drew a second challenge with a new nonce.
pub const MAX_STATELESS_ENTRIES: usize = 8_192;
/// Most response bytes kept in the stateless cache (a 401 is ~400 B).
pub const MAX_STATELESS_BYTES: usize = 4 * 1024 * 1024;

/// The RFC 3261 magic cookie that marks a branch as globally unique (§8.1.1.7).
const MAGIC_COOKIE: &str = "z9hG4bK";
/// Prefix of the synthetic branch built for requests without an RFC 3261 branch.
const FALLBACK_PREFIX: &str = "rfc2543;";
/// Timer D on unreliable transports: "at least 32 seconds" (RFC 3261 §17.1.1.2).
pub const TIMER_D_UNRELIABLE: u64 = 32_000;
/// Default sent-by port when a Via has none (RFC 3261 §18.1).
const DEFAULT_PORT: u16 = 5060;

/// RFC 3261 timer base values in milliseconds (Table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate; retransmission intervals start here.
    pub t1: u64,
    /// Retransmission interval cap for non-INVITE requests and INVITE responses.
    pub t2: u64,
    /// Maximum time a message stays in the network.
    pub t4: u64,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: 500,
            t2: 4_000,
            t4: 5_000,
        }
    }
}

impl TimerConfig {
    /// 64*T1: Timers B, F, H, J (unreliable), L and M.
    fn t64(&self) -> u64 {
        self.t1.saturating_mul(64)
    }
}

/// The timers of RFC 3261 §17 (A–K) and RFC 6026 (L, M).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// INVITE client: request retransmission (unreliable only), doubling from T1.
    A,
    /// INVITE client: transaction timeout in Calling (64*T1); also armed by a CANCEL.
    B,
    /// INVITE client: wait for final-response retransmissions in Completed.
    D,
    /// Non-INVITE client: request retransmission (unreliable only), doubling to T2.
    E,
    /// Non-INVITE client: transaction timeout (64*T1).
    F,
    /// INVITE server: final-response retransmission (unreliable only), doubling to T2;
    /// in Accepted it retransmits the 2xx (RFC 3261 §13.3.1.4) until the ACK arrives.
    G,
    /// INVITE server: wait for the ACK of a non-2xx final response (64*T1).
    H,
    /// INVITE server: absorb ACK retransmissions after the ACK of a non-2xx (the lifetime
    /// of its completed-cache entry, not a table timer).
    I,
    /// Non-INVITE server: absorb request retransmissions in Completed (the lifetime of its
    /// completed-cache entry); before the final response it bounds a request the TU never
    /// answers (64*T1 after arrival).
    J,
    /// Non-INVITE client: absorb response retransmissions in Completed.
    K,
    /// INVITE server: lifetime of the Accepted state (64*T1, RFC 6026).
    L,
    /// INVITE client: lifetime of the Accepted state (64*T1, RFC 6026).
    M,
}

impl Timer {
    /// Number of timers, the size of a transaction's timer table.
    const COUNT: usize = 12;

    /// Slot in a transaction's timer table.
    fn index(self) -> usize {
        match self {
            Timer::A => 0,
            Timer::B => 1,
            Timer::D => 2,
            Timer::E => 3,
            Timer::F => 4,
            Timer::G => 5,
            Timer::H => 6,
            Timer::I => 7,
            Timer::J => 8,
            Timer::K => 9,
            Timer::L => 10,
            Timer::M => 11,
        }
    }

    /// Every timer, in table order.
    const ALL: [Timer; Timer::COUNT] = [
        Timer::A,
        Timer::B,
        Timer::D,
        Timer::E,
        Timer::F,
        Timer::G,
        Timer::H,
        Timer::I,
        Timer::J,
        Timer::K,
        Timer::L,
        Timer::M,
    ];
}

/// The state of a live transaction (Terminated transactions are removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxState {
    /// INVITE client: request sent, nothing received.
    Calling,
    /// Non-INVITE client or server: nothing received / no response sent yet.
    Trying,
    /// A provisional response was received (client) or sent (server).
    Proceeding,
    /// A final response (non-2xx for INVITE) was received or sent. A non-INVITE server
    /// transaction leaves the live table for the completed cache as it enters this state;
    /// so does an INVITE server transaction when the ACK arrives (RFC 3261's Confirmed).
    Completed,
    /// INVITE (RFC 6026): a 2xx was received (client) or sent (server).
    Accepted,
}

/// Identifies a transaction: the top-Via branch, the method (ACK maps to INVITE on the
/// server side) and which side we are.
///
/// For requests whose branch lacks the RFC 3261 magic cookie the server builds a synthetic
/// branch `rfc2543;<Call-ID>;<CSeq number>;<From tag>;<sent-by host>:<port>` (RFC 2543
/// matching, simplified). When a request reuses the branch of a live server transaction
/// from a different sent-by, it is a different transaction and its branch becomes
/// `<branch>;sent-by=<host>:<port>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TxKey {
    /// Top-Via branch (or the synthetic branch described above).
    pub branch: String,
    /// The request method; ACK is folded into INVITE for server matching.
    pub method: Method,
    /// True for server transactions.
    pub server: bool,
}

/// Bytes to send to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Transport and address to send to.
    pub dest: Peer,
    /// The serialized message.
    pub bytes: Vec<u8>,
}

/// What became of a received request.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerInput {
    /// A new server transaction was created (INVITE: Proceeding; others: Trying); the TU
    /// must respond with [`Transactions::send_response`] (or [`Transactions::abandon`] it).
    /// An unanswered non-INVITE ends silently after 64*T1; an INVITE waits for the TU.
    New(TxKey),
    /// A retransmission, absorbed; the last response (if any) was re-sent.
    Retransmission,
    /// ACK for a non-2xx final response we sent (the transaction moves to the completed
    /// cache), a repeat of it, or a repeat of the ACK of a 2xx already passed to the TU.
    AckAbsorbed,
    /// The first ACK for the 2xx of an INVITE server transaction in Accepted: 2xx
    /// retransmission has stopped; the TU gets the ACK (it may carry the SDP answer). The
    /// transaction moves to the completed cache (a `Terminated` event follows); repeats
    /// of this ACK are [`ServerInput::AckAbsorbed`].
    Ack2xx(TxKey),
    /// ACK matching nothing: the TU decides (usually drop).
    AckUnmatched,
    /// A new request while the server transaction table is full: no transaction was
    /// created; the TU answers 503 with Retry-After statelessly.
    Overloaded,
}

/// What became of a received response.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientInput {
    /// Pass the response to the TU.
    Deliver(TxKey),
    /// A further 2xx for an INVITE in Accepted (a retransmission or another fork's 2xx):
    /// the TU re-sends its ACK (or ACKs and BYEs the extra dialog).
    Retransmitted2xx(TxKey),
    /// A retransmission handled here (the ACK for a non-2xx was re-sent if needed).
    Absorb,
    /// No client transaction matches (stray or late response).
    Unmatched,
}

/// Something the TU must learn about.
#[derive(Debug, PartialEq, Eq)]
pub enum TxEvent {
    /// Client: Timer B/F fired (act as if 408 arrived). Server INVITE: Timer H fired (no ACK
    /// for our non-2xx) or Timer L fired in Accepted without any ACK (end the call).
    Timeout(TxKey),
    /// The transaction is gone.
    Terminated(TxKey),
}

/// Why the TU's request to a transaction was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TransactionError {
    /// No live server transaction has that key.
    #[error("no such transaction")]
    NoSuchTransaction,
    /// The transaction already sent its final response.
    #[error("final response already sent")]
    FinalResponseAlreadySent,
    /// Status codes are 100..=699.
    #[error("invalid status code {0}")]
    InvalidStatus(u16),
}

/// Internal handle of a transaction; never reused.
type TxId = u64;

/// The sent-by of a top Via, normalised for comparison (RFC 3261 §17.2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SentBy {
    host: String,
    port: u16,
}

/// Secondary index for the ACK of a 2xx, which carries a new branch (RFC 3261 §17.1.1.3):
/// Call-ID, CSeq number and the To tag we put into the 2xx.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AckKey {
    call_id: String,
    seq: u32,
    to_tag: String,
}

/// How a received request identifies its server transaction.
#[derive(Debug)]
struct ServerIdent {
    key: TxKey,
    sent_by: SentBy,
}

impl ServerIdent {
    /// Matching data of `req`; ACK and CANCEL callers pick the method to match against.
    fn of(req: &Request, method: Method) -> ServerIdent {
        let via = req.headers.top_via();
        let sent_by = SentBy {
            host: via.map(|v| v.host.to_ascii_lowercase()).unwrap_or_default(),
            port: via.and_then(|v| v.port).unwrap_or(DEFAULT_PORT),
        };
        let branch = match via.and_then(|v| v.branch()) {
            Some(b) if b.starts_with(MAGIC_COOKIE) => b.to_string(),
            _ => format!(
                "{FALLBACK_PREFIX}{};{};{};{}:{}",
                req.headers.call_id,
                req.headers.cseq.seq,
                req.headers.from.tag().unwrap_or(""),
                sent_by.host,
                sent_by.port
            ),
        };
        ServerIdent {
            key: TxKey {
                branch,
                method,
                server: true,
            },
            sent_by,
        }
    }

    /// The key used when the plain key is taken by a transaction from another sent-by.
    fn alt_key(&self) -> TxKey {
        TxKey {
            branch: format!(
                "{};sent-by={}:{}",
                self.key.branch, self.sent_by.host, self.sent_by.port
            ),
            method: self.key.method.clone(),
            server: true,
        }
    }
}

/// One live transaction.
#[derive(Debug)]
struct Tx {
    key: TxKey,
    invite: bool,
    state: TxState,
    /// The request; not kept for non-INVITE server transactions, which only ever need
    /// their last response (this keeps 10k REGISTER/s from holding 32 s of requests).
    request: Option<Request>,
    /// Client: where the request goes. Server: where responses go (the request's source
    /// until the TU names a destination).
    dest: Peer,
    /// Client: the request bytes. Server: the last response bytes.
    last: Option<Vec<u8>>,
    /// INVITE client: the ACK for the non-2xx final response.
    ack: Option<Vec<u8>>,
    /// Current retransmission interval (Timers A, E, G).
    interval: u64,
    /// Deadline of each armed timer, indexed by `Timer::index`.
    timers: [Option<Millis>; Timer::COUNT],
    /// Server: sent-by of the request's top Via.
    sent_by: Option<SentBy>,
    /// INVITE server in Accepted: its entry in the 2xx-ACK index.
    ack_key: Option<AckKey>,
    /// Server: a dialog-creating provisional (101–199 with a To tag) was sent, so a later
    /// non-2xx final response is sent statefully (retransmitted until its ACK).
    early_dialog: bool,
}

impl Tx {
    /// True when the transport towards the peer is reliable (no retransmissions).
    fn reliable(&self) -> bool {
        self.dest.transport.is_reliable()
    }
}

/// Arms `timer` of transaction `id` at `at`, replacing an earlier arming.
fn arm(set: &mut BTreeSet<(Millis, TxId, Timer)>, id: TxId, tx: &mut Tx, timer: Timer, at: Millis) {
    disarm(set, id, tx, timer);
    tx.timers[timer.index()] = Some(at);
    set.insert((at, id, timer));
}

/// Cancels `timer` of transaction `id` if armed.
fn disarm(set: &mut BTreeSet<(Millis, TxId, Timer)>, id: TxId, tx: &mut Tx, timer: Timer) {
    if let Some(at) = tx.timers[timer.index()].take() {
        set.remove(&(at, id, timer));
    }
}

/// The completed-cache entry of server transaction `tx` (`None` for a client one).
fn completed_entry(
    tx: &mut Tx,
    response: Option<Vec<u8>>,
    deadline: Millis,
) -> Option<CompletedEntry> {
    Some(CompletedEntry {
        seq: 0,
        sent_by: tx.sent_by.take()?,
        dest: tx.dest,
        response,
        ack_key: tx.ack_key.clone().map(Box::new),
        deadline,
    })
}

/// Counters of the server side, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerTableStats {
    /// Live (pending) server transactions, the ones `max_server` caps.
    pub live: usize,
    /// Completed transactions kept to answer retransmissions.
    pub completed: usize,
    /// Completed transactions dropped before their deadline because the cache was full.
    pub completed_dropped: u64,
    /// Statelessly sent rejections kept to answer retransmissions.
    pub stateless: usize,
}

/// All client and server transactions of one endpoint.
#[derive(Debug)]
pub struct Transactions {
    cfg: TimerConfig,
    /// Cap on live server transactions (the reserve for CANCEL/in-dialog is an eighth more).
    max_server: usize,
    /// Live server transactions.
    servers: usize,
    stateless: StatelessCache,
    completed: CompletedCache,
    next_id: TxId,
    ids: HashMap<TxKey, TxId>,
    txs: HashMap<TxId, Tx>,
    ack_index: HashMap<AckKey, TxId>,
    timers: BTreeSet<(Millis, TxId, Timer)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TxEvent>,
}

impl Transactions {
    /// An empty transaction table with the default server cap ([`DEFAULT_MAX_SERVER`]).
    pub fn new(cfg: TimerConfig) -> Self {
        Self::with_max_server(cfg, DEFAULT_MAX_SERVER)
    }

    /// An empty transaction table holding at most `max_server` server transactions (plus
    /// the CANCEL/in-dialog reserve of an eighth); see the module docs.
    pub fn with_max_server(cfg: TimerConfig, max_server: usize) -> Self {
        Transactions {
            cfg,
            max_server: max_server.max(1),
            servers: 0,
            stateless: StatelessCache::default(),
            completed: CompletedCache::default(),
            next_id: 0,
            ids: HashMap::new(),
            txs: HashMap::new(),
            ack_index: HashMap::new(),
            timers: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Matches a received request against the server transactions (RFC 3261 §17.2.3).
    pub fn receive_request(&mut self, now: Millis, req: &Request, src: Peer) -> ServerInput {
        if req.method == Method::Ack {
            return self.receive_ack(now, req);
        }
        let ident = ServerIdent::of(req, req.method.clone());
        if let Some(id) = self.find_server(&ident) {
            let tx = self.txs.get(&id).expect("found ids are live");
            if let Some(bytes) = &tx.last {
                self.transmits.push_back(Transmit {
                    dest: tx.dest,
                    bytes: bytes.clone(),
                });
            }
            return ServerInput::Retransmission;
        }
        if let Some(e) = self.completed.get(&ident, now) {
            // A retransmission after the final response: the same answer again (none after
            // an INVITE's ACK).
            if let Some(bytes) = &e.response {
                self.transmits.push_back(Transmit {
                    dest: e.dest,
                    bytes: bytes.clone(),
                });
            }
            return ServerInput::Retransmission;
        }
        if let Some(e) = self.stateless.get(&ident, now, self.cfg.t64()) {
            // A retransmission of a request rejected statelessly: the same answer again.
            self.transmits.push_back(Transmit {
                dest: e.dest,
                bytes: e.bytes.clone(),
            });
            return ServerInput::Retransmission;
        }
        if self.servers >= self.max_server {
            let reserve = self.max_server / 8;
            let privileged = req.headers.to.tag().is_some()
                || (req.method == Method::Cancel
                    && self
                        .find_server(&ServerIdent::of(req, Method::Invite))
                        .is_some());
            if !privileged || self.servers >= self.max_server + reserve {
                return ServerInput::Overloaded;
            }
        }
        let key = if self.ids.contains_key(&ident.key)
            || self.completed.entries.contains_key(&ident.key)
        {
            ident.alt_key()
        } else {
            ident.key.clone()
        };
        let invite = req.method == Method::Invite;
        let mut tx = Tx {
            key: key.clone(),
            invite,
            state: if invite {
                TxState::Proceeding
            } else {
                TxState::Trying
            },
            request: invite.then(|| req.clone()),
            dest: src,
            last: None,
            ack: None,
            interval: self.cfg.t1,
            timers: [None; Timer::COUNT],
            sent_by: Some(ident.sent_by),
            ack_key: None,
            early_dialog: false,
        };
        let id = self.alloc_id();
        if !invite {
            // Bounds a request the TU never answers: by 64*T1 the client's Timer F has
            // fired, so no response could matter any more.
            let guard = now.saturating_add(self.cfg.t64());
            arm(&mut self.timers, id, &mut tx, Timer::J, guard);
        }
        self.insert(id, tx);
        ServerInput::New(key)
    }

    /// Sends a response in server transaction `key` to `dest` (computed by the caller from
    /// the top Via's received/rport); later retransmissions go to the same place.
    pub fn send_response(
        &mut self,
        now: Millis,
        key: &TxKey,
        resp: Response,
        dest: Peer,
    ) -> Result<(), TransactionError> {
        if !key.server {
            return Err(TransactionError::NoSuchTransaction);
        }
        if !(100..=699).contains(&resp.status) {
            return Err(TransactionError::InvalidStatus(resp.status));
        }
        let Some(&id) = self.ids.get(key) else {
            if self.completed.entries.contains_key(key) {
                return Err(TransactionError::FinalResponseAlreadySent);
            }
            return Err(TransactionError::NoSuchTransaction);
        };
        let tx = self.txs.get_mut(&id).expect("indexed ids are live");
        if !matches!(tx.state, TxState::Trying | TxState::Proceeding) {
            return Err(TransactionError::FinalResponseAlreadySent);
        }
        let bytes = emit_response(&resp);
        if !tx.invite && !resp.is_provisional() && tx.reliable() {
            // Timer J is zero on reliable transports: nothing to keep, so no copy either.
            self.transmits.push_back(Transmit { dest, bytes });
            self.terminate(id, false);
            return Ok(());
        }
        self.transmits.push_back(Transmit {
            dest,
            bytes: bytes.clone(),
        });
        if resp.status >= 300 && !tx.early_dialog {
            // Stateless until a dialog: cache the answer for retransmissions, end at once.
            if let Some(sent_by) = tx.sent_by.clone() {
                self.stateless
                    .insert(tx.key.clone(), sent_by, dest, bytes, now);
            }
            self.terminate(id, false);
            return Ok(());
        }
        if (101..=199).contains(&resp.status) && resp.headers.to.tag().is_some() {
            tx.early_dialog = true;
        }
        tx.last = Some(bytes);
        tx.dest = dest;
        let reliable = tx.reliable();
        let t64 = self.cfg.t64();
        let set = &mut self.timers;
        if resp.is_provisional() {
            tx.state = TxState::Proceeding;
        } else if !tx.invite {
            // Completed: only the response matters now; it leaves the live table.
            let response = tx.last.take();
            if let Some(entry) = completed_entry(tx, response, now.saturating_add(t64)) {
                self.completed.insert(now, key.clone(), entry);
            }
            self.terminate(id, false);
        } else {
            // After the final response only its bytes matter (retransmission, ACK matching).
            tx.request = None;
            tx.state = if resp.is_success() {
                TxState::Accepted
            } else {
                TxState::Completed
            };
            if !reliable {
                tx.interval = self.cfg.t1;
                arm(set, id, tx, Timer::G, now.saturating_add(self.cfg.t1));
            }
            if resp.is_success() {
                arm(set, id, tx, Timer::L, now.saturating_add(t64));
                if let Some(tag) = resp.headers.to.tag() {
                    let ack_key = AckKey {
                        call_id: resp.headers.call_id.clone(),
                        seq: resp.headers.cseq.seq,
                        to_tag: tag.to_string(),
                    };
                    self.ack_index.insert(ack_key.clone(), id);
                    tx.ack_key = Some(ack_key);
                }
            } else {
                arm(set, id, tx, Timer::H, now.saturating_add(t64));
            }
        }
        Ok(())
    }

    /// Starts a client transaction for `req` (the caller sets a unique z9hG4bK branch in the
    /// top Via) and sends it to `dest`.
    ///
    /// An ACK creates no transaction: it is sent once and its key returned. A CANCEL arms
    /// Timer B (64*T1) on the INVITE it cancels if that has none, so an INVITE whose
    /// server never answers the CANCEL is destroyed (RFC 3261 §9.1). A key collision with
    /// a live client transaction terminates the old one.
    pub fn send_request(&mut self, now: Millis, req: Request, dest: Peer) -> TxKey {
        let key = TxKey {
            branch: req
                .headers
                .top_via()
                .and_then(|v| v.branch())
                .unwrap_or("")
                .to_string(),
            method: req.method.clone(),
            server: false,
        };
        let bytes = emit_request(&req);
        self.transmits.push_back(Transmit {
            dest,
            bytes: bytes.clone(),
        });
        if req.method == Method::Ack {
            return key;
        }
        if let Some(&old) = self.ids.get(&key) {
            tracing::warn!(branch = %key.branch, "client transaction key reused; old one ended");
            self.terminate(old, false);
        }
        let t64 = self.cfg.t64();
        if req.method == Method::Cancel {
            let invite_key = TxKey {
                method: Method::Invite,
                ..key.clone()
            };
            if let Some(&inv) = self.ids.get(&invite_key) {
                let tx = self.txs.get_mut(&inv).expect("indexed ids are live");
                if matches!(tx.state, TxState::Calling | TxState::Proceeding)
                    && tx.timers[Timer::B.index()].is_none()
                {
                    arm(&mut self.timers, inv, tx, Timer::B, now.saturating_add(t64));
                }
            }
        }
        let invite = req.method == Method::Invite;
        let mut tx = Tx {
            key: key.clone(),
            invite,
            state: if invite {
                TxState::Calling
            } else {
                TxState::Trying
            },
            request: Some(req),
            dest,
            last: Some(bytes),
            ack: None,
            interval: self.cfg.t1,
            timers: [None; Timer::COUNT],
            sent_by: None,
            ack_key: None,
            early_dialog: false,
        };
        let id = self.alloc_id();
        let (retransmit, timeout) = if invite {
            (Timer::A, Timer::B)
        } else {
            (Timer::E, Timer::F)
        };
        if !dest.transport.is_reliable() {
            let first = if invite {
                self.cfg.t1
            } else {
                self.cfg.t1.min(self.cfg.t2)
            };
            tx.interval = first;
            arm(
                &mut self.timers,
                id,
                &mut tx,
                retransmit,
                now.saturating_add(first),
            );
        }
        arm(
            &mut self.timers,
            id,
            &mut tx,
            timeout,
            now.saturating_add(t64),
        );
        self.insert(id, tx);
        key
    }

    /// Matches a received response to a client transaction by top-Via branch and CSeq
    /// method (RFC 3261 §17.1.3) and runs the state machine.
    pub fn receive_response(&mut self, now: Millis, resp: &Response, _src: Peer) -> ClientInput {
        let Some(branch) = resp.headers.top_via().and_then(|v| v.branch()) else {
            return ClientInput::Unmatched;
        };
        if !(100..=699).contains(&resp.status) {
            return ClientInput::Unmatched;
        }
        let key = TxKey {
            branch: branch.to_string(),
            method: resp.headers.cseq.method.clone(),
            server: false,
        };
        let Some(&id) = self.ids.get(&key) else {
            return ClientInput::Unmatched;
        };
        let tx = self.txs.get_mut(&id).expect("indexed ids are live");
        let set = &mut self.timers;
        let reliable = tx.reliable();
        let status = resp.status;
        if tx.invite {
            match (tx.state, status) {
                (TxState::Calling | TxState::Proceeding, 100..=199) => {
                    tx.state = TxState::Proceeding;
                    disarm(set, id, tx, Timer::A);
                    // Timer B only guards Calling; a CANCEL re-arms it (see send_request).
                    if !self.cancel_pending(&key) {
                        let tx = self.txs.get_mut(&id).expect("indexed ids are live");
                        disarm(&mut self.timers, id, tx, Timer::B);
                    }
                    ClientInput::Deliver(key)
                }
                (TxState::Calling | TxState::Proceeding, 200..=299) => {
                    tx.state = TxState::Accepted;
                    disarm(set, id, tx, Timer::A);
                    disarm(set, id, tx, Timer::B);
                    arm(set, id, tx, Timer::M, now.saturating_add(self.cfg.t64()));
                    // Accepted only absorbs 2xx retransmissions for 32 s: the request and
                    // its bytes are no longer needed (memory at thousands of calls/s).
                    tx.request = None;
                    tx.last = None;
                    ClientInput::Deliver(key)
                }
                (TxState::Calling | TxState::Proceeding, _) => {
                    tx.state = TxState::Completed;
                    disarm(set, id, tx, Timer::A);
                    disarm(set, id, tx, Timer::B);
                    let wait = if reliable { 0 } else { TIMER_D_UNRELIABLE };
                    arm(set, id, tx, Timer::D, now.saturating_add(wait));
                    // Client transactions always keep their request.
                    if let Some(request) = &tx.request {
                        let ack = emit_request(&build_ack_non2xx(request, resp));
                        self.transmits.push_back(Transmit {
                            dest: tx.dest,
                            bytes: ack.clone(),
                        });
                        tx.ack = Some(ack);
                    }
                    tx.request = None;
                    tx.last = None;
                    ClientInput::Deliver(key)
                }
                (TxState::Completed, 300..=699) => {
                    if let Some(ack) = &tx.ack {
                        self.transmits.push_back(Transmit {
                            dest: tx.dest,
                            bytes: ack.clone(),
                        });
                    }
                    ClientInput::Absorb
                }
                (TxState::Accepted, 200..=299) => ClientInput::Retransmitted2xx(key),
                _ => ClientInput::Absorb,
            }
        } else {
            match (tx.state, status) {
                (TxState::Trying | TxState::Proceeding, 100..=199) => {
                    tx.state = TxState::Proceeding;
                    ClientInput::Deliver(key)
                }
                (TxState::Trying | TxState::Proceeding, _) => {
                    tx.state = TxState::Completed;
                    disarm(set, id, tx, Timer::E);
                    disarm(set, id, tx, Timer::F);
                    let wait = if reliable { 0 } else { self.cfg.t4 };
                    arm(set, id, tx, Timer::K, now.saturating_add(wait));
                    ClientInput::Deliver(key)
                }
                _ => ClientInput::Absorb,
            }
        }
    }

    /// Fires every timer whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.completed.expire(now);
        while let Some(&(at, id, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(tx) = self.txs.get_mut(&id) else {
                continue;
            };
            tx.timers[timer.index()] = None;
            self.fire(now, id, timer);
        }
    }

    /// The earliest armed timer deadline; call `handle_timeout` when it is reached.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let timer = self.timers.first().map(|&(at, _, _)| at);
        match (timer, self.completed.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next message to put on the wire.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the TU.
    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.events.pop_front()
    }

    /// The request a client transaction sent (to build a CANCEL or an authenticated retry).
    pub fn client_request(&self, key: &TxKey) -> Option<&Request> {
        if key.server {
            return None;
        }
        self.tx(key).and_then(|tx| tx.request.as_ref())
    }

    /// The request that created a server transaction.
    pub fn server_request(&self, key: &TxKey) -> Option<&Request> {
        if !key.server {
            return None;
        }
        self.tx(key).and_then(|tx| tx.request.as_ref())
    }

    /// The INVITE server transaction a received CANCEL targets (RFC 3261 §9.2: same
    /// top-Via branch and sent-by, method INVITE), in whatever state it is.
    pub fn find_invite_for_cancel(&self, cancel: &Request) -> Option<TxKey> {
        let ident = ServerIdent::of(cancel, Method::Invite);
        self.find_server(&ident)
            .and_then(|id| self.txs.get(&id))
            .map(|tx| tx.key.clone())
    }

    /// True when a client INVITE has received a provisional but no final response: the
    /// state in which RFC 3261 §9.1 allows a CANCEL. In Calling (nothing received yet) the
    /// CANCEL must wait for a provisional; see [`Transactions::awaiting_final`].
    pub fn is_proceeding(&self, key: &TxKey) -> bool {
        !key.server
            && self
                .tx(key)
                .is_some_and(|tx| tx.invite && tx.state == TxState::Proceeding)
    }

    /// True when a client INVITE has no final response yet (Calling or Proceeding).
    pub fn awaiting_final(&self, key: &TxKey) -> bool {
        !key.server
            && self.tx(key).is_some_and(|tx| {
                tx.invite && matches!(tx.state, TxState::Calling | TxState::Proceeding)
            })
    }

    /// The state of a live transaction.
    pub fn state(&self, key: &TxKey) -> Option<TxState> {
        self.tx(key).map(|tx| tx.state)
    }

    /// When `timer` of transaction `key` fires, if armed.
    pub fn timer_deadline(&self, key: &TxKey, timer: Timer) -> Option<Millis> {
        self.tx(key).and_then(|tx| tx.timers[timer.index()])
    }

    /// Drops a transaction at once (e.g. a server transaction the TU will not answer);
    /// a `Terminated` event follows. Unknown keys are ignored.
    pub fn abandon(&mut self, key: &TxKey) {
        if let Some(&id) = self.ids.get(key) {
            self.terminate(id, false);
        }
    }

    /// Client transactions still waiting for a final response from `dest` (to fail them
    /// when the transport towards it broke).
    pub fn client_keys_to(&self, dest: Peer) -> Vec<TxKey> {
        self.txs
            .values()
            .filter(|tx| {
                !tx.key.server
                    && tx.dest == dest
                    && matches!(
                        tx.state,
                        TxState::Calling | TxState::Trying | TxState::Proceeding
                    )
            })
            .map(|tx| tx.key.clone())
            .collect()
    }

    /// Queues a request outside any transaction (the ACK for a 2xx, a re-ACK).
    pub fn send_stateless_request(&mut self, req: &Request, dest: Peer) {
        self.transmits.push_back(Transmit {
            dest,
            bytes: emit_request(req),
        });
    }

    /// Queues a response outside any transaction (e.g. to a request the TU answers
    /// statelessly).
    pub fn send_stateless_response(&mut self, resp: &Response, dest: Peer) {
        self.transmits.push_back(Transmit {
            dest,
            bytes: emit_response(resp),
        });
    }

    /// True when `req` (not an ACK) is a retransmission that [`Transactions::receive_request`]
    /// would absorb: it matches a live or completed server transaction or a request answered
    /// statelessly, so receiving it costs a table lookup and re-sends a stored response.
    /// Nothing changes; the driver asks this to decide whether a late copy is worth handling.
    pub fn absorbs_request(&self, now: Millis, req: &Request) -> bool {
        if req.method == Method::Ack {
            return false;
        }
        let ident = ServerIdent::of(req, req.method.clone());
        self.find_server(&ident).is_some()
            || self.completed.get(&ident, now).is_some()
            || self.stateless.get(&ident, now, self.cfg.t64()).is_some()
    }

    /// Number of live transactions.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// Number of live server transactions (bounded by the cap given at construction).
    pub fn server_len(&self) -> usize {
        self.servers
    }

    /// Responses held to answer retransmissions of statelessly rejected requests.
    pub fn stateless_len(&self) -> usize {
        self.stateless.entries.len()
    }

    /// Completed server transactions held to answer retransmissions.
    pub fn completed_len(&self) -> usize {
        self.completed.entries.len()
    }

    /// Completed server transactions dropped before their deadline because the completed
    /// cache was full.
    pub fn completed_dropped(&self) -> u64 {
        self.completed.dropped
    }

    /// The server-side table sizes and the early-drop counter, for metrics.
    pub fn server_stats(&self) -> ServerTableStats {
        ServerTableStats {
            live: self.servers,
            completed: self.completed.entries.len(),
            completed_dropped: self.completed.dropped,
            stateless: self.stateless.entries.len(),
        }
    }

    /// True when no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    // --- internals ---

    fn tx(&self, key: &TxKey) -> Option<&Tx> {
        self.ids.get(key).and_then(|id| self.txs.get(id))
    }

    /// A fresh transaction id.
    fn alloc_id(&mut self) -> TxId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Adds transaction `id` under its key.
    fn insert(&mut self, id: TxId, tx: Tx) {
        if tx.key.server {
            self.servers += 1;
        }
        self.ids.insert(tx.key.clone(), id);
        self.txs.insert(id, tx);
    }

    /// The server transaction matching `ident` (branch, method and sent-by).
    fn find_server(&self, ident: &ServerIdent) -> Option<TxId> {
        if let Some(&id) = self.ids.get(&ident.key) {
            let tx = self.txs.get(&id)?;
            if tx.sent_by.as_ref() == Some(&ident.sent_by) {
                return Some(id);
            }
        } else if !self.completed.entries.contains_key(&ident.key) {
            return None;
        }
        // The plain key belongs to a transaction from another sent-by (live or completed).
        self.ids.get(&ident.alt_key()).copied()
    }

    /// True when a CANCEL client transaction for INVITE `key` is live.
    fn cancel_pending(&self, key: &TxKey) -> bool {
        let cancel = TxKey {
            method: Method::Cancel,
            ..key.clone()
        };
        self.ids.contains_key(&cancel)
    }

    /// Handles an ACK: non-2xx ACKs match the INVITE's key; 2xx ACKs (new branch) are found
    /// through the Call-ID/CSeq/To-tag index.
    fn receive_ack(&mut self, now: Millis, req: &Request) -> ServerInput {
        let ident = ServerIdent::of(req, Method::Invite);
        if let Some(id) = self.find_server(&ident) {
            let tx = self.txs.get_mut(&id).expect("found ids are live");
            match tx.state {
                TxState::Completed => {
                    // Confirmed: only absorbing is left (Timer I, T4; zero when reliable).
                    if !tx.reliable() {
                        let deadline = now.saturating_add(self.cfg.t4);
                        if let Some(entry) = completed_entry(tx, None, deadline) {
                            self.completed.insert(now, tx.key.clone(), entry);
                        }
                    }
                    self.terminate(id, false);
                    return ServerInput::AckAbsorbed;
                }
                TxState::Accepted => return self.ack_2xx(now, id),
                _ => {}
            }
        }
        if self.completed.get(&ident, now).is_some() {
            // A repeat of the ACK of our non-2xx.
            return ServerInput::AckAbsorbed;
        }
        if self.stateless.get(&ident, now, self.cfg.t64()).is_some() {
            // The ACK of an INVITE we rejected statelessly.
            return ServerInput::AckAbsorbed;
        }
        if let Some(tag) = req.headers.to.tag() {
            let ack_key = AckKey {
                call_id: req.headers.call_id.clone(),
                seq: req.headers.cseq.seq,
                to_tag: tag.to_string(),
            };
            if let Some(&id) = self.ack_index.get(&ack_key) {
                return self.ack_2xx(now, id);
            }
            if self.completed.absorbs_ack(&ack_key, now) {
                return ServerInput::AckAbsorbed;
            }
        }
        ServerInput::AckUnmatched
    }

    /// The first ACK for our 2xx: the TU gets it; 2xx retransmission stops and the
    /// transaction moves to the completed cache until Timer L, to absorb repeats.
    fn ack_2xx(&mut self, now: Millis, id: TxId) -> ServerInput {
        let Some(tx) = self.txs.get_mut(&id) else {
            return ServerInput::AckUnmatched;
        };
        if tx.state != TxState::Accepted {
            return ServerInput::AckUnmatched;
        }
        let key = tx.key.clone();
        let deadline = tx.timers[Timer::L.index()].unwrap_or(now);
        if deadline > now {
            if let Some(entry) = completed_entry(tx, None, deadline) {
                self.completed.insert(now, key.clone(), entry);
            }
        }
        self.terminate(id, false);
        ServerInput::Ack2xx(key)
    }

    /// Runs the expiry of `timer` on transaction `id`.
    fn fire(&mut self, now: Millis, id: TxId, timer: Timer) {
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        let cfg = self.cfg;
        let set = &mut self.timers;
        match timer {
            Timer::A | Timer::E | Timer::G => {
                let live = match timer {
                    Timer::A => tx.state == TxState::Calling,
                    Timer::E => matches!(tx.state, TxState::Trying | TxState::Proceeding),
                    _ => {
                        matches!(tx.state, TxState::Completed | TxState::Accepted)
                    }
                };
                if !live {
                    return;
                }
                if let Some(bytes) = &tx.last {
                    self.transmits.push_back(Transmit {
                        dest: tx.dest,
                        bytes: bytes.clone(),
                    });
                }
                tx.interval = match timer {
                    // INVITE requests double without a cap (RFC 3261 §17.1.1.2).
                    Timer::A => tx.interval.saturating_mul(2),
                    Timer::E if tx.state == TxState::Proceeding => cfg.t2,
                    _ => tx.interval.saturating_mul(2).min(cfg.t2),
                };
                let next = now.saturating_add(tx.interval);
                arm(set, id, tx, timer, next);
            }
            Timer::B => {
                if matches!(tx.state, TxState::Calling | TxState::Proceeding) {
                    self.terminate(id, true);
                }
            }
            Timer::F => {
                if matches!(tx.state, TxState::Trying | TxState::Proceeding) {
                    self.terminate(id, true);
                }
            }
            Timer::H => {
                if tx.state == TxState::Completed {
                    self.terminate(id, true);
                }
            }
            // An ACKed 2xx leaves the live table at once, so Timer L here means no ACK.
            Timer::L => self.terminate(id, true),
            Timer::D | Timer::I | Timer::J | Timer::K | Timer::M => self.terminate(id, false),
        }
    }

    /// Removes transaction `id` with its timers and index entries and tells the TU.
    fn terminate(&mut self, id: TxId, timeout: bool) {
        let Some(tx) = self.txs.remove(&id) else {
            return;
        };
        if tx.key.server {
            self.servers = self.servers.saturating_sub(1);
        }
        for timer in Timer::ALL {
            if let Some(at) = tx.timers[timer.index()] {
                self.timers.remove(&(at, id, timer));
            }
        }
        if self.ids.get(&tx.key) == Some(&id) {
            self.ids.remove(&tx.key);
        }
        if let Some(ack_key) = &tx.ack_key {
            if self.ack_index.get(ack_key) == Some(&id) {
                self.ack_index.remove(ack_key);
            }
        }
        if timeout {
            self.events.push_back(TxEvent::Timeout(tx.key.clone()));
        }
        self.events.push_back(TxEvent::Terminated(tx.key));
    }
}

/// Builds the CANCEL for `invite` (RFC 3261 §9.1): same Request-URI, Call-ID, From, To (no
/// tag added) and CSeq number; a single Via identical to the INVITE's top Via; Route copied.
pub fn build_cancel(invite: &Request) -> Request {
    Request {
        method: Method::Cancel,
        uri: invite.uri.clone(),
        headers: hop_headers(invite, invite.headers.to.clone(), Method::Cancel),
        body: Vec::new(),
    }
}

/// Builds the ACK for a non-2xx final response to `invite` (RFC 3261 §17.1.1.3): same
/// Request-URI, Call-ID, From and CSeq number; To from the response (with its tag); the
/// INVITE's top Via only; Route copied.
pub fn build_ack_non2xx(invite: &Request, resp: &Response) -> Request {
    Request {
        method: Method::Ack,
        uri: invite.uri.clone(),
        headers: hop_headers(invite, resp.headers.to.clone(), Method::Ack),
        body: Vec::new(),
    }
}

/// Headers shared by CANCEL and non-2xx ACK: everything that identifies the INVITE's hop.
fn hop_headers(invite: &Request, to: crate::sip::message::NameAddr, method: Method) -> Headers {
    Headers {
        via: invite.headers.via.iter().take(1).cloned().collect(),
        from: invite.headers.from.clone(),
        to,
        call_id: invite.headers.call_id.clone(),
        cseq: CSeq {
            seq: invite.headers.cseq.seq,
            method,
        },
        max_forwards: Some(70),
        contact: Vec::new(),
        expires: None,
        route: invite.headers.route.clone(),
        record_route: Vec::new(),
        content_type: None,
        other: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{NameAddr, Params, Transport, Uri, Via};

    const T64: u64 = 32_000;

    fn peer(transport: Transport, port: u16) -> Peer {
        Peer {
            transport,
            addr: format!("192.0.2.10:{port}")
                .parse()
                .expect("literal address"),
        }
    }

    fn uri(s: &str) -> Uri {
        Uri::try_from(s).expect("literal URI")
    }

    fn via(branch: &str, host: &str) -> Via {
        Via {
            transport: "UDP".to_string(),
            host: host.to_string(),
            port: Some(5060),
            params: Params(vec![("branch".to_string(), Some(branch.to_string()))]),
        }
    }

    fn request(method: Method, branch: &str, call_id: &str) -> Request {
        let mut from = NameAddr::new(uri("sip:alice@example.com"));
        from.params.set("tag", Some("fromtag".to_string()));
        Request {
            method: method.clone(),
            uri: uri("sip:bob@example.com"),
            headers: Headers {
                via: vec![
                    via(branch, "pc33.example.com"),
                    via("z9hG4bKlower", "proxy"),
                ],
                from,
                to: NameAddr::new(uri("sip:bob@example.com")),
                call_id: call_id.to_string(),
                cseq: CSeq { seq: 1, method },
                max_forwards: Some(70),
                contact: Vec::new(),
                expires: None,
                route: vec![NameAddr::new(uri("sip:proxy.example.com;lr"))],
                record_route: Vec::new(),
                content_type: None,
                other: Vec::new(),
            },
            body: Vec::new(),
        }
    }

    /// The ACK a UAC sends for our 2xx: same Call-ID/CSeq number, our To tag, a new branch.
    fn ack_2xx(invite: &Request, to_tag: &str, branch: &str) -> Request {
        let mut ack = request(Method::Ack, branch, &invite.headers.call_id);
        ack.headers.to.params.set("tag", Some(to_tag.to_string()));
        ack
    }

    fn drain(tx: &mut Transactions) -> (Vec<Transmit>, Vec<TxEvent>) {
        let mut sent = Vec::new();
        while let Some(t) = tx.poll_transmit() {
            sent.push(t);
        }
        let mut events = Vec::new();
        while let Some(e) = tx.poll_event() {
            events.push(e);
        }
        (sent, events)
    }

    /// Things that happened, stamped with the virtual time.
    type Log<T> = Vec<(Millis, T)>;

    /// Jumps the virtual clock from deadline to deadline until nothing is armed or
    /// `until` is passed; returns (time, transmit) and (time, event) logs.
    fn run(txs: &mut Transactions, until: Millis) -> (Log<Transmit>, Log<TxEvent>) {
        let mut sent = Vec::new();
        let mut events = Vec::new();
        while let Some(at) = txs.poll_timeout() {
            if at > until {
                break;
            }
            txs.handle_timeout(at);
            let (s, e) = drain(txs);
            sent.extend(s.into_iter().map(|t| (at, t)));
            events.extend(e.into_iter().map(|e| (at, e)));
        }
        (sent, events)
    }

    fn times(sent: &[(Millis, Transmit)]) -> Vec<Millis> {
        sent.iter().map(|(at, _)| *at).collect()
    }

    #[test]
    fn invite_client_udp_retransmits_then_times_out() {
        let mut txs = Transactions::new(TimerConfig::default());
        let dest = peer(Transport::Udp, 5060);
        let invite = request(Method::Invite, "z9hG4bKinv1", "call1");
        let key = txs.send_request(0, invite.clone(), dest);
        assert_eq!(key.method, Method::Invite);
        assert!(!key.server);
        let (first, _) = drain(&mut txs);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].bytes, emit_request(&invite));
        assert_eq!(txs.state(&key), Some(TxState::Calling));
        assert!(!txs.is_proceeding(&key));
        assert!(txs.awaiting_final(&key));

        let (sent, events) = run(&mut txs, u64::MAX);
        assert_eq!(times(&sent), vec![500, 1500, 3500, 7500, 15500, 31500]);
        assert!(sent.iter().all(|(_, t)| t.dest == dest));
        assert_eq!(
            events,
            vec![
                (T64, TxEvent::Timeout(key.clone())),
                (T64, TxEvent::Terminated(key.clone()))
            ]
        );
        assert!(txs.is_empty());
        assert_eq!(txs.poll_timeout(), None);
    }

    #[test]
    fn invite_client_tcp_never_retransmits() {
        let mut txs = Transactions::new(TimerConfig::default());
        let key = txs.send_request(
            0,
            request(Method::Invite, "z9hG4bKtcp", "c"),
            peer(Transport::Tcp, 5060),
        );
        assert_eq!(drain(&mut txs).0.len(), 1);
        assert_eq!(txs.poll_timeout(), Some(T64));
        let (sent, events) = run(&mut txs, u64::MAX);
        assert!(sent.is_empty());
        assert_eq!(events[0], (T64, TxEvent::Timeout(key)));
    }

    #[test]
    fn non_invite_client_e_schedule_caps_at_t2() {
        let mut txs = Transactions::new(TimerConfig::default());
        let key = txs.send_request(
            0,
            request(Method::Options, "z9hG4bKopt", "c"),
            peer(Transport::Udp, 5060),
        );
        drain(&mut txs);
        let (sent, events) = run(&mut txs, u64::MAX);
        assert_eq!(
            times(&sent),
            vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        assert_eq!(
            events,
            vec![
                (T64, TxEvent::Timeout(key.clone())),
                (T64, TxEvent::Terminated(key))
            ]
        );
    }

    #[test]
    fn non_invite_client_provisional_switches_e_to_t2_and_final_completes() {
        let mut txs = Transactions::new(TimerConfig::default());
        let dest = peer(Transport::Udp, 5060);
        let req = request(Method::Register, "z9hG4bKreg", "c");
        let key = txs.send_request(0, req.clone(), dest);
        drain(&mut txs);
        let trying = Response::to_request(&req, 100, None);
        assert_eq!(
            txs.receive_response(100, &trying, dest),
            ClientInput::Deliver(key.clone())
        );
        assert_eq!(txs.state(&key), Some(TxState::Proceeding));
        let (sent, _) = run(&mut txs, 9_000);
        assert_eq!(times(&sent), vec![500, 4500, 8500]);

        let ok = Response::to_request(&req, 200, Some("srv"));
        assert_eq!(
            txs.receive_response(9_000, &ok, dest),
            ClientInput::Deliver(key.clone())
        );
        assert_eq!(txs.state(&key), Some(TxState::Completed));
        assert_eq!(txs.receive_response(9_100, &ok, dest), ClientInput::Absorb);
        assert_eq!(txs.poll_timeout(), Some(14_000), "Timer K = T4");
        let (sent, events) = run(&mut txs, u64::MAX);
        assert!(sent.is_empty());
        assert_eq!(events, vec![(14_000, TxEvent::Terminated(key))]);
    }

    #[test]
    fn non_invite_client_over_tcp_ends_right_after_final() {
        let mut txs = Transactions::new(TimerConfig::default());
        let dest = peer(Transport::Tcp, 5060);
        let req = request(Method::Bye, "z9hG4bKbye", "c");
        let key = txs.send_request(0, req.clone(), dest);
        drain(&mut txs);
        let ok = Response::to_request(&req, 200, Some("t"));
        assert_eq!(
            txs.receive_response(40, &ok, dest),
            ClientInput::Deliver(key.clone())
        );
        // Still readable until the zero-length Timer K fires.
        assert_eq!(txs.client_request(&key), Some(&req));
        assert_eq!(txs.poll_timeout(), Some(40));
        txs.handle_timeout(40);
        assert_eq!(drain(&mut txs).1, vec![TxEvent::Terminated(key)]);
        assert!(txs.is_empty());
    }

    #[test]
    fn unmatched_responses_are_reported() {
        let mut txs = Transactions::new(TimerConfig::default());
        let dest = peer(Transport::Udp, 5060);
        let req = request(Method::Invite, "z9hG4bKx", "c");
        let key = txs.send_request(0, req.clone(), dest);
        let other_branch =
            Response::to_request(&request(Method::Invite, "z9hG4bKy", "c"), 180, None);
        assert_eq!(
            txs.receive_response(1, &other_branch, dest),
            ClientInput::Unmatched
        );
        let mut bogus = Response::to_request(&req, 200, None);
        bogus.status = 799;
        assert_eq!(
            txs.receive_response(1, &bogus, dest),
            ClientInput::Unmatched
        );
        assert_eq!(txs.state(&key), Some(TxState::Calling));
        // Same branch, other CSeq method: a different transaction.
        let mut wrong_method = Response::to_request(&req, 200, None);
        wrong_method.headers.cseq.method = Method::Bye;
        assert_eq!(
            txs.receive_response(1, &wrong_method, dest),
            ClientInput::Unmatched
        );
    }

    #[test]
    fn server_absorbs_invite_retransmission_and_resends_180() {
        let mut txs = Transactions::new(TimerConfig::default());
        let src = peer(Transport::Udp, 5070);
        let reply_to = peer(Transport::Udp, 5080);
        let invite = request(Method::Invite, "z9hG4bKsrv", "c");
        let ServerInput::New(key) = txs.receive_request(0, &invite, src) else {
            panic!("first INVITE creates a transaction");
        };
        assert_eq!(key.branch, "z9hG4bKsrv");
        assert!(key.server);
        assert_eq!(txs.state(&key), Some(TxState::Proceeding));
        assert_eq!(txs.server_request(&key), Some(&invite));
        // Before any response a retransmission is absorbed silently.
        assert_eq!(
            txs.receive_request(100, &invite, src),
            ServerInput::Retransmission
        );
        assert!(drain(&mut txs).0.is_empty());

        let ringing = Response::to_request(&invite, 180, Some("uas"));
        txs.send_response(200, &key, ringing.clone(), reply_to)
            .expect("live transaction");
        assert_eq!(drain(&mut txs).0.len(), 1);
        assert_eq!(
            txs.receive_request(700, &invite, src),
            ServerInput::Retransmission
        );
        let (sent, _) = drain(&mut txs);
        assert_eq!(
            sent,
            vec![Transmit {
                dest: reply_to,
                bytes: emit_response(&ringing)
            }]
        );
        assert_eq!(txs.poll_timeout(), None, "no timers while Proceeding");
    }

    #[test]
    fn server_486_retransmits_until_ack_then_timer_i() {
        let mut txs = Transactions::new(TimerConfig::default());
        let src = peer(Transport::Udp, 5070);
        let invite = request(Method::Invite, "z9hG4bKbusy", "c");
        let ServerInput::New(key) = txs.receive_request(0, &invite, src) else {
            panic!("new transaction");
        };
        // A dialog-creating 180 first: the 486 is then sent statefully.
        let ringing = Response::to_request(&invite, 180, Some("uas"));
        txs.send_response(0, &key, ringing, src)
            .expect("live transaction");
        let busy = Response::to_request(&invite, 486, Some("uas"));
        txs.send_response(0, &key, busy.clone(), src)
            .expect("live transaction");
        drain(&mut txs);
        assert_eq!(txs.state(&key), Some(TxState::Completed));
        let (sent, _) = run(&mut txs, 4_000);
        assert_eq!(times(&sent), vec![500, 1500, 3500]);
        assert!(sent.iter().all(|(_, t)| t.bytes == emit_response(&busy)));

        let ack = build_ack_non2xx(&invite, &busy);
        assert_eq!(
            txs.receive_request(4_000, &ack, src),
            ServerInput::AckAbsorbed
        );
        // Confirmed: the transaction leaves the live table for the completed cache.
        assert_eq!(drain(&mut txs).1, vec![TxEvent::Terminated(key.clone())]);
        assert_eq!(txs.state(&key), None);
        assert!(txs.is_empty());
        assert_eq!(txs.completed_len(), 1);
        assert_eq!(
            txs.receive_request(4_100, &ack, src),
            ServerInput::AckAbsorbed
        );
        assert_eq!(
            txs.receive_request(4_200, &invite, src),
            ServerInput::Retransmission
        );
        assert!(drain(&mut txs).0.is_empty(), "absorbed without re-sending");
        assert_eq!(txs.poll_timeout(), Some(9_000), "Timer I = T4");
        let (sent, events) = run(&mut txs, u64::MAX);
        assert!(sent.is_empty());
        assert!(events.is_empty());
        assert_eq!(txs.completed_len(), 0);
        assert!(matches!(
            txs.receive_request(9_000, &invite, src),
            ServerInput::New(_)
        ));
    }

    #[test]
    fn server_486_without_ack_times_out_with_timer_h() {
        let mut txs = Transactions::new(TimerConfig::default());
        let src = peer(Transport::Udp, 5070);
        let invite = request(Method::Invite, "z9hG4bKnoack", "c");
        let ServerInput::New(key) = txs.receive_request(0, &invite, src) else {
            panic!("new transaction");
        };
        txs.send_response(0, &key, Response::to_request(&invite, 183, Some("t")), src)
            .expect("live transaction");
        txs.send_response(0, &key, Response::to_request(&invite, 486, Some("t")), src)
            .expect("live transaction");
        assert_eq!(drain(&mut txs).0.len(), 2);
        let (sent, events) = run(&mut txs, u64::MAX);
        assert_eq!(
            times(&sent),
            vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        assert_eq!(
            events,
            vec![
                (T64, TxEvent::Timeout(key.clone())),
                (T64, TxEvent::Terminated(key))
            ]
        );
        assert!(txs.is_empty());
    }

    #[test]
    fn server_2xx_retransmits_until_ack_with_new_branch() {
        let mut txs = Transactions::new(TimerConfig::default());
        let src = peer(Transport::Udp, 5070);
        let invite = request(Method::Invite, "z9hG4bKok", "c");
        let ServerInput::New(key) = txs.receive_request(0, &invite, src) else {
            panic!("new transaction");
        };
        let ok = Response::to_request(&invite, 200, Some("uas"));
        txs.send_response(0, &key, ok, src)
            .expect("live transaction");
        drain(&mut txs);
        assert_eq!(txs.state(&key), Some(TxState::Accepted));
        let (sent, _) = run(&mut txs, 2_000);
        assert_eq!(times(&sent), vec![500, 1500]);

        // An ACK with the wrong To tag matches nothing.
        let stray = ack_2xx(&invite, "other", "z9hG4bKack");
        assert_eq!(
            txs.receive_request(2_000, &stray, src),
            ServerInput::AckUnmatched
        );
        let ack = ack_2xx(&invite, "uas", "z9hG4bKack");
        assert_eq!(
            txs.receive_request(2_000, &ack, src),
            ServerInput::Ack2xx(key.clone())
        );
        // The ACKed transaction leaves the live table (no timeout for the TU) ...
        assert_eq!(drain(&mut txs).1, vec![TxEvent::Terminated(key.clone())]);
        assert_eq!(txs.state(&key), None);
        assert_eq!(txs.completed_len(), 1);
        // ... and its completed entry absorbs a retransmitted ACK and INVITE until Timer L.
        assert_eq!(
            txs.receive_request(2_100, &ack, src),
            ServerInput::AckAbsorbed
        );
        assert_eq!(
            txs.receive_request(2_200, &invite, src),
            ServerInput::Retransmission
        );
        assert_eq!(txs.poll_timeout(), Some(T64), "Timer L");
        let (sent, events) = run(&mut txs, u64::MAX);
        assert!(sent.is_empty(), "no more 2xx retransmissions");
        assert!(events.is_empty());
        assert_eq!(
            txs.receive_request(T64, &ack, src),
            ServerInput::AckUnmatched
        );
    }

    #[test]
    fn server_2xx_without_ack_times_out_at_timer_l() {
        let mut txs = Transactions::new(TimerConfig::default());
        let src = peer(Transport::Udp, 5070);
        let invite = request(Method::Invite, "z9hG4bKlost", "c");
        let ServerInput::New(key) = txs.receive_request(0, &invite, src) else {
            panic!("new transaction");
        };
        txs.send_response(0, &key, Response::to_request(&invite, 200, Some("t")), src)
            .expect("live transaction");
        drain(&mut txs);
        let (sent, events) = run(&mut txs, u64::MAX);
        assert_eq!(sent.len(), 10, "2xx retransmitted at T1 doubling to T2");
        assert_eq!(
            events,
            vec![
                (T64, TxEvent::Timeout(key.clone())),
                (T64, TxEvent::Terminated(key))
            ]
        );
    }

    #[test]
    fn server_2xx_over_tcp_is_not_retransmitted() {
        let mut txs = Transactions::new(TimerConfig::default());
        let src = peer(Transport::Tcp, 5070);
        let invite = request(Method::Invite, "z9hG4bKtcpok", "c");
        let ServerInput::New(key) = txs.receive_request(0, &invite, src) else {
            panic!("new transaction");
        };
        txs.send_response(0, &key, Response::to_request(&invite, 200, Some("t")), src)
            .expect("live transaction");
        drain(&mut txs);
        assert_eq!(txs.poll_timeout(), Some(T64));
        let (sent, _) = run(&mut txs, u64::MAX);
        assert!(sent.is_empty());
    }

    #[test]
    fn send_response_errors() {
        let mut txs = Transactions::new(TimerConfig::default());
        let src = peer(Transport::Udp, 5070);
        let invite = request(Method::Invite, "z9hG4bKerr", "c");
        let unknown = TxKey {
            branch: "z9hG4bKnone".to_string(),
            method: Method::Invite,
            server: true,
        };
        let resp = Response::to_request(&invite, 486, Some("t"));
        assert_eq!(
            txs.send_response(0, &unknown, resp.clone(), src),
            Err(TransactionError::NoSuchTransaction)
        );
        let ServerInput::New(key) = txs.receive_request(0, &invite, src) else {
            panic!("new transaction");
        };
        let mut bad = resp.clone();
        bad.status = 99;
        assert_eq!(
            txs.send_response(0, &key, bad, src),
            Err(TransactionError::InvalidStatus(99))
        );
        txs.send_response(0, &key, Response::to_request(&invite, 180, Some("t")), src)
            .expect("early dialog");
        txs.send_response(0, &key, resp.clone(), src)
            .expect("first final");
        assert_eq!(
            txs.send_response(0, &key, resp.clone(), src),
            Err(TransactionError::FinalResponseAlreadySent)
        );
        // Before a dialog the final response ends the transaction at once.
        let other = request(Method::Invite, "z9hG4bKother", "c");
        let ServerInput::New(key) = txs.receive_request(0, &other, src) else {
            panic!("new transaction");
        };
        txs.send_response(0, &key, resp.clone(), src)
            .expect("stateless final");
        assert_eq!(
            txs.send_response(0, &key, resp, src),
            Err(TransactionError::NoSuchTransaction)
        );
    }

    #[test]
    fn non_invite_server_resends_last_response_until_timer_j() {
        let mut txs = Transactions::new(TimerConfig::default());
        let src = peer(Transport::Udp, 5070);
        let reg = request(Method::Register, "z9hG4bKsreg", "c");
        let ServerInput::New(key) = txs.receive_request(0, &reg, src) else {
            panic!("new transaction");
        };
        assert_eq!(txs.state(&key), Some(TxState::Trying));
        assert_eq!(
            txs.receive_request(10, &reg, src),
            ServerInput::Retransmission
        );
        assert!(drain(&mut txs).0.is_empty());
        let ok = Response::to_request(&reg, 200, Some("t"));
        txs.send_response(20, &key, ok.clone(), src)
            .expect("live transaction");
        drain(&mut txs);
        assert_eq!(
            txs.receive_request(30, &reg, src),
            ServerInput::Retransmission
        );
        assert_eq!(drain(&mut txs).0[0].bytes, emit_response(&ok));
        assert_eq!(txs.poll_timeout(), Some(20 + T64));
        let (sent, events) = run(&mut txs, u64::MAX);
        assert!(sent.is_empty() && events.is_empty());
        assert_eq!(txs.completed_len(), 0, "Timer J freed the entry");
        assert_eq!(txs.state(&key), None);
        assert!(matches!(
            txs.receive_request(40_000, &reg, src),
            ServerInput::New(_)
        ));
    }

    #[test]
    fn unanswered_server_transactions_are_bounded() {
        let mut txs = Transactions::new(TimerConfig::default());
        let src = peer(Transport::Udp, 5070);
        let ServerInput::New(opt) =
            txs.receive_request(0, &request(Method::Options, "z9hG4bKo", "c"), src)
        else {
            panic!("new transaction");
        };
        let ServerInput::New(inv) =
            txs.receive_request(0, &request(Method::Invite, "z9hG4bKi", "c"), src)
        else {
            panic!("new transaction");
        };
        let (sent, events) = run(&mut txs, u64::MAX);
        assert!(sent.is_empty());
        assert_eq!(events, vec![(T64, TxEvent::Terminated(opt))]);
        assert_eq!(
            txs.state(&inv),
            Some(TxState::Proceeding),
            "INVITE waits for the TU"
        );
        txs.abandon(&inv);
        assert_eq!(drain(&mut txs).1, vec![TxEvent::Terminated(inv)]);
        assert!(txs.is_empty());
    }

    #[test]
    fn client_acks_486_and_reacks_its_retransmission() {
        let mut txs = Transactions::new(TimerConfig::default());
        let dest = peer(Transport::Udp, 5060);
        let invite = request(Method::Invite, "z9hG4bKcli", "c");
        let key = txs.send_request(0, invite.clone(), dest);
        drain(&mut txs);
        let ringing = Response::to_request(&invite, 180, Some("uas"));
        assert_eq!(
            txs.receive_response(100, &ringing, dest),
            ClientInput::Deliver(key.clone())
        );
        assert!(txs.is_proceeding(&key));
        assert_eq!(txs.timer_deadline(&key, Timer::A), None);
        assert_eq!(txs.timer_deadline(&key, Timer::B), None);
        assert!(
            drain(&mut txs).0.is_empty(),
            "no retransmission in Proceeding"
        );

        let busy = Response::to_request(&invite, 486, Some("uas"));
        assert_eq!(
            txs.receive_response(200, &busy, dest),
            ClientInput::Deliver(key.clone())
        );
        assert!(!txs.is_proceeding(&key));
        let expected_ack = Transmit {
            dest,
            bytes: emit_request(&build_ack_non2xx(&invite, &busy)),
        };
        assert_eq!(drain(&mut txs).0, vec![expected_ack.clone()]);
        assert_eq!(txs.receive_response(300, &busy, dest), ClientInput::Absorb);
        assert_eq!(drain(&mut txs).0, vec![expected_ack]);
        assert_eq!(txs.poll_timeout(), Some(200 + TIMER_D_UNRELIABLE));
        let (_, events) = run(&mut txs, u64::MAX);
        assert_eq!(
            events,
            vec![(200 + TIMER_D_UNRELIABLE, TxEvent::Terminated(key))]
        );
    }

    #[test]
    fn auto_ack_on_the_wire_follows_rfc_3261_17_1_1_3() {
        use crate::sip::message::Message;
        use crate::sip::wire::parse;

        let invite_text = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
            Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n\
            Max-Forwards: 70\r\n\
            Route: <sip:proxy.atlanta.example.com;lr>\r\n\
            To: Bob <sip:bob@biloxi.example.com>\r\n\
            From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
            Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
            CSeq: 314159 INVITE\r\n\
            Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
            Content-Length: 0\r\n\r\n";
        let Ok(Message::Request(invite)) = parse(invite_text.as_bytes()) else {
            panic!("literal INVITE parses");
        };
        let busy_text = "SIP/2.0 486 Busy Here\r\n\
            Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n\
            To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n\
            From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
            Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
            CSeq: 314159 INVITE\r\n\
            Content-Length: 0\r\n\r\n";
        let Ok(Message::Response(busy)) = parse(busy_text.as_bytes()) else {
            panic!("literal 486 parses");
        };
        let mut txs = Transactions::new(TimerConfig::default());
        let dest = peer(Transport::Udp, 5060);
        let key = txs.send_request(0, invite.clone(), dest);
        let (sent, _) = drain(&mut txs);
        assert_eq!(parse(&sent[0].bytes), Ok(Message::Request(invite.clone())));
        assert_eq!(
            txs.receive_response(80, &busy, dest),
            ClientInput::Deliver(key)
        );
        let (sent, _) = drain(&mut txs);
        let Ok(Message::Request(ack)) = parse(&sent[0].bytes) else {
            panic!("the ACK on the wire parses");
        };
        assert_eq!(ack.method, Method::Ack);
        assert_eq!(ack.uri, invite.uri);
        assert_eq!(
            ack.headers.cseq,
            CSeq {
                seq: 314159,
                method: Method::Ack
            }
        );
        assert_eq!(ack.headers.to.tag(), Some("a6c85cf"));
        assert_eq!(ack.headers.from, invite.headers.from);
        assert_eq!(ack.headers.call_id, invite.headers.call_id);
        assert_eq!(ack.headers.via, invite.headers.via);
        assert_eq!(ack.headers.route, invite.headers.route);
    }

    #[test]
    fn client_2xx_enters_accepted_and_reports_further_2xx() {
        let mut txs = Transactions::new(TimerConfig::default());
        let dest = peer(Transport::Udp, 5060);
        let invite = request(Method::Invite, "z9hG4bKacc", "c");
        let key = txs.send_request(0, invite.clone(), dest);
        drain(&mut txs);
        let ok = Response::to_request(&invite, 200, Some("a"));
        assert_eq!(
            txs.receive_response(50, &ok, dest),
            ClientInput::Deliver(key.clone())
        );
        assert_eq!(txs.state(&key), Some(TxState::Accepted));
        assert!(
            drain(&mut txs).0.is_empty(),
            "the TU ACKs a 2xx, not the tx"
        );
        assert_eq!(
            txs.receive_response(60, &ok, dest),
            ClientInput::Retransmitted2xx(key.clone())
        );
        let fork = Response::to_request(&invite, 200, Some("b"));
        assert_eq!(
            txs.receive_response(70, &fork, dest),
            ClientInput::Retransmitted2xx(key.clone())
        );
        let (sent, events) = run(&mut txs, u64::MAX);
        assert!(sent.is_empty());
        assert_eq!(
            events,
            vec![(50 + T64, TxEvent::Terminated(key))],
            "Timer M"
        );
    }

    #[test]
    fn cancel_matches_its_invite_and_builds_per_rfc() {
        let mut txs = Transactions::new(TimerConfig::default());
        let src = peer(Transport::Udp, 5070);
        let invite = request(Method::Invite, "z9hG4bKcan", "c");
        let ServerInput::New(inv_key) = txs.receive_request(0, &invite, src) else {
            panic!("new transaction");
        };
        let cancel = build_cancel(&invite);
        assert_eq!(cancel.method, Method::Cancel);
        assert_eq!(cancel.uri, invite.uri);
        assert_eq!(cancel.headers.via, vec![invite.headers.via[0].clone()]);
        assert_eq!(cancel.headers.to, invite.headers.to);
        assert_eq!(cancel.headers.from, invite.headers.from);
        assert_eq!(
            cancel.headers.cseq,
            CSeq {
                seq: 1,
                method: Method::Cancel
            }
        );
        assert_eq!(cancel.headers.route, invite.headers.route);
        assert_eq!(cancel.headers.max_forwards, Some(70));

        let ServerInput::New(cancel_key) = txs.receive_request(10, &cancel, src) else {
            panic!("a CANCEL is its own transaction");
        };
        assert_eq!(cancel_key.method, Method::Cancel);
        assert_eq!(cancel_key.branch, inv_key.branch);
        assert_eq!(txs.find_invite_for_cancel(&cancel), Some(inv_key));

        let mut other = cancel.clone();
        other.headers.via[0] = via("z9hG4bKelse", "pc33.example.com");
        assert_eq!(txs.find_invite_for_cancel(&other), None);
        let mut other_host = cancel;
        other_host.headers.via[0].host = "attacker.example.net".to_string();
        assert_eq!(txs.find_invite_for_cancel(&other_host), None);
    }

    #[test]
    fn client_cancel_bounds_a_proceeding_invite() {
        let mut txs = Transactions::new(TimerConfig::default());
        let dest = peer(Transport::Udp, 5060);
        let invite = request(Method::Invite, "z9hG4bKbound", "c");
        let key = txs.send_request(0, invite.clone(), dest);
        txs.receive_response(100, &Response::to_request(&invite, 180, Some("t")), dest);
        let cancel_key = txs.send_request(1_000, build_cancel(&invite), dest);
        assert_eq!(cancel_key.method, Method::Cancel);
        assert_eq!(txs.timer_deadline(&key, Timer::B), Some(1_000 + T64));
        // The CANCEL is answered, the INVITE never is.
        let ok = Response::to_request(&build_cancel(&invite), 200, Some("t"));
        assert_eq!(
            txs.receive_response(1_100, &ok, dest),
            ClientInput::Deliver(cancel_key)
        );
        drain(&mut txs);
        let (_, events) = run(&mut txs, u64::MAX);
        assert!(events.contains(&(1_000 + T64, TxEvent::Timeout(key))));
        assert!(txs.is_empty());
    }

    #[test]
    fn ack_request_creates_no_client_transaction() {
        let mut txs = Transactions::new(TimerConfig::default());
        let dest = peer(Transport::Udp, 5060);
        txs.send_request(0, request(Method::Ack, "z9hG4bKack", "c"), dest);
        assert_eq!(drain(&mut txs).0.len(), 1);
        assert!(txs.is_empty());
        assert_eq!(txs.poll_timeout(), None);
    }

    #[test]
    fn same_branch_from_another_sent_by_is_a_new_transaction() {
        let mut txs = Transactions::new(TimerConfig::default());
        let src = peer(Transport::Udp, 5070);
        let invite = request(Method::Invite, "z9hG4bKdup", "c");
        let ServerInput::New(first) = txs.receive_request(0, &invite, src) else {
            panic!("new transaction");
        };
        let mut spoof = invite.clone();
        spoof.headers.via[0].host = "other.example.net".to_string();
        let ServerInput::New(second) = txs.receive_request(10, &spoof, src) else {
            panic!("different sent-by is a different transaction");
        };
        assert_ne!(first, second);
        assert_eq!(
            txs.receive_request(20, &spoof, src),
            ServerInput::Retransmission
        );
        assert_eq!(txs.server_request(&second), Some(&spoof));
        assert_eq!(txs.server_request(&first), Some(&invite));
        assert_eq!(txs.len(), 2);
    }

    #[test]
    fn rfc2543_branches_fall_back_to_call_id_cseq_from_tag() {
        let mut txs = Transactions::new(TimerConfig::default());
        let src = peer(Transport::Udp, 5070);
        let mut invite = request(Method::Invite, "old-style", "c2543");
        invite.headers.via[0].params = Params::default();
        let ServerInput::New(key) = txs.receive_request(0, &invite, src) else {
            panic!("new transaction");
        };
        assert!(key.branch.starts_with(FALLBACK_PREFIX));
        assert_eq!(
            txs.receive_request(5, &invite, src),
            ServerInput::Retransmission
        );
        let busy = Response::to_request(&invite, 486, Some("t"));
        txs.send_response(10, &key, busy.clone(), src)
            .expect("live transaction");
        let ack = build_ack_non2xx(&invite, &busy);
        assert_eq!(txs.receive_request(20, &ack, src), ServerInput::AckAbsorbed);
        let mut next = invite;
        next.headers.cseq.seq = 2;
        assert!(matches!(
            txs.receive_request(30, &next, src),
            ServerInput::New(_)
        ));
    }

    #[test]
    fn ten_thousand_concurrent_transactions_run_to_completion() {
        const N: usize = 5_000;
        let mut txs = Transactions::with_max_server(TimerConfig::default(), N);
        let dest = peer(Transport::Udp, 5060);
        let mut sends = 0usize;
        for i in 0..N {
            let now = (i % 1000) as u64;
            txs.send_request(
                now,
                request(Method::Invite, &format!("z9hG4bKc{i}"), &format!("cc{i}")),
                dest,
            );
            let invite = request(Method::Invite, &format!("z9hG4bKs{i}"), &format!("sc{i}"));
            let ServerInput::New(key) = txs.receive_request(now, &invite, dest) else {
                panic!("distinct branches make new transactions");
            };
            // After a dialog-creating 180 the 486 is stateful (retransmitted, Timer H).
            txs.send_response(
                now,
                &key,
                Response::to_request(&invite, 180, Some("t")),
                dest,
            )
            .expect("live transaction");
            txs.send_response(
                now,
                &key,
                Response::to_request(&invite, 486, Some("t")),
                dest,
            )
            .expect("live transaction");
        }
        assert_eq!(txs.len(), 2 * N);
        let mut timeouts = 0usize;
        let mut terminated = 0usize;
        let mut wakeups = 0usize;
        loop {
            while txs.poll_transmit().is_some() {
                sends += 1;
            }
            while let Some(e) = txs.poll_event() {
                match e {
                    TxEvent::Timeout(_) => timeouts += 1,
                    TxEvent::Terminated(_) => terminated += 1,
                }
            }
            let Some(at) = txs.poll_timeout() else { break };
            txs.handle_timeout(at);
            wakeups += 1;
        }
        // Client INVITE: 7 sends; server 180 then 486 with no ACK: 12 sends.
        assert_eq!(sends, N * 7 + N * 12);
        assert_eq!(timeouts, 2 * N);
        assert_eq!(terminated, 2 * N);
        assert!(txs.is_empty());
        assert!(wakeups > 0);
    }

    #[test]
    fn absorbs_request_names_exactly_the_retransmissions_and_changes_nothing() {
        let mut txs = Transactions::new(TimerConfig::default());
        let src = peer(Transport::Udp, 5070);
        let live = request(Method::Register, "z9hG4bKlive", "live");
        let done = request(Method::Register, "z9hG4bKdone", "done");
        let rejected = request(Method::Invite, "z9hG4bKrejd", "rejd");
        let fresh = request(Method::Register, "z9hG4bKfresh", "fresh");
        assert!(!txs.absorbs_request(0, &live), "nothing known yet");
        assert!(matches!(
            txs.receive_request(0, &live, src),
            ServerInput::New(_)
        ));
        let ServerInput::New(key) = txs.receive_request(0, &done, src) else {
            panic!("new transaction");
        };
        txs.send_response(0, &key, Response::to_request(&done, 200, Some("t")), src)
            .expect("final");
        let ServerInput::New(key) = txs.receive_request(0, &rejected, src) else {
            panic!("new transaction");
        };
        txs.send_response(
            0,
            &key,
            Response::to_request(&rejected, 401, Some("t")),
            src,
        )
        .expect("final");
        let _ = drain(&mut txs);
        let (servers, stateless) = (txs.server_len(), txs.stateless_len());
        // Live, completed and statelessly answered: all absorbed.
        assert!(txs.absorbs_request(1, &live));
        assert!(txs.absorbs_request(1, &done));
        assert!(txs.absorbs_request(1, &rejected));
        // A new request and an ACK are not.
        assert!(!txs.absorbs_request(1, &fresh));
        let mut ack = rejected.clone();
        ack.method = Method::Ack;
        ack.headers.cseq.method = Method::Ack;
        assert!(!txs.absorbs_request(1, &ack));
        // Asking changed nothing: no transaction, no transmit.
        assert_eq!(
            (txs.server_len(), txs.stateless_len()),
            (servers, stateless)
        );
        assert!(txs.poll_transmit().is_none());
        // Once the stateless answer has aged out (64*T1), a copy would be new again.
        assert!(!txs.absorbs_request(TimerConfig::default().t64() + 1, &rejected));
    }

    #[test]
    fn rejection_before_a_dialog_is_stateless_and_retransmissions_are_answered_again() {
        let mut txs = Transactions::new(TimerConfig::default());
        let src = peer(Transport::Udp, 5070);
        let invite = request(Method::Invite, "z9hG4bKrej", "rej");
        let ServerInput::New(key) = txs.receive_request(0, &invite, src) else {
            panic!("new transaction");
        };
        txs.send_response(0, &key, Response::to_request(&invite, 100, None), src)
            .expect("trying");
        let forbidden = Response::to_request(&invite, 403, Some("t"));
        txs.send_response(0, &key, forbidden.clone(), src)
            .expect("final");
        let (sent, events) = drain(&mut txs);
        assert_eq!(sent.len(), 2, "100 and 403");
        assert_eq!(events, vec![TxEvent::Terminated(key)]);
        assert!(txs.is_empty(), "no transaction state");
        assert_eq!(txs.poll_timeout(), None, "no timers");
        assert_eq!(txs.stateless_len(), 1);
        // The INVITE retransmitted (Timer A) gets the same 403 again, not a new transaction.
        for at in [500, 1_500, 3_500] {
            assert_eq!(
                txs.receive_request(at, &invite, src),
                ServerInput::Retransmission
            );
            let (sent, _) = drain(&mut txs);
            assert_eq!(
                sent,
                vec![Transmit {
                    dest: src,
                    bytes: emit_response(&forbidden)
                }]
            );
        }
        assert_eq!(
            txs.receive_request(4_000, &build_ack_non2xx(&invite, &forbidden), src),
            ServerInput::AckAbsorbed
        );
        assert!(drain(&mut txs).0.is_empty(), "the ACK is absorbed silently");
        // From another sent-by it is another request.
        let mut elsewhere = invite.clone();
        elsewhere.headers.via[0].host = "other.example.com".to_string();
        assert!(matches!(
            txs.receive_request(4_000, &elsewhere, src),
            ServerInput::New(_)
        ));
        // After 64*T1 the cached answer is no longer used.
        assert!(matches!(
            txs.receive_request(T64 + 1, &invite, src),
            ServerInput::New(_)
        ));
        // Non-INVITE rejections too (a 401 to a REGISTER).
        let reg = request(Method::Register, "z9hG4bKreg", "reg");
        let ServerInput::New(key) = txs.receive_request(0, &reg, src) else {
            panic!("new transaction");
        };
        let before = txs.len();
        txs.send_response(0, &key, Response::to_request(&reg, 401, Some("t")), src)
            .expect("final");
        assert_eq!(txs.len(), before - 1);
        assert_eq!(
            txs.receive_request(100, &reg, src),
            ServerInput::Retransmission
        );
    }

    #[test]
    fn stateless_cache_is_bounded() {
        let mut txs = Transactions::new(TimerConfig::default());
        let src = peer(Transport::Udp, 5070);
        for i in 0..(MAX_STATELESS_ENTRIES + 100) {
            let req = request(Method::Register, &format!("z9hG4bKb{i}"), &format!("c{i}"));
            let ServerInput::New(key) = txs.receive_request(0, &req, src) else {
                panic!("new transaction");
            };
            txs.send_response(0, &key, Response::to_request(&req, 401, Some("t")), src)
                .expect("final");
            drain(&mut txs);
        }
        assert_eq!(txs.stateless_len(), MAX_STATELESS_ENTRIES);
        assert!(txs.stateless.bytes <= MAX_STATELESS_BYTES);
        assert!(txs.stateless.order.len() <= 2 * MAX_STATELESS_ENTRIES + 1);
        assert!(txs.is_empty());
        // The oldest were evicted: their retransmission is a new request again.
        let first = request(Method::Register, "z9hG4bKb0", "c0");
        assert!(matches!(
            txs.receive_request(1, &first, src),
            ServerInput::New(_)
        ));
    }

    #[test]
    fn server_transaction_cap_answers_overloaded_and_keeps_a_reserve() {
        let mut txs = Transactions::with_max_server(TimerConfig::default(), 16);
        let src = peer(Transport::Udp, 5070);
        let mut invites = Vec::new();
        for i in 0..16 {
            let inv = request(
                Method::Invite,
                &format!("z9hG4bKcap{i}"),
                &format!("cap{i}"),
            );
            assert!(matches!(
                txs.receive_request(0, &inv, src),
                ServerInput::New(_)
            ));
            invites.push(inv);
        }
        assert_eq!(txs.server_len(), 16);
        let extra = request(Method::Invite, "z9hG4bKcapx", "capx");
        assert_eq!(txs.receive_request(0, &extra, src), ServerInput::Overloaded);
        assert_eq!(txs.server_len(), 16, "nothing created");
        // Retransmissions of live ones are still absorbed.
        assert_eq!(
            txs.receive_request(1, &invites[0], src),
            ServerInput::Retransmission
        );
        // A CANCEL of a live INVITE and an in-dialog BYE use the reserve (16 / 8 = 2).
        let mut cancel = invites[0].clone();
        cancel.method = Method::Cancel;
        cancel.headers.cseq.method = Method::Cancel;
        assert!(matches!(
            txs.receive_request(2, &cancel, src),
            ServerInput::New(_)
        ));
        let mut bye = request(Method::Bye, "z9hG4bKbye", "dlg");
        bye.headers.to.params.set("tag", Some("x".to_string()));
        assert!(matches!(
            txs.receive_request(2, &bye, src),
            ServerInput::New(_)
        ));
        let mut bye2 = request(Method::Bye, "z9hG4bKbye2", "dlg2");
        bye2.headers.to.params.set("tag", Some("y".to_string()));
        assert_eq!(txs.receive_request(2, &bye2, src), ServerInput::Overloaded);
        // Rejections leave no state, so the table drains and admits again.
        for inv in &invites {
            let key = ServerIdent::of(inv, Method::Invite).key;
            txs.send_response(3, &key, Response::to_request(inv, 480, Some("t")), src)
                .expect("final");
        }
        assert_eq!(txs.server_len(), 2);
        assert!(matches!(
            txs.receive_request(4, &extra, src),
            ServerInput::New(_)
        ));
    }

    /// Completes a REGISTER server transaction from `src` with a 200 sent to `reply_to`;
    /// returns the request and the response bytes.
    fn complete_register(
        txs: &mut Transactions,
        now: Millis,
        i: usize,
        src: Peer,
        reply_to: Peer,
    ) -> (Request, Vec<u8>) {
        let reg = request(
            Method::Register,
            &format!("z9hG4bKdone{i}"),
            &format!("d{i}"),
        );
        let ServerInput::New(key) = txs.receive_request(now, &reg, src) else {
            panic!("new transaction");
        };
        let ok = Response::to_request(&reg, 200, Some("t"));
        txs.send_response(now, &key, ok.clone(), reply_to)
            .expect("live transaction");
        let (sent, events) = drain(txs);
        assert_eq!(sent.len(), 1);
        assert_eq!(
            events,
            vec![TxEvent::Terminated(key)],
            "leaves the live table"
        );
        (reg, emit_response(&ok))
    }

    #[test]
    fn completed_non_invite_is_answered_from_the_compact_entry_with_the_same_bytes() {
        let mut txs = Transactions::new(TimerConfig::default());
        let src = peer(Transport::Udp, 5070);
        let reply_to = peer(Transport::Udp, 5080);
        let (reg, bytes) = complete_register(&mut txs, 0, 1, src, reply_to);
        assert!(txs.is_empty());
        assert_eq!(txs.server_len(), 0);
        assert_eq!(txs.completed_len(), 1);
        for at in [500, 1_500, 3_500, 7_500, T64 - 1] {
            assert_eq!(
                txs.receive_request(at, &reg, src),
                ServerInput::Retransmission
            );
            assert_eq!(
                drain(&mut txs).0,
                vec![Transmit {
                    dest: reply_to,
                    bytes: bytes.clone()
                }]
            );
        }
        let key = ServerIdent::of(&reg, Method::Register).key;
        assert_eq!(
            txs.send_response(1, &key, Response::to_request(&reg, 200, Some("t")), src),
            Err(TransactionError::FinalResponseAlreadySent)
        );
        // The same branch from another sent-by is another request, and completes on its own.
        let mut other = reg.clone();
        other.headers.via[0].host = "other.example.net".to_string();
        let ServerInput::New(alt) = txs.receive_request(10, &other, src) else {
            panic!("another sent-by is a new transaction");
        };
        assert_ne!(alt, key);
        assert_eq!(
            txs.receive_request(11, &other, src),
            ServerInput::Retransmission
        );
        assert!(drain(&mut txs).0.is_empty(), "live, nothing sent yet");
        txs.send_response(12, &alt, Response::to_request(&other, 404, Some("t")), src)
            .expect("live transaction");
        drain(&mut txs);
        assert_eq!(
            txs.receive_request(13, &reg, src),
            ServerInput::Retransmission
        );
        assert_eq!(
            drain(&mut txs).0[0].bytes,
            bytes,
            "the first one's own answer"
        );
    }

    #[test]
    fn completed_entries_expire_at_their_deadline_and_free_their_memory() {
        let mut txs = Transactions::new(TimerConfig::default());
        let src = peer(Transport::Udp, 5070);
        for i in 0..3_000 {
            complete_register(&mut txs, 0, i, src, src);
        }
        assert_eq!(txs.completed_len(), 3_000);
        assert!(txs.completed.bytes > 0);
        assert_eq!(txs.poll_timeout(), Some(T64), "Timer J");
        txs.handle_timeout(T64 - 1);
        assert_eq!(txs.completed_len(), 3_000);
        txs.handle_timeout(T64);
        assert_eq!(txs.completed_len(), 0);
        assert_eq!(txs.completed.bytes, 0);
        assert_eq!(txs.poll_timeout(), None);
        assert!(
            txs.completed.entries.capacity() < 1_024,
            "the table shrank back: {}",
            txs.completed.entries.capacity()
        );
        assert_eq!(txs.completed_dropped(), 0, "expiry is not an early drop");
        // Over a reliable transport Timer J is zero: nothing is kept.
        complete_register(&mut txs, T64, 9, peer(Transport::Tcp, 5070), src);
        assert_eq!(txs.completed_len(), 0);
    }

    #[test]
    fn completed_cache_full_drops_the_oldest_and_counts_it() {
        let mut txs = Transactions::new(TimerConfig::default());
        let src = peer(Transport::Udp, 5070);
        let extra = 10;
        let mut first = None;
        let mut last = None;
        for i in 0..(MAX_COMPLETED_ENTRIES + extra) {
            let (reg, _) = complete_register(&mut txs, 1, i, src, src);
            if i == 0 {
                first = Some(reg);
            } else if i == extra {
                last = Some(reg);
            }
        }
        assert_eq!(txs.completed_len(), MAX_COMPLETED_ENTRIES);
        assert_eq!(txs.completed_dropped(), extra as u64);
        assert_eq!(txs.server_stats().completed_dropped, extra as u64);
        assert!(txs.completed.bytes <= MAX_COMPLETED_BYTES);
        assert!(txs.completed.order.len() <= 2 * MAX_COMPLETED_ENTRIES + 1);
        let first = first.expect("set");
        assert!(
            matches!(txs.receive_request(2, &first, src), ServerInput::New(_)),
            "the oldest was dropped: its retransmission is a new request"
        );
        let kept = last.expect("set");
        assert_eq!(
            txs.receive_request(2, &kept, src),
            ServerInput::Retransmission
        );
    }

    #[test]
    fn completed_cache_byte_cap_drops_the_oldest() {
        let mut txs = Transactions::new(TimerConfig::default());
        let src = peer(Transport::Udp, 5070);
        let body = vec![b'x'; 12 * 1024];
        let n = MAX_COMPLETED_BYTES / (12 * 1024) + 5;
        for i in 0..n {
            let req = request(Method::Message, &format!("z9hG4bKbig{i}"), &format!("b{i}"));
            let ServerInput::New(key) = txs.receive_request(0, &req, src) else {
                panic!("new transaction");
            };
            let mut ok = Response::to_request(&req, 200, Some("t"));
            ok.body = body.clone();
            txs.send_response(0, &key, ok, src).expect("live");
            drain(&mut txs);
        }
        assert!(txs.completed.bytes <= MAX_COMPLETED_BYTES);
        assert!(txs.completed_len() < n);
        assert!(txs.completed_dropped() >= 5);
    }

    #[test]
    fn live_cap_counts_only_pending_transactions() {
        let mut txs = Transactions::with_max_server(TimerConfig::default(), 16);
        let src = peer(Transport::Udp, 5070);
        // Far more completed transactions than the cap: none is refused.
        for i in 0..200 {
            complete_register(&mut txs, 0, i, src, src);
        }
        assert_eq!(txs.server_len(), 0);
        assert_eq!(txs.completed_len(), 200);
        // The cap still holds pending ones.
        for i in 0..16 {
            let opt = request(Method::Options, &format!("z9hG4bKpend{i}"), "p");
            assert!(matches!(
                txs.receive_request(1, &opt, src),
                ServerInput::New(_)
            ));
        }
        let more = request(Method::Options, "z9hG4bKpendx", "p");
        assert_eq!(txs.receive_request(1, &more, src), ServerInput::Overloaded);
    }
}

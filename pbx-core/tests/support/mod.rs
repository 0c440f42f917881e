//! A simulated network for sans-IO endpoint tests: a virtual clock, phones that write SIP
//! as text, and an inbox per address filled from what the endpoint transmits.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cloned_ref_to_slice_refs
)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use pbx_core::endpoint::{Endpoint, EndpointConfig, Event};
use pbx_core::registrar::RegistrarConfig;
use pbx_core::sip::auth::{answer_challenge, Algorithm, NonceConfig, StoredSecret};
use pbx_core::sip::transaction::TimerConfig;
use pbx_core::sip::wire;
use pbx_core::sip::{Message, Peer, Request, Response, Transport};
use pbx_core::Millis;

/// Digest realm of the test PBX.
pub const REALM: &str = "pbx.test";
/// Where the PBX listens.
pub const PBX: &str = "10.0.0.1:5060";
/// Ring timeout of the test PBX.
pub const RING_MS: u64 = 30_000;
/// A small SDP offer.
pub const SDP_OFFER: &str = "v=0\r\no=a 1 1 IN IP4 192.168.1.10\r\ns=-\r\nc=IN IP4 192.168.1.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n";
/// A small SDP answer.
pub const SDP_ANSWER: &str = "v=0\r\no=b 1 1 IN IP4 192.168.1.20\r\ns=-\r\nc=IN IP4 192.168.1.20\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\na=sendrecv\r\n";

/// The endpoint configuration every test starts from.
pub fn config() -> EndpointConfig {
    EndpointConfig {
        realm: REALM.to_string(),
        user_agent: "Outpost-test".to_string(),
        local: vec![PBX.parse().unwrap()],
        registrar: RegistrarConfig::default(),
        nonce: NonceConfig::default(),
        auth_algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
        timers: TimerConfig::default(),
        max_server_transactions: pbx_core::sip::transaction::DEFAULT_MAX_SERVER,
        ring_timeout_ms: RING_MS,
        secret_key: [7; 32],
        seed: 42,
        media: None,
        voicemail: None,
        recording: None,
        ivr: Vec::new(),
        groups: Vec::new(),
        paging: Vec::new(),
        features: pbx_core::endpoint::FeatureCodes::default(),
        dialplan: pbx_core::dialplan::Dialplan::default(),
        trunks: Vec::new(),
        srtp_over_insecure: false,
    }
}

/// A UDP peer at `addr`.
pub fn udp(addr: SocketAddr) -> Peer {
    Peer {
        transport: Transport::Udp,
        addr,
    }
}

/// The endpoint plus the network around it.
pub struct Sim {
    pub ep: Endpoint,
    pub now: Millis,
    /// Parsed messages the endpoint sent, per destination, oldest first.
    pub inbox: HashMap<SocketAddr, VecDeque<Message>>,
    /// Every event, in order.
    pub events: Vec<Event>,
    /// Transmits that do not parse, with their destination.
    pub raw: Vec<(SocketAddr, Vec<u8>)>,
}

impl Sim {
    /// A PBX with extensions 100..=103 and 200..=203 (password `pw<ext>`).
    pub fn new() -> Sim {
        Sim::with_config(config())
    }

    /// Like [`Sim::new`] with another endpoint configuration.
    #[allow(dead_code)]
    pub fn with_config(cfg: EndpointConfig) -> Sim {
        let mut ep = Endpoint::new(cfg);
        for ext in ["100", "101", "102", "103", "200", "201", "202", "203"] {
            ep.set_user(ext, StoredSecret::new(ext, REALM, &format!("pw{ext}")));
        }
        Sim {
            ep,
            now: 1_700_000_000_000,
            inbox: HashMap::new(),
            events: Vec::new(),
            raw: Vec::new(),
        }
    }

    /// Delivers `text` from `src` over UDP and collects the output.
    pub fn send(&mut self, src: SocketAddr, text: &str) {
        self.send_from(udp(src), text);
    }

    /// Delivers `text` from `src` (any transport) and collects the output.
    pub fn send_from(&mut self, src: Peer, text: &str) {
        self.ep.handle(self.now, src, text.as_bytes());
        self.pump();
    }

    /// Drains events and transmits; every transmit must parse.
    pub fn pump(&mut self) {
        while let Some(ev) = self.ep.poll_event() {
            self.events.push(ev);
        }
        while let Some(t) = self.ep.poll_transmit() {
            match wire::parse(&t.bytes) {
                Ok(msg) => self.inbox.entry(t.dest.addr).or_default().push_back(msg),
                // Only a 400 echoing a broken request may itself be unparsable.
                Err(_) => self.raw.push((t.dest.addr, t.bytes)),
            }
        }
    }

    /// Jumps to the next deadline (if it is not after `limit`) and fires it.
    pub fn step(&mut self, limit: Millis) -> bool {
        match self.ep.poll_timeout() {
            Some(t) if t <= limit => {
                self.now = self.now.max(t);
                self.ep.handle_timeout(self.now);
                self.pump();
                true
            }
            _ => false,
        }
    }

    /// Runs every timer up to `now + ms`, then sets the clock there.
    pub fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        let mut guard = 0;
        while self.step(end) {
            guard += 1;
            assert!(guard < 1_000_000, "timer loop");
        }
        self.now = end;
    }

    /// Everything sent to `addr` since the last take.
    pub fn take(&mut self, addr: SocketAddr) -> Vec<Message> {
        self.inbox.remove(&addr).map(Vec::from).unwrap_or_default()
    }

    /// Responses sent to `addr`.
    pub fn responses(&mut self, addr: SocketAddr) -> Vec<Response> {
        self.take(addr)
            .into_iter()
            .filter_map(|m| match m {
                Message::Response(r) => Some(r),
                Message::Request(_) => None,
            })
            .collect()
    }

    /// Requests sent to `addr`.
    pub fn requests(&mut self, addr: SocketAddr) -> Vec<Request> {
        self.take(addr)
            .into_iter()
            .filter_map(|m| match m {
                Message::Request(r) => Some(r),
                Message::Response(_) => None,
            })
            .collect()
    }

    /// Statuses sent to `addr`.
    pub fn statuses(&mut self, addr: SocketAddr) -> Vec<u16> {
        self.responses(addr).iter().map(|r| r.status).collect()
    }

    /// The CDRs written so far.
    pub fn cdrs(&self) -> Vec<pbx_core::cdr::Cdr> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::CallEnded(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A simulated phone: an extension at an address, writing SIP as text.
#[derive(Debug, Clone)]
pub struct Phone {
    pub ext: String,
    pub password: String,
    pub addr: SocketAddr,
    /// Where its Contact points (differs from `addr` behind NAT).
    pub contact_addr: SocketAddr,
    /// The transport it signals over (UDP unless set).
    pub transport: Transport,
    counter: u64,
}

impl Phone {
    /// Extension `ext` at `addr` (password `pw<ext>`).
    pub fn new(ext: &str, addr: &str) -> Phone {
        let addr: SocketAddr = addr.parse().unwrap();
        Phone {
            ext: ext.to_string(),
            password: format!("pw{ext}"),
            addr,
            contact_addr: addr,
            transport: Transport::Udp,
            counter: 0,
        }
    }

    /// Like [`Phone::new`], signalling over `transport`.
    #[allow(dead_code)]
    pub fn over(ext: &str, addr: &str, transport: Transport) -> Phone {
        Phone {
            transport,
            ..Phone::new(ext, addr)
        }
    }

    /// Where its messages come from.
    pub fn peer(&self) -> Peer {
        Peer {
            transport: self.transport,
            addr: self.addr,
        }
    }

    /// A fresh token (tags, branches, Call-IDs).
    pub fn token(&mut self) -> String {
        self.counter += 1;
        format!("{}x{}", self.ext, self.counter)
    }

    /// A new Via line value with a fresh branch.
    pub fn via(&mut self) -> String {
        let b = self.token();
        let t = self.transport.as_str();
        format!("SIP/2.0/{t} {};branch=z9hG4bK{b};rport", self.addr)
    }

    /// The Contact URI.
    pub fn contact(&self) -> String {
        format!("<sip:{}@{}>", self.ext, self.contact_addr)
    }

    /// The address-of-record URI.
    pub fn aor(&self) -> String {
        format!("sip:{}@{REALM}", self.ext)
    }

    /// Answers the challenge of `resp` (first one with `alg`) for `method` to `uri`.
    pub fn authorize(&self, resp: &Response, method: &str, uri: &str, alg: &str) -> String {
        let name = if resp.status == 407 {
            "Proxy-Authenticate"
        } else {
            "WWW-Authenticate"
        };
        let challenge = resp
            .headers
            .get_all(name)
            .find(|c| c.contains(&format!("algorithm={alg}")))
            .unwrap_or_else(|| panic!("no {alg} challenge in {resp:?}"));
        answer_challenge(
            challenge,
            method,
            uri,
            &self.ext,
            &self.password,
            "c0ffee",
            1,
        )
        .unwrap()
    }
}

/// A request as text. `headers` are extra header lines without CRLF.
#[allow(clippy::too_many_arguments)]
pub fn request(
    method: &str,
    ruri: &str,
    via: &str,
    from: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
    headers: &[String],
    body: &str,
) -> String {
    let mut s = format!(
        "{method} {ruri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
    );
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    if !body.is_empty() {
        s.push_str("Content-Type: application/sdp\r\n");
    }
    s.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s
}

/// A response to `req` as text: Vias, From, To (with `to_tag` added when it has none),
/// Call-ID and CSeq copied.
pub fn response(
    req: &Request,
    status: u16,
    to_tag: Option<&str>,
    headers: &[String],
    body: &str,
) -> String {
    let mut s = format!(
        "SIP/2.0 {status} {}\r\n",
        pbx_core::sip::message::reason_phrase(status)
    );
    for v in &req.headers.via {
        s.push_str(&format!("Via: {v}\r\n"));
    }
    let mut to = req.headers.to.clone();
    if let (Some(tag), None) = (to_tag, to.tag()) {
        to.params.set("tag", Some(tag.to_string()));
    }
    s.push_str(&format!(
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {} {}\r\n",
        req.headers.from, req.headers.call_id, req.headers.cseq.seq, req.headers.cseq.method
    ));
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    if !body.is_empty() {
        s.push_str("Content-Type: application/sdp\r\n");
    }
    s.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s
}

/// An in-dialog request as text: From/To/Call-ID given, the peer's Contact as Request-URI.
#[allow(clippy::too_many_arguments)]
pub fn in_dialog(
    method: &str,
    ruri: &str,
    via: &str,
    from: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
    body: &str,
) -> String {
    request(method, ruri, via, from, to, call_id, cseq, &[], body)
}

/// Registers `phone` for `expires` seconds through the full challenge; returns the 200.
pub fn register(sim: &mut Sim, phone: &mut Phone, expires: u32) -> Response {
    let call_id = phone.token();
    let from = format!("<{}>;tag={}", phone.aor(), phone.token());
    let to = format!("<{}>", phone.aor());
    let ruri = format!("sip:{REALM}");
    let contact = format!("Contact: {};expires={expires}", phone.contact());
    let via = phone.via();
    let text = request(
        "REGISTER",
        &ruri,
        &via,
        &from,
        &to,
        &call_id,
        1,
        &[contact.clone()],
        "",
    );
    sim.send_from(phone.peer(), &text);
    let r = sim.responses(phone.addr);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].status, 401);
    let auth = format!(
        "Authorization: {}",
        phone.authorize(&r[0], "REGISTER", &ruri, "SHA-256")
    );
    let via = phone.via();
    let text = request(
        "REGISTER",
        &ruri,
        &via,
        &from,
        &to,
        &call_id,
        2,
        &[contact, auth],
        "",
    );
    sim.send_from(phone.peer(), &text);
    let r = sim.responses(phone.addr);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].status, 200, "{:?}", r[0]);
    r[0].clone()
}

/// One call leg as the caller (A) sees it.
#[derive(Debug, Clone)]
pub struct ALeg {
    pub call_id: String,
    pub from: String,
    pub ruri: String,
    /// The authenticated INVITE's Via (same for its CANCEL and non-2xx ACK).
    pub via: String,
    pub cseq: u32,
    /// To with the PBX's tag, once known.
    pub to: String,
    pub invite_text: String,
}

/// A sends an authenticated INVITE to `dial` (with `sdp`, may be empty); returns the leg
/// after the 407 / ACK / re-INVITE exchange. The responses after the 407 stay in the inbox.
pub fn invite(sim: &mut Sim, a: &mut Phone, dial: &str, sdp: &str) -> ALeg {
    let call_id = a.token();
    let from = format!("<{}>;tag={}", a.aor(), a.token());
    let ruri = format!("sip:{dial}@{REALM}");
    let to = format!("<sip:{dial}@{REALM}>");
    let contact = format!("Contact: {}", a.contact());
    let via = a.via();
    let text = request(
        "INVITE",
        &ruri,
        &via,
        &from,
        &to,
        &call_id,
        1,
        &[contact.clone()],
        sdp,
    );
    sim.send_from(a.peer(), &text);
    let r = sim.responses(a.addr);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].status, 407);
    let ack_to = format!("{}", r[0].headers.to);
    let ack = request("ACK", &ruri, &via, &from, &ack_to, &call_id, 1, &[], "");
    sim.send_from(a.peer(), &ack);
    assert!(
        sim.take(a.addr).is_empty(),
        "ACK of the 407 must be absorbed"
    );
    let auth = format!(
        "Proxy-Authorization: {}",
        a.authorize(&r[0], "INVITE", &ruri, "MD5")
    );
    let via = a.via();
    let text = request(
        "INVITE",
        &ruri,
        &via,
        &from,
        &to,
        &call_id,
        2,
        &[contact, auth],
        sdp,
    );
    sim.send_from(a.peer(), &text);
    ALeg {
        call_id,
        from,
        ruri,
        via,
        cseq: 2,
        to,
        invite_text: text,
    }
}

/// The tag of a name-addr header.
pub fn tag(na: &pbx_core::sip::NameAddr) -> String {
    na.tag().unwrap_or_default().to_string()
}

//! What every SIP message the endpoint sends goes through: the transaction layer, the
//! roles of our client transactions, and the headers and tags our messages carry.
//!
//! [`Signalling`] owns the [`Transactions`] and the endpoint's random generator (tags,
//! branches and Call-IDs come from it, in the order messages are built), so a feature that
//! answers or originates a request is handed `&mut Signalling` and nothing else of the
//! endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;

use rand::rngs::StdRng;
use rand::Rng;

use crate::sip::transaction::{build_cancel, Transactions, TxKey};
use crate::sip::wire;
use crate::sip::{
    CSeq, Contact, Headers, Method, NameAddr, Params, Peer, Request, Response, Transport, Uri, Via,
};
use crate::Millis;

/// The transaction layer and what our messages carry.
#[derive(Debug)]
pub(super) struct Signalling {
    /// RFC 3261 transactions.
    pub(super) tx: Transactions,
    /// What each client transaction we started belongs to.
    pub(super) clients: HashMap<TxKey, ClientRole>,
    /// Tags, branches, Call-IDs and the endpoint's other random choices.
    pub(super) rng: StdRng,
    /// Our own addresses, used in Via and Contact (one per family is enough).
    local: Vec<SocketAddr>,
    /// Value of our Server / User-Agent headers.
    user_agent: String,
}

impl Signalling {
    /// Signalling over `tx` from `local`.
    pub(super) fn new(
        tx: Transactions,
        rng: StdRng,
        local: Vec<SocketAddr>,
        user_agent: String,
    ) -> Self {
        Signalling {
            tx,
            clients: HashMap::new(),
            rng,
            local,
            user_agent,
        }
    }

    /// Our addresses.
    pub(super) fn local(&self) -> &[SocketAddr] {
        &self.local
    }

    /// Our addresses changed.
    pub(super) fn set_local(&mut self, local: Vec<SocketAddr>) {
        self.local = local;
    }

    /// Our Server / User-Agent header value.
    pub(super) fn user_agent(&self) -> &str {
        &self.user_agent
    }

    /// The Server / User-Agent value changed.
    pub(super) fn set_user_agent(&mut self, user_agent: String) {
        self.user_agent = user_agent;
    }

    /// Sends `req` in a new client transaction that belongs to `role`.
    pub(super) fn send_request(
        &mut self,
        now: Millis,
        req: Request,
        peer: Peer,
        role: ClientRole,
    ) -> TxKey {
        let key = self.tx.send_request(now, req, peer);
        self.clients.insert(key.clone(), role);
        key
    }

    /// Answers `req` with a bare `status` (a new To tag unless `to_tag` is given).
    pub(super) fn reply(
        &mut self,
        now: Millis,
        key: &TxKey,
        req: &Request,
        dest: Peer,
        status: u16,
        to_tag: Option<&str>,
    ) {
        let tag = match to_tag {
            Some(t) => t.to_string(),
            None => self.new_tag(),
        };
        let resp = Response::to_request(req, status, Some(&tag));
        self.send(now, key, resp, dest);
    }

    /// Answers the INVITE `req` (server transaction `key`, from `dest`) with 200 OK, our
    /// To tag `tag`, our Contact, Allow, and the SDP `body`; with `feature`, a feature
    /// parameter on our Contact (`isfocus`: a conference focus, RFC 4579 §3).
    #[allow(clippy::too_many_arguments)] // the request, its dialog and the answer
    pub(super) fn answer_200_sdp(
        &mut self,
        now: Millis,
        key: &TxKey,
        req: &Request,
        dest: Peer,
        tag: &str,
        body: Vec<u8>,
        feature: Option<&str>,
    ) {
        let mut ok = Response::to_request(req, 200, Some(tag));
        ok.body = body;
        ok.headers.content_type = Some("application/sdp".to_string());
        ok.headers.push("Allow", super::ALLOW);
        let mut contact = self.our_contact(dest, None);
        if let Some(f) = feature {
            contact.params.set(f, None);
        }
        ok.headers.contact = vec![Contact::Addr(contact)];
        self.send(now, key, ok, dest);
    }

    /// Adds what every response of ours carries: received/rport and Server.
    pub(super) fn stamp(&self, resp: &mut Response, dest: Peer) {
        if let Some(via) = resp.headers.via.first_mut() {
            // RFC 3261 §18.2.1 and RFC 3581 §4: tell the sender where its request came from.
            via.params.set("received", Some(dest.addr.ip().to_string()));
            if via.params.get("rport").is_some() {
                via.params.set("rport", Some(dest.addr.port().to_string()));
            }
        }
        resp.headers.push("Server", self.user_agent.clone());
    }

    /// Stamps `resp` and sends it in server transaction `key`.
    pub(super) fn send(&mut self, now: Millis, key: &TxKey, mut resp: Response, dest: Peer) {
        self.stamp(&mut resp, dest);
        if let Err(err) = self.tx.send_response(now, key, resp, dest) {
            tracing::debug!(%err, "response not sent");
        }
    }

    /// Via, From, To, Call-ID, CSeq and Max-Forwards of a request we originate.
    pub(super) fn request_headers(
        &mut self,
        peer: Peer,
        from: NameAddr,
        to: NameAddr,
        call_id: String,
        seq: u32,
        method: Method,
    ) -> Headers {
        let local = self.local_for(peer);
        let mut params = Params::default();
        params.set(
            "branch",
            Some(format!("z9hG4bK{:016x}", self.rng.gen::<u64>())),
        );
        params.set("rport", None);
        let via = Via {
            transport: peer.transport.as_str().to_string(),
            host: host_text(local),
            port: Some(local.port()),
            params,
        };
        let mut headers = Headers {
            via: vec![via],
            from,
            to,
            call_id,
            cseq: CSeq { seq, method },
            max_forwards: Some(70),
            contact: Vec::new(),
            expires: None,
            route: Vec::new(),
            record_route: Vec::new(),
            content_type: None,
            other: Vec::new(),
        };
        headers.push("User-Agent", self.user_agent.clone());
        headers
    }

    /// Our Contact towards `peer` (user part `user`, else `outpost`).
    pub(super) fn our_contact(&self, peer: Peer, user: Option<&str>) -> NameAddr {
        let local = self.local_for(peer);
        let user = user.unwrap_or("outpost");
        let transport = match peer.transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        };
        let text = format!(
            "sip:{user}@{}:{}{transport}",
            host_text(local),
            local.port()
        );
        let uri = wire::parse_uri(&text).unwrap_or_default();
        NameAddr::new(uri)
    }

    /// Our address in `peer`'s family (the first one when we have none in it).
    pub(super) fn local_for(&self, peer: Peer) -> SocketAddr {
        self.local
            .iter()
            .find(|a| a.is_ipv4() == peer.addr.is_ipv4())
            .or(self.local.first())
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5060)))
    }

    /// A fresh From/To tag.
    pub(super) fn new_tag(&mut self) -> String {
        format!("{:016x}", self.rng.gen::<u64>())
    }

    /// A fresh Call-ID.
    pub(super) fn new_call_id(&mut self) -> String {
        format!(
            "{:016x}{:016x}@outpost",
            self.rng.gen::<u64>(),
            self.rng.gen::<u64>()
        )
    }

    /// CANCELs the INVITE client transaction `invite_key` while it awaits a final answer.
    pub(super) fn send_cancel(&mut self, now: Millis, invite_key: &TxKey, dest: Peer) {
        if !self.tx.awaiting_final(invite_key) {
            return;
        }
        let Some(invite) = self.tx.client_request(invite_key) else {
            return;
        };
        let cancel = build_cancel(invite);
        self.send_request(now, cancel, dest, ClientRole::Cancel);
    }

    /// A response to a client transaction we never received (transport error).
    pub(super) fn synthetic_response(&self, key: &TxKey, status: u16) -> Option<Response> {
        let req = self.tx.client_request(key)?;
        Some(Response::to_request(req, status, None))
    }
}

/// The host part for Via/Contact: IPv6 addresses in brackets.
pub(super) fn host_text(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    }
}

/// The URI of the first Contact that is not `*`.
pub(super) fn first_contact_uri(headers: &Headers) -> Option<Uri> {
    headers.contact.iter().find_map(|c| match c {
        Contact::Addr(a) => Some(a.uri.clone()),
        Contact::Star => None,
    })
}

/// What a client transaction belongs to.
#[derive(Debug, Clone)]
pub(super) enum ClientRole {
    Invite {
        call: u64,
        fork: usize,
    },
    Cancel,
    Bye,
    Relay {
        call: u64,
        relay: u64,
    },
    /// A NOTIFY about a REFER's progress.
    Notify,
    /// The INVITE to a transfer target that takes over leg A.
    NewLegA {
        call: u64,
    },
    /// A re-INVITE Outpost sent on its own to fork `fork` (attended transfer).
    Reoffer {
        call: u64,
        fork: usize,
    },
    /// A re-INVITE that takes the caller off hold after an attended transfer.
    ResumeA {
        call: u64,
    },
    /// A trunk's registration or health ping.
    Trunk {
        trunk: usize,
        purpose: crate::trunk::Purpose,
    },
}

//! SIP signalling: message model, wire format, transactions, digest authentication.

pub mod auth;
pub mod message;
pub mod transaction;
pub mod wire;

pub use message::{
    CSeq, Contact, Headers, Message, Method, NameAddr, Params, Peer, Request, Response, Transport,
    Uri, Via,
};

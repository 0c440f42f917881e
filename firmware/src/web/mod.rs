//! The web admin page: HTTPS on the management networks, served by outpostd itself.
//!
//! Every page reads and acts through the control-plane API: a handler builds an admin
//! [`Command`](crate::admin::proto::Command) and sends it down the same queue the admin
//! socket feeds ([`api::Api`]); it holds no other handle on the daemon's state, so the web
//! page can do nothing `outpostctl` cannot.
//!
//! Its section is [`crate::webconf`]. Pieces, bottom to top: [`session`] (logins, CSRF tokens and
//! their timeouts; pure, time passed in), [`assets`] (the stylesheet and script, embedded),
//! [`api`] (the admin queue), [`download`] (files streamed piece by piece), [`layout`] (the page shell and shared bits), [`app`] (the
//! shared state, the session and CSRF checks), [`pages`] (one module per page), [`provision`]
//! (desk phones' configuration files, outside the login), [`routes`]
//! (the router, the login and the security headers), [`server`]
//! (listeners, TLS, the management-zone check, connection caps).

pub mod api;
pub mod app;
pub mod assets;
pub mod download;
pub mod layout;
pub mod pages;
pub mod provision;
pub mod routes;
pub mod server;
pub mod session;

pub use server::{start, start_provision};

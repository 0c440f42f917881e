//! Outpost firmware: the daemon (`outpostd`), its admin client (`outpostctl`) and every
//! subsystem between the sans-IO cores (`pbx-core`, `firewall`) and the box.
//!
//! Modules by layer; a module imports only from its own layer or the ones above it in this
//! list, never from below (the module graph is a DAG).
//!
//! Leaves (no imports from this crate, or only from other leaves):
//! - [`names`]: extension, password, display-name and host-name rules and limits, and
//!   `printable` for echoing outside text.
//! - [`civil`]: the UTC calendar (dates from milliseconds and back).
//! - [`chunk`]: files read out in bounded base64 pieces (backups, voicemail, the SBOM).
//! - [`fixed`]: what the image fixes at start and the configuration cannot change (the
//!   programs the daemon runs, the admin socket's group, who runs dropbear).
//! - [`metrics`]: the counters snapshot and the optional Prometheus endpoint.
//! - [`netif`]: the box's own addresses, read from the kernel.
//! - [`netconf`]: the uplink's address, gateway, DNS and DHCP/static for the panel, and
//!   `network.toml`, the one file that chooses DHCP or a static address at boot.
//! - [`panel`]: the front-panel thread driving the `board` screens.
//! - [`revisions`]: numbered configuration revisions under `<data_dir>/config/`.
//! - [`store`]: the redb database (extensions, CDRs, voicemail index, firewall state, meta).
//! - [`syslog`]: log lines to `/dev/log`.
//! - [`watchdog`]: the hardware watchdog, petted while the daemon is healthy.
//! - [`system`]: `[system]`, the box's host name.
//! - [`webconf`]: `[web]`, the web admin page's listeners, certificate and timeouts.
//! - [`provision`]: `[provision]` and the phone commands' wire types (desk-phone
//!   auto-provisioning; the files are `pbx_core::provision`).
//!
//! Subsystems (each owns its config section and typed operations, errors and results):
//! - [`driver`]: SIP transports (UDP, TCP, TLS) and `[tls]`.
//! - [`log`]: the persistent log on `/data` and the remote syslog collectors (RFC 5424,
//!   TLS on the driver's client settings).
//! - [`http`]: the one HTTP client (update downloads, the WebDAV backup target, HTTPS
//!   blocklist feeds) on the TLS driver's rustls settings.
//! - [`guard`]: the SIP firewall in the daemon (inspection, bans, the kernel enforcer).
//! - [`media`]: the RTP relay, prompts, voicemail recording and playback.
//! - [`backup`]: making, listing, verifying, fetching and restoring encrypted backups.
//! - [`ssh`]: dropbear supervision and the authorised SSH keys.
//! - [`console`]: the admin's shell (client side) and the console password.
//! - [`pbx_config`]: trunks, routes, inbound, dial plan, ring groups and features.
//! - [`dns`]: `[dns]`, trunk hosts resolved by RFC 3263 (NAPTR, SRV, A/AAAA) and kept
//!   fresh in the background.
//! - [`timesync`]: `[time]`, the SNTP client that sets the clock, the time saved on `/data`
//!   and whether the clock can be trusted.
//! - [`config`]: the whole TOML file, aggregating every section; [`fallback`]: starting
//!   with what works when a section cannot be started.
//! - [`reload`]: which configuration keys apply live and which at the next restart.
//!
//! Admin (the control plane; the only layer that builds replies):
//! - [`admin`]: the `Command`/`Reply` protocol ([`admin::proto`]), the socket server, the
//!   blocking client, [`admin::control::Control`] that executes a command against the
//!   daemon's parts, and the per-subsystem reply mappers (`admin::firewall`,
//!   `admin::backup`, `admin::ssh`, `admin::console`; `admin::update` holds the wire types of
//!   the web page's update uploads). `docs/admin-api.md` documents the protocol.
//!
//! Clients of the admin socket:
//! - [`web`]: the web admin page (HTTPS, in outpostd), every action an admin command sent
//!   down the admin socket's queue.
//! - [`update`]: A/B firmware updates, trial boots and their health check (which asks the
//!   daemon over the admin socket, like `outpostctl`).
//!
//! Daemon (the top):
//! - [`daemon`]: the event loop (run, inbound, flush, tick), boot-time revision selection
//!   and the store committer.

pub mod admin;
pub mod backup;
pub mod chunk;
pub mod civil;
pub mod config;
pub mod console;
pub mod daemon;
pub mod dns;
pub mod driver;
pub mod fallback;
pub mod fixed;
pub mod guard;
pub mod http;
pub mod log;
pub mod media;
pub mod metrics;
pub mod names;
pub mod netconf;
pub mod netif;
pub mod panel;
pub mod pbx_config;
pub mod provision;
pub mod recordings;
pub mod reload;
pub mod revisions;
pub mod ssh;
pub mod store;
pub mod syslog;
pub mod system;
pub mod timesync;
pub mod update;
pub mod watchdog;
pub mod web;
pub mod webconf;

//! Outpost's SIP-aware firewall.
//!
//! Planned layout (the firewall issue fills it): `detect` turns observations of SIP traffic
//! into verdicts (pure, no I/O), `policy` applies the toll-fraud rules to call attempts, and
//! `nft` is the only I/O: the `inet outpost` table and batched set updates through `nft -j`.
//! Nothing here is wired into the daemon yet.

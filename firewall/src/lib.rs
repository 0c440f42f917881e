//! Outpost's SIP-aware firewall: detection (pure) and nftables enforcement.

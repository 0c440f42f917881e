//! Black-box test support: see tests/*.rs.

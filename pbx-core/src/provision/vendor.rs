//! The desk-phone vendors Outpost provisions, told apart by the model name the admin gives.

use std::fmt;

/// Longest model name.
pub const MAX_MODEL_LEN: usize = 24;

/// A vendor whose files Outpost writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vendor {
    /// Yealink T4x/T5x: `<mac>.cfg`, `key = value`.
    Yealink,
    /// Grandstream GXP/GRP: `cfg<mac>.xml`, P-values in XML.
    Grandstream,
    /// Snom D-series: settings XML at `<mac>.xml` or `snom<model>-<MAC>.htm`.
    Snom,
    /// Poly VVX/Edge E: the master file `<mac>.cfg` naming `<mac>-outpost.cfg` (XML).
    Poly,
    /// Fanvil X-series: `<mac>.cfg`, `Key :Value` in modules.
    Fanvil,
}

impl Vendor {
    /// Every vendor.
    pub const ALL: [Vendor; 5] = [
        Vendor::Yealink,
        Vendor::Grandstream,
        Vendor::Snom,
        Vendor::Poly,
        Vendor::Fanvil,
    ];

    /// The vendor of `model` (case ignored; a vendor prefix such as `SIP-` or `snom` is
    /// allowed): Yealink `T4x`/`T5x`, Grandstream `GXP…`/`GRP…`, Snom `D…`, Poly `VVX…`/
    /// `EDGE…`/`E…`, Fanvil `X…`. The error says what is accepted.
    pub fn of_model(model: &str) -> Result<Vendor, String> {
        let bad = || {
            format!(
                "unknown phone model {:?}: Yealink T4x/T5x (T46U, T54W), Grandstream GXP/GRP \
                 (GXP2170, GRP2614), Snom D-series (D785), Poly VVX/Edge (VVX450, EDGEE350) or \
                 Fanvil X-series (X4U)",
                model
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(40)
                    .collect::<String>()
            )
        };
        if model.is_empty()
            || model.len() > MAX_MODEL_LEN
            || !model
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad());
        }
        let m = model.to_ascii_uppercase();
        let m = m
            .strip_prefix("SIP-")
            .or_else(|| m.strip_prefix("SNOM"))
            .unwrap_or(&m);
        let digit_at = |i: usize| m.as_bytes().get(i).is_some_and(u8::is_ascii_digit);
        let vendor = if m.starts_with("T4") || m.starts_with("T5") {
            Vendor::Yealink
        } else if m.starts_with("GXP") || m.starts_with("GRP") {
            Vendor::Grandstream
        } else if m.starts_with("VVX")
            || m.starts_with("EDGE")
            || (m.starts_with('E') && digit_at(1))
        {
            Vendor::Poly
        } else if m.starts_with('D') && digit_at(1) {
            Vendor::Snom
        } else if m.starts_with('X') && digit_at(1) {
            Vendor::Fanvil
        } else {
            return Err(bad());
        };
        Ok(vendor)
    }

    /// Most BLF keys this vendor's file carries (the programmable keys Outpost writes).
    pub fn max_blf_keys(self) -> usize {
        match self {
            // MPK 1–7 have one fixed P-value pattern across GXP/GRP firmware.
            Vendor::Grandstream => 7,
            _ => super::MAX_BLF_KEYS,
        }
    }

    /// The name in listings and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Yealink => "yealink",
            Vendor::Grandstream => "grandstream",
            Vendor::Snom => "snom",
            Vendor::Poly => "poly",
            Vendor::Fanvil => "fanvil",
        }
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn models_name_their_vendor() {
        for (model, vendor) in [
            ("T46U", Vendor::Yealink),
            ("sip-t54w", Vendor::Yealink),
            ("GXP2170", Vendor::Grandstream),
            ("grp2614", Vendor::Grandstream),
            ("D785", Vendor::Snom),
            ("snomD717", Vendor::Snom),
            ("VVX450", Vendor::Poly),
            ("EDGEE350", Vendor::Poly),
            ("E220", Vendor::Poly),
            ("X4U", Vendor::Fanvil),
        ] {
            assert_eq!(Vendor::of_model(model), Ok(vendor), "{model}");
        }
        for junk in [
            "",
            "T",
            "CP8841",
            "D",
            "X",
            "T46U;rm",
            "Ä",
            &"T4".repeat(20),
        ] {
            assert!(Vendor::of_model(junk).is_err(), "{junk:?}");
        }
    }
}

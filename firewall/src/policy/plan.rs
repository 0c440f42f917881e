//! The numbering plan and the destination class of a dialled number.

use serde::{Deserialize, Serialize};

/// What kind of destination a dialled string is, from the cheapest to the riskiest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestClass {
    /// An extension, a name, or a feature code (`*97`): never leaves the PBX.
    Internal,
    /// An emergency number: always allowed.
    Emergency,
    /// A subscriber number without prefix.
    Local,
    /// A number with the national (trunk) prefix.
    National,
    /// A mobile number.
    Mobile,
    /// A number with the international prefix.
    International,
    /// A premium-rate number.
    Premium,
    /// An international number in a high-risk country code.
    HighRisk,
}

/// Digit lengths that are extensions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LenRange {
    /// Shortest extension, digits.
    pub min: usize,
    /// Longest extension, digits.
    pub max: usize,
}

impl Default for LenRange {
    fn default() -> Self {
        LenRange { min: 2, max: 5 }
    }
}

/// How numbers are dialled at this site. Prefixes other than `high_risk_prefixes` are in
/// national format, including the national prefix (`"015"`, `"0900"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NumberingPlan {
    /// Emergency numbers, matched exactly (after removing separators).
    pub emergency: Vec<String>,
    /// Prefix for international calls (`"00"`; `"011"` in North America). A leading `+`
    /// always means international.
    pub international_prefix: String,
    /// National (trunk) prefix (`"0"`; `"1"` in North America).
    pub national_prefix: String,
    /// Mobile prefixes, national format. Country-specific: empty by default (mobile
    /// numbers then classify as National).
    pub mobile_prefixes: Vec<String>,
    /// Premium-rate prefixes, national format. The default covers the common European
    /// 0900/0906/0909 ranges and the old German 0190; set your country's.
    pub premium_prefixes: Vec<String>,
    /// Country codes (digits after the international prefix) treated as high risk.
    ///
    /// The default is the short list of destinations that have topped the industry's
    /// International Revenue Share Fraud reports for years (Cuba 53, Latvia 371, Lithuania
    /// 370, Somalia 252, Sierra Leone 232; see e.g. Commsrisk's and the CFCA's IRSF
    /// surveys) plus the non-geographic codes with no office use and a history of abuse:
    /// Inmarsat (870), global mobile satellite (881), international networks (882, 883)
    /// and the ITU's international premium-rate code (979). Fraud moves between countries:
    /// international calling is off by default for that reason, this list only narrows it.
    pub high_risk_prefixes: Vec<String>,
    /// Digit lengths that are internal extensions.
    pub internal_len: LenRange,
}

impl Default for NumberingPlan {
    fn default() -> Self {
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_string()).collect();
        NumberingPlan {
            emergency: strings(&["112", "911", "999"]),
            international_prefix: "00".into(),
            national_prefix: "0".into(),
            mobile_prefixes: Vec::new(),
            premium_prefixes: strings(&["0900", "0906", "0909", "0190"]),
            high_risk_prefixes: strings(&[
                "53", "232", "252", "370", "371", "870", "881", "882", "883", "979",
            ]),
            internal_len: LenRange::default(),
        }
    }
}

/// A dialled string reduced to what classification needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dialled {
    /// Not a telephone number: a name or a feature code.
    NotANumber,
    /// Digits only; `plus` when it started with `+`.
    Digits { digits: String, plus: bool },
}

/// Strips URI parameters and visual separators; keeps digits and a leading `+`.
///
/// Anything with letters, or starting with `*`, is not a number. Other stray characters
/// (`#`, `-`, spaces, brackets) are dropped, so `00#53 123` is still the Cuban number it
/// would be if a dialplan stripped the `#`: fail towards the riskier class.
pub(crate) fn normalize(dialled: &str) -> Dialled {
    let text = dialled.split([';', '@']).next().unwrap_or_default().trim();
    if text.is_empty() || text.starts_with('*') || text.chars().any(|c| c.is_alphabetic()) {
        return Dialled::NotANumber;
    }
    let plus = text.starts_with('+');
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return Dialled::NotANumber;
    }
    Dialled::Digits { digits, plus }
}

/// The destination class of `dialled` under `plan`.
///
/// Order: emergency (exact match), international (then high-risk country codes), premium,
/// mobile, national, extension length, otherwise local.
pub fn classify(plan: &NumberingPlan, dialled: &str) -> DestClass {
    match normalize(dialled) {
        Dialled::NotANumber => DestClass::Internal,
        Dialled::Digits { digits, plus } => classify_digits(plan, &digits, plus),
    }
}

pub(crate) fn classify_digits(plan: &NumberingPlan, digits: &str, plus: bool) -> DestClass {
    if !plus && plan.emergency.iter().any(|e| e == digits) {
        return DestClass::Emergency;
    }
    let international = if plus {
        Some(digits)
    } else if !plan.international_prefix.is_empty() {
        digits.strip_prefix(plan.international_prefix.as_str())
    } else {
        None
    };
    if let Some(rest) = international {
        return if starts_with_any(rest, &plan.high_risk_prefixes) {
            DestClass::HighRisk
        } else {
            DestClass::International
        };
    }
    if starts_with_any(digits, &plan.premium_prefixes) {
        return DestClass::Premium;
    }
    if starts_with_any(digits, &plan.mobile_prefixes) {
        return DestClass::Mobile;
    }
    if !plan.national_prefix.is_empty() && digits.starts_with(plan.national_prefix.as_str()) {
        return DestClass::National;
    }
    if (plan.internal_len.min..=plan.internal_len.max).contains(&digits.len()) {
        return DestClass::Internal;
    }
    DestClass::Local
}

fn starts_with_any(digits: &str, prefixes: &[String]) -> bool {
    prefixes
        .iter()
        .any(|p| !p.is_empty() && digits.starts_with(p.as_str()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::field_reassign_with_default)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    fn plan() -> NumberingPlan {
        NumberingPlan {
            mobile_prefixes: vec!["015".into(), "016".into(), "017".into()],
            ..NumberingPlan::default()
        }
    }

    #[test]
    fn every_class_with_the_default_plan() {
        let p = plan();
        let cases = [
            ("112", DestClass::Emergency),
            ("911", DestClass::Emergency),
            ("100", DestClass::Internal),
            ("4711", DestClass::Internal),
            ("alice", DestClass::Internal),
            ("*97", DestClass::Internal),
            ("7654321", DestClass::Local),
            ("030 1234567", DestClass::National),
            ("0171 2345678", DestClass::Mobile),
            ("0900 123456", DestClass::Premium),
            ("0190-123", DestClass::Premium),
            ("0044 20 7946 0000", DestClass::International),
            ("+44 20 7946 0000", DestClass::International),
            ("+53 7 123 4567", DestClass::HighRisk),
            ("0053 7 123 4567", DestClass::HighRisk),
            ("00371 1234567", DestClass::HighRisk),
            ("+882 1234", DestClass::HighRisk),
            ("004930123;phone-context=x", DestClass::International),
            ("00#53 1234567", DestClass::HighRisk),
        ];
        for (dialled, want) in cases {
            assert_eq!(classify(&p, dialled), want, "{dialled}");
        }
    }

    #[test]
    fn emergency_must_match_exactly() {
        let p = plan();
        assert_eq!(classify(&p, "1120"), DestClass::Internal);
        assert_eq!(classify(&p, "+112"), DestClass::International);
    }

    #[test]
    fn north_american_plan() {
        let p = NumberingPlan {
            international_prefix: "011".into(),
            national_prefix: "1".into(),
            premium_prefixes: vec!["1900".into()],
            ..NumberingPlan::default()
        };
        assert_eq!(classify(&p, "911"), DestClass::Emergency);
        assert_eq!(classify(&p, "01153123456"), DestClass::HighRisk);
        assert_eq!(classify(&p, "011441234567"), DestClass::International);
        assert_eq!(classify(&p, "19005551234"), DestClass::Premium);
        assert_eq!(classify(&p, "12125551234"), DestClass::National);
        assert_eq!(classify(&p, "5551234"), DestClass::Local);
    }

    #[test]
    fn plan_reads_from_toml() {
        let p: NumberingPlan = toml::from_str(
            "emergency = [\"112\", \"110\"]\nmobile_prefixes = [\"07\"]\n[internal_len]\nmax = 4",
        )
        .unwrap();
        assert_eq!(classify(&p, "110"), DestClass::Emergency);
        assert_eq!(classify(&p, "07700900123"), DestClass::Mobile);
        assert_eq!(classify(&p, "12345"), DestClass::Local);
        assert!(toml::from_str::<NumberingPlan>("emergncy = []").is_err());
    }
}

//! The licence allow-list (image/licences.toml): every crate linked into the firmware must
//! carry a licence expression the list allows, or be named under `[exceptions]` with a
//! reason. SPDX expressions are evaluated: `OR` needs one side allowed, `AND` both,
//! `X WITH Y` needs `X WITH Y` allowed as a whole or `X` allowed and `Y` listed; the old
//! `A/B` form means `A OR B`. Identifiers compare case-insensitively.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::sbom::Crate;

/// Why a licence check failed.
#[derive(Debug, thiserror::Error)]
pub enum LicenceError {
    /// licences.toml is not valid.
    #[error("the licence policy is not valid: {0}")]
    Policy(String),
    /// A licence expression does not parse.
    #[error("licence expression {expr:?}: {reason}")]
    Syntax {
        /// The expression.
        expr: String,
        /// What is wrong.
        reason: String,
    },
    /// Crates whose licences the policy does not allow (one line each).
    #[error(
        "licences not allowed by image/licences.toml:\n{}",
        .0.iter().map(|r| format!("  {r}")).collect::<Vec<_>>().join("\n")
    )]
    NotAllowed(Vec<String>),
}

/// licences.toml.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Allowed SPDX licence ids (and `X WITH Y` pairs, and listed exception ids).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Crates accepted whatever their licence field says: crate name -> reason.
    #[serde(default)]
    pub exceptions: BTreeMap<String, String>,
}

impl Policy {
    /// Parses licences.toml.
    pub fn parse(text: &str) -> Result<Policy, LicenceError> {
        toml::from_str(text).map_err(|e| LicenceError::Policy(e.to_string()))
    }

    fn allowed(&self) -> BTreeSet<String> {
        self.allow.iter().map(|s| s.trim().to_lowercase()).collect()
    }

    /// Whether an SPDX expression is allowed.
    #[cfg(test)]
    pub fn allows(&self, expr: &str) -> Result<bool, LicenceError> {
        let tree = parse(expr)?;
        Ok(eval(&tree, &self.allowed()))
    }
}

/// The outcome of a passed check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Licence expression (as the crates declare it) -> number of crates.
    pub by_licence: BTreeMap<String, usize>,
    /// Crates accepted through `[exceptions]`: (name, version, reason).
    pub excepted: Vec<(String, String, String)>,
    /// Exceptions that name no crate of the firmware (stale entries).
    pub unused_exceptions: Vec<String>,
}

/// Checks every crate against the policy; names each refused crate with its version and
/// licence.
pub fn check(policy: &Policy, crates: &[Crate]) -> Result<Report, LicenceError> {
    let allowed = policy.allowed();
    let mut report = Report::default();
    let mut refused = Vec::new();
    let mut used = BTreeSet::new();
    for c in crates {
        if let Some(reason) = policy.exceptions.get(&c.name) {
            used.insert(c.name.clone());
            report
                .excepted
                .push((c.name.clone(), c.version.clone(), reason.clone()));
            continue;
        }
        match c.license.as_deref().map(str::trim) {
            None | Some("") => refused.push(format!(
                "{} {}: no licence field{} (add it to [exceptions] with a reason once checked)",
                c.name,
                c.version,
                c.license_file
                    .as_deref()
                    .map(|f| format!(", licence file {f}"))
                    .unwrap_or_default()
            )),
            Some(expr) => match parse(expr) {
                Ok(tree) if eval(&tree, &allowed) => {
                    *report.by_licence.entry(expr.to_owned()).or_default() += 1;
                }
                Ok(_) => refused.push(format!("{} {}: {expr}", c.name, c.version)),
                Err(e) => refused.push(format!("{} {}: {e}", c.name, c.version)),
            },
        }
    }
    report.unused_exceptions = policy
        .exceptions
        .keys()
        .filter(|k| !used.contains(*k))
        .cloned()
        .collect();
    if refused.is_empty() {
        Ok(report)
    } else {
        Err(LicenceError::NotAllowed(refused))
    }
}

/// A parsed SPDX licence expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// A licence id (`MIT`, `GPL-2.0+`, `LicenseRef-x`).
    Id(String),
    /// `licence WITH exception`.
    With(String, String),
    /// Both.
    And(Box<Expr>, Box<Expr>),
    /// Either.
    Or(Box<Expr>, Box<Expr>),
}

/// Whether the expression is satisfied by the allowed ids (lowercase).
fn eval(e: &Expr, allowed: &BTreeSet<String>) -> bool {
    match e {
        Expr::Id(id) => allowed.contains(&id.to_lowercase()),
        Expr::With(id, exc) => {
            let (id, exc) = (id.to_lowercase(), exc.to_lowercase());
            allowed.contains(&format!("{id} with {exc}"))
                || (allowed.contains(&id) && allowed.contains(&exc))
        }
        Expr::And(a, b) => eval(a, allowed) && eval(b, allowed),
        Expr::Or(a, b) => eval(a, allowed) || eval(b, allowed),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Open,
    Close,
    And,
    Or,
    With,
    Word(String),
}

fn tokens(expr: &str) -> Vec<Token> {
    // `/` (the old crates.io form) means OR; parentheses need no spaces around them.
    let spaced = expr
        .replace('/', " OR ")
        .replace('(', " ( ")
        .replace(')', " ) ");
    spaced
        .split_whitespace()
        .map(|w| match w {
            "(" => Token::Open,
            ")" => Token::Close,
            _ if w.eq_ignore_ascii_case("AND") => Token::And,
            _ if w.eq_ignore_ascii_case("OR") => Token::Or,
            _ if w.eq_ignore_ascii_case("WITH") => Token::With,
            _ => Token::Word(w.to_owned()),
        })
        .collect()
}

/// Parses an SPDX expression (precedence: WITH, then AND, then OR).
pub fn parse(expr: &str) -> Result<Expr, LicenceError> {
    let toks = tokens(expr);
    let mut p = Parser {
        toks: &toks,
        at: 0,
        depth: 0,
    };
    let syntax = |reason: String| LicenceError::Syntax {
        expr: expr.to_owned(),
        reason,
    };
    let e = p.or().map_err(syntax)?;
    if p.at != toks.len() {
        return Err(syntax(format!("unexpected {:?}", toks[p.at])));
    }
    Ok(e)
}

struct Parser<'a> {
    toks: &'a [Token],
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn next(&mut self) -> Option<&Token> {
        let t = self.toks.get(self.at);
        self.at += 1;
        t
    }

    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.at)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut e = self.and()?;
        while self.peek() == Some(&Token::Or) {
            self.at += 1;
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut e = self.with()?;
        while self.peek() == Some(&Token::And) {
            self.at += 1;
            e = Expr::And(Box::new(e), Box::new(self.with()?));
        }
        Ok(e)
    }

    fn with(&mut self) -> Result<Expr, String> {
        match self.next().cloned() {
            Some(Token::Open) => {
                self.depth += 1;
                if self.depth > 32 {
                    return Err("nested too deeply".to_owned());
                }
                let e = self.or()?;
                if self.next() != Some(&Token::Close) {
                    return Err("missing )".to_owned());
                }
                self.depth -= 1;
                Ok(e)
            }
            Some(Token::Word(id)) => {
                if self.peek() == Some(&Token::With) {
                    self.at += 1;
                    match self.next() {
                        Some(Token::Word(exc)) => Ok(Expr::With(id, exc.clone())),
                        _ => Err(format!("no exception after {id} WITH")),
                    }
                } else {
                    Ok(Expr::Id(id))
                }
            }
            Some(t) => Err(format!("expected a licence, found {t:?}")),
            None => Err("expected a licence, found the end".to_owned()),
        }
    }
}

/// The `outpost-image licences` table: licence -> crate count, most used first.
pub fn table(report: &Report) -> String {
    let mut rows: Vec<(&String, &usize)> = report.by_licence.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(7).max(7);
    let mut out = format!("{:<width$}  crates\n", "licence");
    for (licence, n) in rows {
        out.push_str(&format!("{licence:<width$}  {n:>6}\n"));
    }
    for (name, version, reason) in &report.excepted {
        out.push_str(&format!("exception: {name} {version}: {reason}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> Policy {
        Policy {
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            exceptions: BTreeMap::new(),
        }
    }

    fn krate(name: &str, license: Option<&str>) -> Crate {
        Crate {
            name: name.to_owned(),
            version: "1.0.0".to_owned(),
            license: license.map(str::to_owned),
            license_file: None,
            checksum: None,
            workspace: false,
        }
    }

    #[test]
    fn or_and_with_and_parentheses_evaluate() {
        let p = policy(&["MIT", "Apache-2.0", "Unicode-3.0", "LLVM-exception"]);
        let ok = |e: &str| p.allows(e).expect(e);
        assert!(ok("MIT"));
        assert!(ok("mit"), "ids compare case-insensitively");
        assert!(ok("MIT OR GPL-3.0-only"));
        assert!(ok("GPL-3.0-only OR Apache-2.0"));
        assert!(!ok("GPL-3.0-only"));
        assert!(ok("Apache-2.0 AND MIT"));
        assert!(!ok("Apache-2.0 AND GPL-2.0-only"));
        assert!(ok("(MIT OR Apache-2.0) AND Unicode-3.0"));
        assert!(!ok("(MIT OR Apache-2.0) AND OpenSSL"));
        assert!(ok("MIT/Apache-2.0"), "the old slash form is OR");
        assert!(ok("GPL-2.0/MIT"));
        assert!(!ok("GPL-2.0/LGPL-2.1"));
        assert!(ok("Apache-2.0 WITH LLVM-exception"));
        assert!(ok("Apache-2.0 WITH LLVM-exception OR MIT"));
        assert!(!ok("GPL-2.0-only WITH Classpath-exception-2.0"));
        assert!(
            !ok("Apache-2.0 WITH Classpath-exception-2.0"),
            "exception not listed"
        );
    }

    #[test]
    fn a_with_pair_may_be_allowed_as_a_whole() {
        let p = policy(&["Apache-2.0 WITH LLVM-exception"]);
        assert!(p.allows("Apache-2.0 WITH LLVM-exception").expect("parse"));
        assert!(!p.allows("Apache-2.0").expect("parse"));
    }

    #[test]
    fn malformed_expressions_are_errors() {
        for bad in [
            "",
            "MIT OR",
            "(MIT",
            "MIT)",
            "AND MIT",
            "MIT WITH",
            "MIT Apache-2.0",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let deep = format!("{}MIT{}", "(".repeat(100), ")".repeat(100));
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn check_names_each_refused_crate_with_version_and_licence() {
        let mut p = policy(&["MIT", "Apache-2.0"]);
        let crates = [
            krate("serde", Some("MIT OR Apache-2.0")),
            krate("tokio", Some("MIT")),
            krate("readline", Some("GPL-3.0-or-later")),
            krate("rsip", None),
        ];
        let err = check(&p, &crates).expect_err("GPL and no licence");
        let text = err.to_string();
        assert!(text.contains("readline 1.0.0: GPL-3.0-or-later"), "{text}");
        assert!(text.contains("rsip 1.0.0: no licence field"), "{text}");
        assert!(!text.contains("serde"), "{text}");

        p.exceptions
            .insert("rsip".to_owned(), "MIT in its LICENSE file".to_owned());
        p.exceptions
            .insert("gone".to_owned(), "no longer used".to_owned());
        let report = check(
            &p,
            &crates[..2]
                .iter()
                .chain(&crates[3..])
                .cloned()
                .collect::<Vec<_>>(),
        )
        .expect("passes");
        assert_eq!(report.by_licence.get("MIT"), Some(&1));
        assert_eq!(report.by_licence.get("MIT OR Apache-2.0"), Some(&1));
        assert_eq!(report.excepted.len(), 1);
        assert_eq!(report.unused_exceptions, vec!["gone".to_owned()]);
        let t = table(&report);
        assert!(t.contains("exception: rsip 1.0.0"), "{t}");
    }

    #[test]
    fn the_shipped_policy_parses_and_rejects_copyleft() {
        let p = Policy::parse(include_str!("../licences.toml")).expect("licences.toml");
        assert!(p.allows("MIT OR Apache-2.0").expect("parse"));
        assert!(!p.allows("GPL-2.0-only").expect("parse"));
        assert!(!p.allows("AGPL-3.0-only").expect("parse"));
        assert!(!p.allows("LGPL-2.1-or-later").expect("parse"));
        assert!(p.allows("Apache-2.0 OR GPL-2.0-only").expect("parse"));
        assert!(Policy::parse("allow = [\"MIT\"]\nbogus = 1\n").is_err());
    }
}

//! The `fw` commands' answers on the wire: turns the firewall's typed result
//! ([`FwReply`] or [`FwError`]) into the protocol's [`Reply`]. The firewall never builds a
//! `Reply` itself; this is the only place the two meet.

use crate::admin::proto::Reply;
use crate::guard::api::{FwError, FwReply};

/// The admin reply for the outcome of one `fw` command.
pub fn reply(result: Result<FwReply, FwError>) -> Reply {
    match result {
        Ok(FwReply::Status(status)) => Reply::FwStatus(*status),
        Ok(FwReply::Bans(bans)) => Reply::FwBans(bans),
        Ok(FwReply::Alerts(alerts)) => Reply::FwAlerts(alerts),
        Ok(FwReply::Rules(rules)) => Reply::FwRules(rules),
        Ok(FwReply::Export(doc)) => Reply::FwExport(doc),
        Ok(FwReply::Done(message)) => Reply::done(message),
        Err(err) => Reply::error(err.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;
    use crate::guard::api::FwExport;

    #[test]
    fn answers_and_errors_become_the_wire_replies() {
        let doc = FwExport {
            generated: 1,
            bans: Vec::new(),
            omitted: 0,
        };
        assert_eq!(
            reply(Ok(FwReply::Export(doc.clone()))),
            Reply::FwExport(doc)
        );
        assert_eq!(
            reply(Ok(FwReply::Rules(Vec::new()))),
            Reply::FwRules(Vec::new())
        );
        assert_eq!(
            reply(Ok(FwReply::Done("account 100 unlocked".into()))),
            Reply::done("account 100 unlocked")
        );
        assert_eq!(
            reply(Err(FwError::NotAnAddress("no\tpe".into()))),
            Reply::error("`no\\tpe` is not an IP address")
        );
        assert_eq!(
            reply(Err(FwError::BanLength { max: 31_536_000 })),
            Reply::error("ban length must be between 1 and 31536000 seconds")
        );
        assert_eq!(
            reply(Err(FwError::TooManyAllowed { max: 256 })),
            Reply::error(
                "at most 256 networks can be allowed at runtime; put them in [firewall.detect] allow"
            )
        );
        // The wire format is unchanged: the same JSON as before the firewall had types.
        let json = serde_json::to_string(&reply(Ok(FwReply::Done("x".into())))).unwrap();
        assert_eq!(json, r#"{"reply":"done","data":{"message":"x"}}"#);
    }
}

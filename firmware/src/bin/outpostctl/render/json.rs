//! JSON for `--json` and the export documents: one line per value.

use serde::Serialize;

/// One JSON line of `value` (an error object if it cannot be serialised).
pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

//! What a stream sends for each stored entry, by its `format`: the entry
//! as stored (Tailscale's JSON, `native`), or OCSF events (`ocsf`, where a
//! flow record becomes one event per connection).

use crate::config::{Format, LogType};
use crate::sinks::Entry;

/// An entry that could not be written in the stream's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unwritable {
    /// Its store position.
    pub position: u64,
    /// Why.
    pub reason: String,
}

/// The items to deliver for `entries`, in order (each keeps its entry's
/// position and time), and the entries that cannot be written.
pub fn prepare(
    format: Format,
    log_type: LogType,
    entries: Vec<Entry>,
) -> (Vec<Entry>, Vec<Unwritable>) {
    match format {
        Format::Native => (entries, Vec::new()),
        Format::Ocsf => {
            let mut out = Vec::with_capacity(entries.len());
            let mut bad = Vec::new();
            for e in entries {
                match crate::ocsf::encode(log_type, e.time, &e.body) {
                    Ok(events) => out.extend(events.into_iter().map(|v| Entry {
                        position: e.position,
                        time: e.time,
                        body: serde_json::to_vec(&v).unwrap_or_default(),
                    })),
                    Err(err) => bad.push(Unwritable {
                        position: e.position,
                        reason: format!("not written as OCSF: {err}"),
                    }),
                }
            }
            (out, bad)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_passes_entries_and_ocsf_reports_what_it_cannot_write() {
        let e = |position, body: &str| Entry {
            position,
            time: 1_700_000_000_000_000_000,
            body: body.as_bytes().to_vec(),
        };
        let (out, bad) = prepare(Format::Native, LogType::Network, vec![e(1, "x")]);
        assert_eq!((out.len(), bad.len()), (1, 0));
        let (out, bad) = prepare(
            Format::Ocsf,
            LogType::Logs,
            vec![e(1, r#"{"text":"hello"}"#), e(2, "not json")],
        );
        assert_eq!(out.len(), 2);
        assert!(bad.is_empty());
        let (out, bad) = prepare(Format::Ocsf, LogType::Network, vec![e(7, "{}")]);
        assert!(out.is_empty());
        assert_eq!(bad[0].position, 7);
        assert!(bad[0].reason.contains("OCSF"), "{}", bad[0].reason);
    }
}

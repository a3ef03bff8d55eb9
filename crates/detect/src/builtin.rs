//! The built-in rule pack: Sigma files in `crates/detect/rules/`, compiled
//! into the binary. Every tailnet runs them unless it disables one.

use crate::rules::{Rule, RuleError, parse_rule};
use std::sync::Arc;

/// (file name, YAML) of every built-in rule.
pub const FILES: &[(&str, &str)] = &[
    ("port_scan.yml", include_str!("../rules/port_scan.yml")),
    ("host_sweep.yml", include_str!("../rules/host_sweep.yml")),
    ("new_pair.yml", include_str!("../rules/new_pair.yml")),
    ("fan_out.yml", include_str!("../rules/fan_out.yml")),
    (
        "remote_access_ports.yml",
        include_str!("../rules/remote_access_ports.yml"),
    ),
    (
        "exit_transfer.yml",
        include_str!("../rules/exit_transfer.yml"),
    ),
    (
        "flow_logging_off.yml",
        include_str!("../rules/flow_logging_off.yml"),
    ),
    (
        "retention_weakened.yml",
        include_str!("../rules/retention_weakened.yml"),
    ),
    (
        "key_without_expiry.yml",
        include_str!("../rules/key_without_expiry.yml"),
    ),
    ("role_raised.yml", include_str!("../rules/role_raised.yml")),
    (
        "refused_changes.yml",
        include_str!("../rules/refused_changes.yml"),
    ),
    (
        "key_then_node_removed.yml",
        include_str!("../rules/key_then_node_removed.yml"),
    ),
    (
        "reconciliation_tampering.yml",
        include_str!("../rules/reconciliation_tampering.yml"),
    ),
    (
        "reconciliation_silent.yml",
        include_str!("../rules/reconciliation_silent.yml"),
    ),
];

/// The built-in rules, parsed.
pub fn rules() -> Result<Vec<Arc<Rule>>, RuleError> {
    FILES
        .iter()
        .map(|(file, yaml)| {
            parse_rule(yaml).map(Arc::new).map_err(|e| RuleError {
                line: e.line,
                message: format!("built-in {file}: {}", e.message),
            })
        })
        .collect()
}

/// Whether `id` names a built-in rule.
pub fn is_builtin(id: &str) -> bool {
    id.starts_with("tally-")
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_builtin_rule_parses_and_compiles_together() {
        let rules = super::rules().expect("the pack parses");
        assert_eq!(rules.len(), super::FILES.len());
        let mut d = crate::Detector::new(crate::DetectorConfig::default(), rules.clone());
        d.set_rules("t", rules)
            .expect("the pack compiles as one set");
    }

    /// docs/detection.md has a row for every built-in rule, with its level.
    #[test]
    fn the_detection_doc_lists_every_builtin_rule() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/detection.md");
        let doc = std::fs::read_to_string(path).expect("docs/detection.md");
        for r in super::rules().expect("the pack parses") {
            let row = format!("| `{}` | {} |", r.id, r.level.name());
            assert!(doc.lines().any(|l| l.starts_with(&row)), "missing {row}");
        }
    }
}

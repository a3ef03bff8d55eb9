//! Rules: a Sigma YAML file (one detection rule, or one correlation with
//! the detection rules it uses) parsed, checked against the events Tally
//! produces, and ready to compile. A bad file gets a [`RuleError`] naming
//! the line and the problem.

use crate::event::Service;
use rsigma_eval::{CorrelationConfig, CorrelationEngine, Engine, RuleFieldSet};
use rsigma_parser::{LogSource, SigmaCollection, SigmaRule, Timespan};
use std::collections::BTreeSet;
use std::fmt;

/// Largest rule file accepted.
pub const MAX_RULE_BYTES: usize = 256 * 1024;
/// Most YAML documents in one rule file.
pub const MAX_DOCUMENTS: usize = 16;
/// Suppression span when a rule names none: one alert per rule and group
/// key per hour.
pub const DEFAULT_SUPPRESS_SECS: u64 = 3600;
/// Deepest nesting of YAML flow collections (`[`, `{`) accepted: the YAML
/// scanner takes time quadratic in it (a file of 100 000 `[` takes
/// seconds), and a rule needs two or three levels.
pub const MAX_FLOW_DEPTH: usize = 32;
/// Custom attributes Tally reads (any other unknown key is refused).
const TALLY_ATTRIBUTES: [&str; 2] = ["tally.suppress", "tally.group-by"];

/// Why a rule file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RuleError {
    /// 1-based line the problem is on, when known.
    pub line: Option<usize>,
    /// What is wrong, and what to do.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl RuleError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            line: None,
            message: message.into(),
        }
    }

    /// Finds the line of `yaml` that holds `token` (the first), if any.
    fn at(mut self, yaml: &str, token: &str) -> Self {
        if self.line.is_none() && !token.is_empty() {
            self.line = yaml.lines().position(|l| l.contains(token)).map(|i| i + 1);
        }
        self
    }
}

/// A rule's level, Sigma's names.
pub use tally_proto::alert::AlertSeverity as Level;

/// A checked rule file.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule's ID: the correlation's, or the single detection rule's.
    pub id: String,
    /// Title.
    pub title: String,
    /// Level (`medium` when the file names none).
    pub level: Level,
    /// Description.
    pub description: String,
    /// False-positive notes.
    pub falsepositives: Vec<String>,
    /// Tags (ATT&CK and others).
    pub tags: Vec<String>,
    /// The services whose events it reads.
    pub services: BTreeSet<Service>,
    /// Alerts of one group key within this span after an alert are
    /// suppressed (counted in the next alert).
    pub suppress_secs: u64,
    /// Group key of a detection rule's alerts (a correlation's is its
    /// `group-by`).
    pub group_by: Vec<String>,
    /// Whether it is a correlation.
    pub correlation: bool,
    /// The file as given.
    pub yaml: String,
    /// Parsed.
    pub collection: SigmaCollection,
}

/// The services a logsource reads, or why none.
pub fn services_of(ls: &LogSource) -> Result<Service, String> {
    let cat = ls.category.as_deref().map(str::to_ascii_lowercase);
    let product = ls.product.as_deref().map(str::to_ascii_lowercase);
    let service = ls.service.as_deref().map(str::to_ascii_lowercase);
    if matches!(cat.as_deref(), Some("firewall" | "network_connection")) {
        return match service.as_deref() {
            None | Some("flows") => Ok(Service::Flows),
            Some(s) => Err(format!(
                "category {} with service {s}: Tally's network events are service flows",
                cat.as_deref().unwrap_or_default()
            )),
        };
    }
    if product.as_deref() == Some("tally") && cat.is_none() {
        return match service.as_deref().and_then(Service::parse) {
            Some(s) => Ok(s),
            None => Err(format!(
                "product tally needs service flows, logs, audit or reconciliation (got {})",
                service.as_deref().unwrap_or("none")
            )),
        };
    }
    Err(format!(
        "logsource {{category: {}, product: {}, service: {}}} matches no event Tally produces; \
         use product: tally with service flows, logs, audit or reconciliation, \
         or category firewall or network_connection (flows)",
        cat.as_deref().unwrap_or("-"),
        product.as_deref().unwrap_or("-"),
        service.as_deref().unwrap_or("-")
    ))
}

/// Parses and checks one rule file.
pub fn parse_rule(yaml: &str) -> Result<Rule, RuleError> {
    if yaml.len() > MAX_RULE_BYTES {
        return Err(RuleError::new(format!(
            "the rule is {} bytes; at most {MAX_RULE_BYTES} are accepted",
            yaml.len()
        )));
    }
    let documents = yaml.lines().filter(|l| l.trim_end() == "---").count() + 1;
    if documents > MAX_DOCUMENTS {
        return Err(RuleError::new(format!(
            "the file has {documents} YAML documents; at most {MAX_DOCUMENTS} (one correlation and the rules it uses)"
        )));
    }
    if let Some(e) = flow_depth_error(yaml) {
        return Err(e);
    }
    let collection =
        rsigma_parser::parse_sigma_yaml(yaml).map_err(|e| yaml_error(yaml, &e.to_string()))?;
    if let Some(e) = collection.errors.first() {
        return Err(yaml_error(yaml, e));
    }
    if !collection.filters.is_empty() {
        return Err(RuleError::new(
            "filter documents are not supported; put the exclusion in the rule's condition",
        )
        .at(yaml, "filter:"));
    }
    for r in &collection.rules {
        check_detection_rule(yaml, r)?;
    }
    let referenced: BTreeSet<&str> = collection
        .correlations
        .iter()
        .flat_map(|c| c.rules.iter().map(String::as_str))
        .collect();
    for c in &collection.correlations {
        let Some(_) = c.id.as_deref() else {
            return Err(
                RuleError::new("the correlation has no `id`; give it one (a UUID)")
                    .at(yaml, "correlation:"),
            );
        };
        for r in &c.rules {
            let known = collection
                .rules
                .iter()
                .any(|d| d.id.as_deref() == Some(r) || d.name.as_deref() == Some(r))
                || collection
                    .correlations
                    .iter()
                    .any(|o| o.id.as_deref() == Some(r) || o.name.as_deref() == Some(r));
            if !known {
                return Err(RuleError::new(format!(
                    "the correlation uses rule {r:?}, which is not in this file; a file holds the correlation and the rules it uses"
                ))
                .at(yaml, r));
            }
        }
        check_attributes(yaml, &c.custom_attributes)?;
    }
    // One alerting rule per file: the correlation(s) not used by another,
    // or the single detection rule.
    let top: Vec<&rsigma_parser::CorrelationRule> = collection
        .correlations
        .iter()
        .filter(|c| {
            !referenced.contains(c.id.as_deref().unwrap_or_default())
                && !c.name.as_deref().is_some_and(|n| referenced.contains(n))
        })
        .collect();
    let (id, title, level, description, falsepositives, tags, attrs, correlation) = match (
        top.as_slice(),
        collection.rules.as_slice(),
    ) {
        ([c], _) => (
            c.id.clone().unwrap_or_default(),
            c.title.clone(),
            c.level,
            c.description.clone(),
            c.falsepositives.clone(),
            c.tags.clone(),
            &c.custom_attributes,
            true,
        ),
        ([], [r]) => (
            r.id.clone().unwrap_or_default(),
            r.title.clone(),
            r.level,
            r.description.clone(),
            r.falsepositives.clone(),
            r.tags.clone(),
            &r.custom_attributes,
            false,
        ),
        ([], []) => return Err(RuleError::new("the file holds no rule")),
        _ => {
            return Err(RuleError::new(
                "a rule file holds one rule, or one correlation with the rules it uses; split the others into files of their own",
            ));
        }
    };
    let services = collection
        .rules
        .iter()
        .map(|r| services_of(&r.logsource))
        .collect::<Result<BTreeSet<_>, _>>()
        .map_err(RuleError::new)?;
    let suppress_secs = match attrs.get("tally.suppress") {
        None => DEFAULT_SUPPRESS_SECS,
        Some(v) => {
            let text = v.as_str().ok_or_else(|| {
                RuleError::new("tally.suppress must be a timespan such as 30m or 1h")
                    .at(yaml, "tally.suppress")
            })?;
            Timespan::parse(text)
                .map_err(|e| {
                    RuleError::new(format!("tally.suppress: {e}")).at(yaml, "tally.suppress")
                })?
                .seconds
        }
    };
    let group_by = match attrs.get("tally.group-by") {
        None => {
            let first = collection
                .rules
                .first()
                .and_then(|r| services_of(&r.logsource).ok());
            first
                .map(|s| vec![s.node_field().to_owned()])
                .unwrap_or_default()
        }
        Some(v) => v
            .as_sequence()
            .map(|s| {
                s.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .ok_or_else(|| {
                RuleError::new("tally.group-by must be a list of field names")
                    .at(yaml, "tally.group-by")
            })?,
    };
    // Compile once: regexes too large to build, bad modifiers, unknown
    // correlation references are refused here, not when events arrive.
    let mut engine = CorrelationEngine::new(CorrelationConfig::default());
    engine.add_collection(&collection).map_err(|e| {
        let message = e.to_string();
        RuleError::new(format!("the rule does not compile: {message}"))
            .at(yaml, trailing_token(&message))
    })?;
    let level = level
        .map(|l| Level::parse(l.as_str()).unwrap_or(Level::Medium))
        .unwrap_or(Level::Medium);
    Ok(Rule {
        id,
        title,
        level,
        description: description.unwrap_or_default(),
        falsepositives,
        tags,
        services,
        suppress_secs,
        group_by,
        correlation,
        yaml: yaml.to_owned(),
        collection,
    })
}

fn check_detection_rule(yaml: &str, r: &SigmaRule) -> Result<(), RuleError> {
    if r.id.as_deref().is_none_or(str::is_empty) {
        return Err(RuleError::new(format!(
            "rule {:?} has no `id`; give it one (a UUID)",
            r.title
        ))
        .at(yaml, "title:"));
    }
    let service =
        services_of(&r.logsource).map_err(|m| RuleError::new(m).at(yaml, "logsource:"))?;
    check_attributes(yaml, &r.custom_attributes)?;
    if let Some(fields) = service.fields() {
        let one = SigmaCollection {
            rules: vec![r.clone()],
            correlations: Vec::new(),
            filters: Vec::new(),
            errors: Vec::new(),
        };
        let used = RuleFieldSet::collect(&one, &[], false);
        for name in used.names() {
            let known = fields.iter().any(|f| f.name == name)
                || (service == Service::Audit
                    && (name.starts_with("old.") || name.starts_with("new.")))
                || (service == Service::Flows && name == "@timestamp");
            if !known {
                let list: Vec<&str> = fields.iter().map(|f| f.name).collect();
                return Err(RuleError::new(format!(
                    "field {name:?} does not exist in {} events; they have: {}",
                    service.name(),
                    list.join(", ")
                ))
                .at(yaml, name));
            }
        }
    }
    Ok(())
}

fn check_attributes(
    yaml: &str,
    attrs: &std::collections::HashMap<String, yaml_serde::Value>,
) -> Result<(), RuleError> {
    let mut keys: Vec<&String> = attrs.keys().collect();
    keys.sort();
    for k in keys {
        if !TALLY_ATTRIBUTES.contains(&k.as_str()) && !k.starts_with("rsigma.") {
            return Err(RuleError::new(format!(
                "unknown field {k:?}: not a Sigma rule field; Tally also reads {}",
                TALLY_ATTRIBUTES.join(" and ")
            ))
            .at(yaml, &format!("{k}:")));
        }
    }
    Ok(())
}

/// A parse error with the line the YAML parser or the token points at.
fn yaml_error(yaml: &str, message: &str) -> RuleError {
    let line = message.find("line ").and_then(|i| {
        message[i + 5..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse::<usize>().ok())
    });
    let err = RuleError {
        line,
        message: message.to_owned(),
    };
    // A missing field is on no line.
    if message.starts_with("Missing") {
        return err;
    }
    // Quoted tokens ('x' or "x") point at the line that holds them, else
    // a single word after the last colon ("Unknown correlation type: x").
    let token = message
        .split('\'')
        .nth(1)
        .or_else(|| message.split('"').nth(1))
        .unwrap_or_else(|| trailing_token(message));
    err.at(yaml, token)
}

/// The single word after the last `": "` of a message, if it ends so.
fn trailing_token(message: &str) -> &str {
    message
        .rsplit(": ")
        .next()
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.contains(char::is_whitespace))
        .unwrap_or_default()
}

/// Refuses flow collections nested deeper than [`MAX_FLOW_DEPTH`], before
/// the YAML parser sees them. Brackets in quoted scalars and comments do
/// not count; those of block scalars do (a safe overestimate).
fn flow_depth_error(yaml: &str) -> Option<RuleError> {
    let mut depth = 0usize;
    for (i, line) in yaml.lines().enumerate() {
        let mut quote: Option<char> = None;
        let mut escaped = false;
        let mut prev = ' ';
        for c in line.chars() {
            match quote {
                Some('"') if escaped => escaped = false,
                Some('"') if c == '\\' => escaped = true,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    // A quote opens a quoted scalar where a token starts
                    // (not the apostrophe of "it's").
                    '\'' | '"' if prev.is_whitespace() || "[{,:-?".contains(prev) => {
                        quote = Some(c)
                    }
                    '#' if prev.is_whitespace() => break,
                    '[' | '{' => {
                        depth += 1;
                        if depth > MAX_FLOW_DEPTH {
                            return Some(RuleError {
                                line: Some(i + 1),
                                message: format!(
                                    "lists or mappings in brackets are nested more than {MAX_FLOW_DEPTH} deep"
                                ),
                            });
                        }
                    }
                    ']' | '}' => depth = depth.saturating_sub(1),
                    _ => {}
                },
            }
            prev = c;
        }
    }
    None
}

/// Detection engines for rules of one service, given rules (internal).
pub(crate) fn detection_engine(rules: &[&SigmaRule]) -> Result<Engine, RuleError> {
    let mut e = Engine::new();
    for r in rules {
        e.add_rule(r)
            .map_err(|err| RuleError::new(format!("rule {:?}: {err}", r.title)))?;
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORT_RULE: &str = r#"
title: Telnet
id: 8a1c0f7e-0000-4000-8000-000000000001
logsource:
    product: tally
    service: flows
detection:
    selection:
        dst_port: 23
    condition: selection
level: high
"#;

    #[test]
    fn a_good_rule_parses_with_its_services() {
        let r = parse_rule(PORT_RULE).expect("parses");
        assert_eq!(r.id, "8a1c0f7e-0000-4000-8000-000000000001");
        assert_eq!(r.level, Level::High);
        assert!(r.services.contains(&Service::Flows));
        assert_eq!(r.group_by, vec!["src_node".to_owned()]);
    }

    #[test]
    fn bad_rules_name_the_line_and_the_problem() {
        let bad_yaml = "title: x\nid: a\nlogsource: [unclosed\n";
        let e = parse_rule(bad_yaml).expect_err("refused");
        assert!(e.line.is_some(), "{e}");

        let unknown_field = PORT_RULE.replace("dst_port: 23", "Image|endswith: '\\\\cmd.exe'");
        let e = parse_rule(&unknown_field).expect_err("refused");
        assert!(
            e.message.contains("\"Image\" does not exist in flows"),
            "{e}"
        );
        assert_eq!(e.line, Some(9), "{e}");

        let unknown_key = format!("{PORT_RULE}colour: blue\n");
        let e = parse_rule(&unknown_key).expect_err("refused");
        assert!(e.message.contains("unknown field \"colour\""), "{e}");

        let windows = PORT_RULE.replace(
            "product: tally\n    service: flows",
            "product: windows\n    category: process_creation",
        );
        let e = parse_rule(&windows).expect_err("refused");
        assert!(e.message.contains("matches no event Tally produces"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");

        let huge = format!("{PORT_RULE}description: '{}'\n", "a".repeat(MAX_RULE_BYTES));
        assert!(
            parse_rule(&huge)
                .expect_err("refused")
                .message
                .contains("at most")
        );
    }
}

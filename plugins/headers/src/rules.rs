//! One phase's header changes (`remove`, then `set`, then `add`), checked when the config is
//! loaded and applied to a request or a response.

use std::collections::BTreeMap;

use serde::Deserialize;
use wasmgate_sdk::log;

use crate::template::{Template, Vars};

/// A `request` or `response` table of the config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseConfig {
    /// Header -> template; replaces every value the header had.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Header -> template; adds a value and keeps the others.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Request,
    Response,
}

impl Phase {
    fn table(self) -> &'static str {
        match self {
            Phase::Request => "request",
            Phase::Response => "response",
        }
    }
}

/// The header operations a rule set needs from a request or a response.
pub trait Headers: Vars {
    fn remove(&mut self, name: &str);
    fn set(&mut self, name: &str, value: &str) -> Result<(), String>;
    fn add(&mut self, name: &str, value: &str) -> Result<(), String>;
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    remove: Vec<String>,
    set: Vec<(String, Template)>,
    add: Vec<(String, Template)>,
}

impl Rules {
    pub fn new(config: PhaseConfig, phase: Phase) -> Result<Rules, String> {
        let table = phase.table();
        let remove = config
            .remove
            .iter()
            .map(|name| header_name(name, phase).map_err(|p| format!("`{table}.remove`: {p}")))
            .collect::<Result<Vec<_>, _>>()?;
        let set = templates(config.set, phase, &format!("{table}.set"))?;
        let add = templates(config.add, phase, &format!("{table}.add"))?;
        Ok(Rules { remove, set, add })
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub fn apply(&self, message: &mut impl Headers) {
        for name in &self.remove {
            message.remove(name);
        }
        for (name, template) in &self.set {
            let value = template.expand(message);
            if let Err(err) = message.set(name, &value) {
                skipped(name, &err);
            }
        }
        for (name, template) in &self.add {
            let value = template.expand(message);
            if let Err(err) = message.add(name, &value) {
                skipped(name, &err);
            }
        }
    }
}

/// A value that became invalid through a substitution (a context value with a newline, say):
/// the header is left out rather than failing the request.
fn skipped(name: &str, err: &str) {
    log::warn(&format!("header `{name}` not written: {err}"));
}

fn templates(
    entries: BTreeMap<String, String>,
    phase: Phase,
    table: &str,
) -> Result<Vec<(String, Template)>, String> {
    let mut out: Vec<(String, Template)> = Vec::new();
    for (name, text) in entries {
        let header = header_name(&name, phase).map_err(|p| format!("`{table}`: {p}"))?;
        if out.iter().any(|(seen, _)| *seen == header) {
            return Err(format!("`{table}`: header `{header}` is listed twice"));
        }
        let template = Template::parse(&text).map_err(|p| format!("`{table}.{name}`: {p}"))?;
        out.push((header, template));
    }
    Ok(out)
}

/// A header name this phase may change, lowercased.
fn header_name(name: &str, phase: Phase) -> Result<String, String> {
    let name = wasmgate_sdk::header::settable(name)?;
    if phase == Phase::Response && name == "x-request-id" {
        return Err("`x-request-id` is set by the gateway on every response".into());
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> PhaseConfig {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        PhaseConfig {
            set: map(set),
            add: map(add),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn names_are_checked_and_lowercased() {
        let rules = Rules::new(
            phase(&[("X-Env", "prod")], &[], &["X-Debug"]),
            Phase::Request,
        );
        let rules = rules.unwrap();
        assert_eq!(rules.remove, ["x-debug"]);
        assert_eq!(rules.set[0].0, "x-env");

        let error = |config, phase| Rules::new(config, phase).unwrap_err();
        assert!(
            error(phase(&[("bad name", "v")], &[], &[]), Phase::Request)
                .contains("`request.set`: `bad name` is not a valid header name")
        );
        assert!(
            error(phase(&[], &[("Content-Length", "1")], &[]), Phase::Request)
                .contains("`content-length` is managed by the gateway")
        );
        assert!(
            error(phase(&[], &[], &["host"]), Phase::Response)
                .contains("`response.remove`: `host` is managed")
        );
        assert!(
            error(phase(&[("x-request-id", "1")], &[], &[]), Phase::Response)
                .contains("set by the gateway")
        );
        assert!(Rules::new(phase(&[("x-request-id", "1")], &[], &[]), Phase::Request).is_ok());
        assert!(
            error(
                phase(&[("X-A", "1"), ("x-a", "2")], &[], &[]),
                Phase::Request
            )
            .contains("listed twice")
        );
        assert!(
            error(phase(&[("x-a", "{nope}")], &[], &[]), Phase::Request)
                .contains("`request.set.x-a`: unknown placeholder")
        );
    }
}

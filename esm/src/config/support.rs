//! Settings that are valid but not built yet. Each is rejected, rather than
//! silently ignored, so a config never means something esm does not do.
//! A `[[mapping]]` key names its check in its declaration (`keys.rs`,
//! `unsupported:`); delete both when the feature lands.

use super::mapping::mapping_paths;
use super::problems::Problem;
use super::walk::child_path;
use super::Config;

/// A setting that is valid but not built yet: shown at `at` (under its
/// mapping, if any) as `not supported yet: KEY = VALUE (WHY)`.
pub(crate) struct NotYet {
    at: String,
    key: &'static str,
    value: String,
    why: &'static str,
}

impl NotYet {
    /// The problem, at `at` under `parent`.
    fn problem(self, parent: &str) -> Problem {
        let message = format!(
            "not supported yet: {} = {} ({})",
            self.key, self.value, self.why
        );
        Problem::new(child_path(parent, &self.at), message)
    }
}

/// Problems for every setting in `config` that esm does not support yet,
/// as `PATH: not supported yet: KEY = VALUE (why)`.
pub fn check_supported(config: &Config) -> Vec<Problem> {
    let mut problems: Vec<Problem> = Vec::new();
    let names: Vec<Option<&str>> = config
        .mappings
        .iter()
        .map(|m| Some(m.name.as_str()))
        .collect();
    for (m, path) in config.mappings.iter().zip(mapping_paths(&names)) {
        problems.extend(m.not_supported_yet().into_iter().map(|n| n.problem(&path)));
    }
    problems
}

//! What is wrong with a config file: one [`Problem`] per mistake, all of them
//! gathered into [`Problems`] so that a user fixes the whole file in one go.

use std::fmt;

/// One mistake in a config file: where it is and what is wrong with it.
///
/// Displays as `{path}: {message}`, e.g.
/// `mapping[orders].batch_size: 20000 is out of range 1..=10000`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where the mistake is: `config` for the file as a whole, else a key path
    /// such as `store.kind` or `mapping[orders].batch_size`.
    pub path: String,
    /// What is wrong, naming the value found and what is allowed.
    pub message: String,
}

impl Problem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a config file, in file order where practical.
///
/// Displays as one problem per line, without a trailing newline.
#[derive(Debug, Clone)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// `s` in double quotes, escaped as in JSON (and TOML basic strings).
pub(crate) fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

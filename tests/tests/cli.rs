//! The command line of a binary that registers handlers (`esm-echo`, which has
//! `echo`): `validate` accepts a config naming it, and names what it has when a config
//! names something else.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use esm_e2e::bin_path;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../esm/tests/fixtures")
        .join(name)
}

fn validate(config: &Path) -> Output {
    validate_with("esm-echo", config, "run esm-echo")
}

/// `BIN validate --config CONFIG`; `running` is the message if it cannot be run.
fn validate_with(bin: &str, config: &Path, running: &str) -> Output {
    Command::new(bin_path(bin))
        .arg("validate")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect(running)
}

#[test]
fn validate_accepts_a_valid_config_with_a_one_line_summary() {
    let out = validate(&fixture("valid.toml"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "expected a one-line summary:\n{stdout}");
    assert!(
        lines[0].starts_with("valid: 1 mapping (orders)"),
        "summary: {}",
        lines[0]
    );
}

#[test]
fn validate_names_the_handlers_the_binary_has() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("esm.toml");
    let text = std::fs::read_to_string(fixture("valid.toml"))
        .unwrap()
        .replace("function = \"echo\"", "function = \"orders-handler\"");
    std::fs::write(&config, text).unwrap();
    let out = validate(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "stdout:\n{stdout}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "mapping[orders].function: no in-process handler named \"orders-handler\" in this binary (it has: echo)"
        ]
    );
}

#[test]
fn validate_reports_the_same_problems_as_the_plain_binary() {
    let expected = std::fs::read_to_string(fixture("five-mistakes.expected")).unwrap();
    let out = validate(&fixture("five-mistakes.toml"));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        expected.lines().collect::<Vec<_>>()
    );
}

/// Every example's `esm.toml` is valid for that example's own esm binary.
#[test]
fn every_example_config_validates_with_its_binary() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for (dir, bin) in [
        ("echo", "esm-echo"),
        ("partial-failures", "esm-partial-failures"),
        ("tumbling-window", "esm-tumbling-window"),
    ] {
        let out = validate_with(
            bin,
            &examples.join(dir).join("esm.toml"),
            "run the example's esm binary",
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{dir}/esm.toml with {bin}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

//! The `esm` binary's command line (SPEC §1): `validate`, `run` on a bad config,
//! `--version`, `help`, and the exit codes (0 success, 2 bad arguments or config).
//!
//! The plain `esm` binary has no in-process handlers, so a config naming one is
//! invalid for it; `tests/tests/cli.rs` checks the valid case with `esm-echo`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn esm() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_esm"));
    cmd.stdin(Stdio::null());
    cmd
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Runs `cmd` to its end, killing it (and failing) if it takes longer than a generous
/// bound: none of these commands should wait for anything.
fn run(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start esm");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "esm did not exit; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("wait")
}

/// `esm ARGS`, run to its end (see [`run`]).
fn esm_args(args: &[&str]) -> Output {
    let mut cmd = esm();
    cmd.args(args);
    run(cmd)
}

/// `esm validate --config CONFIG`, run to its end.
fn validate(config: &Path) -> Output {
    let mut cmd = esm();
    cmd.arg("validate").arg("--config").arg(config);
    run(cmd)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn validate_prints_one_line_per_problem_and_exits_2() {
    let expected = std::fs::read_to_string(fixture("five-mistakes.expected")).unwrap();
    let out = validate(&fixture("five-mistakes.toml"));
    assert_eq!(out.status.code(), Some(2), "stderr:\n{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        expected.lines().collect::<Vec<_>>()
    );
}

#[test]
fn validate_reports_a_function_this_binary_does_not_have() {
    let out = validate(&fixture("valid.toml"));
    assert_eq!(out.status.code(), Some(2), "stderr:\n{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "expected one problem, got:\n{text}");
    assert!(
        lines[0].starts_with("mapping[orders].function: no in-process handler named \"echo\""),
        "unexpected problem line: {}",
        lines[0]
    );
}

#[test]
fn validate_on_a_missing_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = validate(&dir.path().join("nope.toml"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stdout(&out).contains("nope.toml"),
        "the problem should name the file:\n{}",
        stdout(&out)
    );
}

/// Copies fixture `name` into a fresh directory as `esm.toml`; the store would be
/// created there (`./esm-state`, relative to the config file).
fn config_in_tempdir(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("esm.toml");
    std::fs::copy(fixture(name), &config).unwrap();
    (dir, config)
}

/// `esm run --config CONFIG` in `dir`, run to its end. Nothing may be contacted; an
/// unreachable endpoint would show up as a hang or errors rather than a clean exit 2.
fn run_config(dir: &Path, config: &Path) -> Output {
    let mut cmd = esm();
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .current_dir(dir)
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_REGION", "us-east-1");
    run(cmd)
}

#[test]
fn run_on_a_bad_config_exits_2_and_starts_nothing() {
    let (dir, config) = config_in_tempdir("five-mistakes.toml");
    let out = run_config(dir.path(), &config);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{}", stderr(&out));
    let expected = std::fs::read_to_string(fixture("five-mistakes.expected")).unwrap();
    let err = stderr(&out);
    for line in expected.lines() {
        assert!(err.contains(line), "stderr lacks {line:?}:\n{err}");
    }
    assert!(
        !dir.path().join("esm-state").exists(),
        "run on a bad config created the checkpoint store"
    );
}

#[test]
fn run_without_the_named_handler_exits_2_and_starts_nothing() {
    let (dir, config) = config_in_tempdir("valid.toml");
    let out = run_config(dir.path(), &config);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{}", stderr(&out));
    assert!(
        stderr(&out).contains("mapping[orders].function: no in-process handler named \"echo\""),
        "stderr:\n{}",
        stderr(&out)
    );
    assert!(
        !dir.path().join("esm-state").exists(),
        "run without a handler created the checkpoint store"
    );
}

#[test]
fn version_exits_0_and_names_the_version() {
    let out = esm_args(&["--version"]);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(&out));
    assert!(
        stdout(&out).contains(env!("CARGO_PKG_VERSION")),
        "stdout: {}",
        stdout(&out)
    );
}

#[test]
fn help_exits_0_and_lists_the_commands() {
    for args in [&["help"][..], &["--help"][..]] {
        let out = esm_args(args);
        assert_eq!(out.status.code(), Some(0), "esm {args:?}: {}", stderr(&out));
        let text = stdout(&out);
        for command in ["run", "validate"] {
            assert!(
                text.contains(command),
                "esm {args:?} lacks {command}:\n{text}"
            );
        }
    }
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &[][..],
        &["frobnicate"][..],
        &["validate"][..],
        &["run", "--config"][..],
    ] {
        let out = esm_args(args);
        assert_eq!(out.status.code(), Some(2), "esm {args:?}: {}", stderr(&out));
    }
}

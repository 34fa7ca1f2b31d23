//! What every command shares at its edge: the exit codes of SPEC §1 and the async
//! runtime the commands run on.
//!
//! Kept apart from the command line (`cli`) so that a command's module
//! (`replay`, and the ones to come) depends on this small module, never on `cli`
//! itself, which depends on every command.

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: runtime failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: bad arguments or config.
pub const EXIT_BAD_CONFIG: u8 = 2;

/// The multi-threaded tokio runtime the commands run on; `None` (after saying why on
/// stderr) when it cannot start.
pub fn async_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            None
        }
    }
}

//! The `esm` binary: the command line with no in-process handlers linked in.
//! (To run handlers in-process, a binary of your own registers them: see `esm::cli`.)

fn main() -> std::process::ExitCode {
    esm::cli::main(esm::Registry::new())
}

//! esm with the partial-failures handler linked in, registered as `partial-failures`.

use handler_sdk::service_fn;

fn main() -> std::process::ExitCode {
    esm::cli::main(esm::Registry::new().handler(
        "partial-failures",
        service_fn(partial_failures_handler::handle),
    ))
}

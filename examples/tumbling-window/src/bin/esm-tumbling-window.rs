//! esm with the tumbling-window handler linked in, registered as `tumbling-window`.

use handler_sdk::service_fn;

fn main() -> std::process::ExitCode {
    esm::cli::main(esm::Registry::new().window_handler(
        "tumbling-window",
        service_fn(tumbling_window_handler::handle),
    ))
}

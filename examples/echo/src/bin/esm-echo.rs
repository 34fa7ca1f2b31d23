//! esm with the echo handler linked in, registered as `echo`.

use handler_sdk::service_fn;

fn main() -> std::process::ExitCode {
    esm::cli::main(esm::Registry::new().handler("echo", service_fn(echo_handler::handle)))
}

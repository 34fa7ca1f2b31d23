//! `echo-handler` as a Lambda function: deploy it to AWS Lambda, or have esm run it
//! as a worker process (`[mapping.function] command = [...]`).

use handler_sdk::{service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    handler_sdk::run(service_fn(echo_handler::handle)).await
}

//! `echo-handler` as a Lambda function: deploy it to AWS Lambda, or point esm's
//! Runtime API host at it.

use handler_sdk::{service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    handler_sdk::run(service_fn(echo_handler::handle)).await
}

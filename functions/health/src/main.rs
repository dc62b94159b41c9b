//! Lambda function for `GET /health`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    let state = shared::cold_start(shared::routes::Operation::Health).await?;
    shared::lambda::run(move |req| shared::handlers::health(state, req)).await
}

//! Lambda function for `GET /api/{user_id}/tasks/{id}`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    let state = shared::cold_start().await?;
    shared::lambda::run(move |req| shared::handlers::get_task(state, req)).await
}

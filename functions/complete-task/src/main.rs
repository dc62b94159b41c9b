//! Lambda function for `PATCH /api/{user_id}/tasks/{id}/complete`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    let state = shared::cold_start(shared::routes::Operation::CompleteTask).await?;
    shared::lambda::run(move |req| shared::handlers::complete_task(state, req)).await
}

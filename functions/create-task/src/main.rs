//! Lambda function for `POST /api/{user_id}/tasks`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    let state = shared::cold_start(shared::routes::Operation::CreateTask).await?;
    shared::lambda::run(move |req| shared::handlers::create_task(state, req)).await
}

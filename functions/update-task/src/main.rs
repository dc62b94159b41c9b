//! Lambda function for `PUT /api/{user_id}/tasks/{id}`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    let state = shared::cold_start(shared::routes::Operation::UpdateTask).await?;
    shared::lambda::run(move |req| shared::handlers::update_task(state, req)).await
}

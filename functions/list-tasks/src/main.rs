//! Lambda function for `GET /api/{user_id}/tasks`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    let state = shared::cold_start(shared::routes::Operation::ListTasks).await?;
    shared::lambda::run(move |req| shared::handlers::list_tasks(state, req)).await
}

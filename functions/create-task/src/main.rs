//! Lambda function for `POST /api/{user_id}/tasks`.
// The handler's future inside the Lambda runtime's is deep, and rustc computes its layout
// only to this query depth: at the default 128, complete-task was at 125 to 128, and a
// fresh build (no incremental cache) failed with "queries overflow the depth limit".
#![recursion_limit = "256"]

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    let state = shared::cold_start(shared::routes::Operation::CreateTask).await?;
    shared::lambda::run(move |req| shared::handlers::create_task(state, req)).await
}

//! `migrate`: applies the migrations to `DATABASE_URL` (or `NEON_DATABASE_URL`).
//!
//! Any Neon endpoint works, the `-pooler` one included: see the crate documentation.

use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .or_else(|_| std::env::var("NEON_DATABASE_URL"))
        .map_err(|_| anyhow::anyhow!("DATABASE_URL must be set"))?;
    let ca_file = std::env::var_os("DATABASE_CA_FILE").map(std::path::PathBuf::from);
    let mut client =
        shared::db::connect_once(&url, ca_file.as_deref(), Duration::from_secs(10)).await?;
    let applied = migrations::apply(&mut client).await?;
    if applied.is_empty() {
        println!("migrations: database is up to date");
    } else {
        for name in applied {
            println!("migrations: applied {name}");
        }
    }
    Ok(())
}

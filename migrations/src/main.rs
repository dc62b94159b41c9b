//! `migrate`: applies the migrations to `DATABASE_URL` (or `NEON_DATABASE_URL`).
//! `migrate --prune` also drops the statement functions that neither this release nor the
//! one migrated before it calls (see `migrations::prune`).
//!
//! Any Neon endpoint works, the `-pooler` one included: see the crate documentation.

use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let prune = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--prune") => true,
        Some(other) => anyhow::bail!("unknown argument {other:?}; usage: migrate [--prune]"),
    };
    let url = std::env::var("DATABASE_URL")
        .or_else(|_| std::env::var("NEON_DATABASE_URL"))
        .map_err(|_| anyhow::anyhow!("DATABASE_URL must be set"))?;
    let ca_file = std::env::var_os("DATABASE_CA_FILE").map(std::path::PathBuf::from);
    let mut client =
        shared::db::connect_once(&url, ca_file.as_deref(), Duration::from_secs(10)).await?;
    let (applied, pruned) = if prune {
        migrations::prune(&mut client).await?
    } else {
        (migrations::apply(&mut client).await?, Default::default())
    };
    if applied.is_empty() {
        println!("migrations: database is up to date");
    } else {
        for name in applied {
            println!("migrations: applied {name}");
        }
    }
    if prune {
        for release in &pruned.releases {
            println!("migrations: forgot release {release}");
        }
        for name in pruned.functions.iter().chain(&pruned.types) {
            println!("migrations: dropped {name}");
        }
        println!(
            "migrations: pruned {} functions and {} row types",
            pruned.functions.len(),
            pruned.types.len()
        );
    }
    Ok(())
}

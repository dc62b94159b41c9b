//! `migrate`: applies the migrations to `DATABASE_URL` (or `NEON_DATABASE_URL`).
//! `migrate --prune` also drops the statement functions that neither this release nor the
//! one migrated before it calls (see `migrations::prune`); `--prune --keep N` keeps those
//! of the N releases migrated last (see `migrations::prune_keeping`).
//!
//! Any Neon endpoint works, the `-pooler` one included: see the crate documentation.

use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    const USAGE: &str = "usage: migrate [--prune [--keep N]]";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let prune = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => None,
        ["--prune"] => Some(migrations::DEFAULT_RELEASES_KEPT),
        ["--prune", "--keep", keep] => Some(keep.parse::<usize>().map_err(|_| {
            anyhow::anyhow!("--keep takes a number of releases, not {keep:?}; {USAGE}")
        })?),
        _ => anyhow::bail!("unknown arguments {args:?}; {USAGE}"),
    };
    let url = std::env::var("DATABASE_URL")
        .or_else(|_| std::env::var("NEON_DATABASE_URL"))
        .map_err(|_| anyhow::anyhow!("DATABASE_URL must be set"))?;
    let ca_file = std::env::var_os("DATABASE_CA_FILE").map(std::path::PathBuf::from);
    let mut client =
        shared::db::connect_once(&url, ca_file.as_deref(), Duration::from_secs(10)).await?;
    let (applied, pruned) = if let Some(keep) = prune {
        migrations::prune_keeping(&mut client, keep).await?
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
    if prune.is_some() {
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

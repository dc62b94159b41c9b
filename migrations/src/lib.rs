//! Versioned SQL migrations (`migrations/sql/V<n>__<name>.sql`), embedded in the binary
//! and applied with refinery.
//!
//! Applying is idempotent, and safe from two places at once: a session-level advisory lock
//! serialises concurrent runs, and refinery skips what is already applied.

use anyhow::Context as _;

mod embedded {
    refinery::embed_migrations!("sql");
}

/// Arbitrary but fixed: "todo" in ASCII.
const MIGRATION_LOCK_KEY: i64 = 0x746f_646f;

/// Applies every pending migration and returns the names of those it applied.
pub async fn apply(client: &mut tokio_postgres::Client) -> anyhow::Result<Vec<String>> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .context("cannot take the migration lock")?;
    let result = embedded::migrations::runner()
        .set_abort_divergent(true)
        .run_async(client)
        .await
        .context("migration failed");
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    let report = result?;
    unlock.context("cannot release the migration lock")?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}

//! Versioned SQL migrations (`migrations/sql/V<n>__<name>.sql`), embedded in the binary
//! and applied with refinery.
//!
//! Applying is idempotent and safe from two places at once, whatever host it is given,
//! Neon's `-pooler` (PgBouncer in transaction mode) included: everything — a
//! transaction-scoped advisory lock (`pg_advisory_xact_lock`), reading the applied
//! versions, every pending migration and its history row — runs in one transaction. A
//! transaction stays on one server connection behind a pooler, and its lock ends with it,
//! so no lock can outlive a run on a pooled connection. A concurrent run waits for the
//! lock, then finds the versions applied and skips them. The cost: a migration cannot use
//! statements that refuse to run in a transaction (`CREATE INDEX CONCURRENTLY`).

use anyhow::Context as _;
use refinery_core::traits::r#async::{AsyncMigrate, AsyncQuery, AsyncTransaction};
use refinery_core::Migration;
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::SimpleQueryMessage;

mod embedded {
    refinery::embed_migrations!("sql");
}

/// Arbitrary but fixed: "todo" in ASCII.
const MIGRATION_LOCK_KEY: i64 = 0x746f_646f;

/// How long a migration waits for a lock on a table (an `ALTER TABLE` waits for every
/// transaction that uses it). While it waits, every request that touches the table queues
/// behind it, so a migration that cannot have the table soon gives up, rolls everything
/// back, and says so; run it again. The migration lock itself is waited for without limit:
/// a concurrent run holds it only while it applies.
pub const LOCK_TIMEOUT_MS: u32 = 3_000;

/// Applies every pending migration and returns the names of those it applied.
pub async fn apply(client: &mut tokio_postgres::Client) -> anyhow::Result<Vec<String>> {
    Ok(run(client, None, None).await?.0)
}

/// Applies the pending migrations up to `version` only, and installs no statement
/// function: a database as an earlier release left it, for the tests of what a later
/// migration does to it.
#[doc(hidden)]
pub async fn apply_up_to(
    client: &mut tokio_postgres::Client,
    version: i32,
) -> anyhow::Result<Vec<String>> {
    Ok(run(client, None, Some(version)).await?.0)
}

/// What [`prune`] dropped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// The releases forgotten (their ids), oldest first.
    pub releases: Vec<String>,
    /// The functions dropped (schema-qualified names), sorted.
    pub functions: Vec<String>,
    /// The row types dropped (schema-qualified names), sorted.
    pub types: Vec<String>,
}

/// [`apply`], then, in the same transaction, drops the statement functions that neither
/// this release nor the one recorded before it calls, and the row types no remaining
/// function returns. The release before is kept so that a rollback to it works without
/// running its `migrate` again; anything older must not be serving when this runs.
pub async fn prune(client: &mut tokio_postgres::Client) -> anyhow::Result<(Vec<String>, Pruned)> {
    prune_keeping(client, DEFAULT_RELEASES_KEPT).await
}

/// What [`prune`] keeps: this release and the one recorded before it.
pub const DEFAULT_RELEASES_KEPT: usize = 2;

/// [`prune`], keeping the functions of the `keep` most recently recorded releases (this one
/// included) rather than two: for when a release was migrated but never deployed (a
/// deploy that failed or was given up, `scripts/dev` against this database), and so the
/// one recorded before this is not the one that served before it. At least 2.
pub async fn prune_keeping(
    client: &mut tokio_postgres::Client,
    keep: usize,
) -> anyhow::Result<(Vec<String>, Pruned)> {
    anyhow::ensure!(
        keep >= DEFAULT_RELEASES_KEPT,
        "keep at least {DEFAULT_RELEASES_KEPT} releases (this one and the one that served before it), not {keep}"
    );
    run(client, Some(keep), None).await
}

/// `prune`: how many releases' functions to keep, if any are to be dropped.
async fn run(
    client: &mut tokio_postgres::Client,
    prune: Option<usize>,
    up_to: Option<i32>,
) -> anyhow::Result<(Vec<String>, Pruned)> {
    run_locked(client, prune, up_to).await.map_err(|err| {
        let timed_out = err.chain().any(|cause| {
            cause
                .downcast_ref::<tokio_postgres::Error>()
                .and_then(|e| e.code())
                == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
        });
        if timed_out {
            err.context(format!(
                "a migration waited over {LOCK_TIMEOUT_MS} ms for a lock on a table in use \
                 (requests queue behind it meanwhile); nothing was applied: run migrate again"
            ))
        } else {
            err
        }
    })
}

async fn run_locked(
    client: &mut tokio_postgres::Client,
    prune: Option<usize>,
    up_to: Option<i32>,
) -> anyhow::Result<(Vec<String>, Pruned)> {
    let transaction = client
        .transaction()
        .await
        .context("cannot start the migration transaction")?;
    // Simple-protocol statements only: no prepared statement that a pooler could lose.
    transaction
        .batch_execute(&format!(
            "SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY}); \
             SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}"
        ))
        .await
        .context("cannot take the migration lock")?;
    let mut locked = Locked(transaction);
    let target = match up_to {
        Some(version) => refinery::Target::Version(version),
        None => refinery::Target::Latest,
    };
    let runner = embedded::migrations::runner();
    let applied = if up_to.is_none() && migrated_further(&locked.0, &runner).await? {
        // A later release migrated this database further, and this one runs its `migrate`
        // to install its functions again (a rollback): its own migrations are all applied
        // (checked), and refinery would refuse the versions it does not know.
        Vec::new()
    } else {
        runner
            .set_abort_divergent(true)
            .set_target(target)
            .run_async(&mut locked)
            .await
            .context("migration failed")?
            .applied_migrations()
            .iter()
            .map(|m| m.to_string())
            .collect()
    };
    if up_to.is_none() {
        install_procedures(&locked.0)
            .await
            .context("cannot install the statement functions")?;
    }
    let pruned = if let Some(keep) = prune {
        prune_releases(&locked.0, keep)
            .await
            .context("cannot prune the functions of earlier releases")?
    } else {
        Pruned::default()
    };
    locked
        .0
        .commit()
        .await
        .context("cannot commit the migrations")?;
    Ok((applied, pruned))
}

/// Whether the database holds a migration newer than this release's newest, with every one
/// of this release's applied; an error when one of them is not (the histories diverged).
async fn migrated_further(
    transaction: &tokio_postgres::Transaction<'_>,
    runner: &refinery::Runner,
) -> anyhow::Result<bool> {
    let exists: bool = transaction
        .query_typed_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(false);
    }
    // (version, name, checksum) as refinery records them.
    let applied: Vec<(i32, String, String)> = transaction
        .query_typed(
            "SELECT version, name, checksum FROM refinery_schema_history",
            &[],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let ours = runner.get_migrations();
    let newest_ours = ours.iter().map(|m| m.version()).max().unwrap_or(0);
    if !applied.iter().any(|(version, _, _)| *version > newest_ours) {
        return Ok(false);
    }
    // What refinery checks of applied migrations: each of this release's, the same.
    for migration in ours {
        let same = applied.iter().any(|(version, name, checksum)| {
            *version == migration.version()
                && name == migration.name()
                && *checksum == migration.checksum().to_string()
        });
        if !same {
            anyhow::bail!(
                "the database was migrated by a later release, but not with this release's \
                 {migration}: the histories diverged"
            );
        }
    }
    Ok(true)
}

/// Creates the function of every task statement that does not have one yet (see
/// `shared::procedures`), in the migration transaction, after the migrations. Each
/// statement is described first (Parse/Describe, inside the transaction, so on one server
/// connection behind a pooler) for the columns its function returns. Functions of earlier
/// releases stay: a release still draining keeps calling them.
async fn install_procedures(transaction: &tokio_postgres::Transaction<'_>) -> anyhow::Result<()> {
    let schema = shared::procedures::SCHEMA;
    // Granted only when missing: a GRANT rewrites the schema's catalog row even when it
    // changes nothing, and that makes every session of every release plan its statements
    // anew.
    transaction
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; \
             DO $grant$ BEGIN \
             IF NOT EXISTS (SELECT FROM pg_catalog.pg_namespace n, aclexplode(n.nspacl) a \
             WHERE n.nspname = '{schema}' AND a.grantee = '{role}'::pg_catalog.regrole \
             AND a.privilege_type = 'USAGE') THEN \
             GRANT USAGE ON SCHEMA {schema} TO {role}; \
             END IF; END $grant$",
            role = shared::db::APP_ROLE
        ))
        .await?;
    let mut existing = std::collections::HashSet::new();
    for message in transaction
        .simple_query(&format!(
            "SELECT p.proname FROM pg_catalog.pg_proc p \
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = '{schema}'"
        ))
        .await?
    {
        if let SimpleQueryMessage::Row(row) = message {
            existing.insert(format!("{schema}.{}", row.get(0).unwrap_or_default()));
        }
    }
    let mut procedures: Vec<_> = shared::procedures::all().collect();
    procedures.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<String> = procedures.iter().map(|p| p.name.clone()).collect();
    // A database that has functions but no release recorded was migrated by a release from
    // before the record began: those functions are that release's, recorded as the one
    // before this, so that pruning keeps them for a rollback.
    let recorded: i64 = transaction
        .query_typed_one(&format!("SELECT count(*) FROM {schema}.releases"), &[])
        .await?
        .get(0);
    if recorded == 0 && !existing.is_empty() {
        let mut earlier: Vec<String> = existing.iter().cloned().collect();
        earlier.sort();
        record_release(transaction, "before-release-records", &earlier).await?;
    }
    for procedure in procedures {
        if existing.contains(&procedure.name) {
            continue;
        }
        install_in_savepoint(transaction, procedure)
            .await
            .with_context(|| format!("cannot create {}", procedure.name))?;
    }
    let mut id = Sha256::new();
    for name in &names {
        id.update(name);
        id.update([0]);
    }
    let id = shared::procedures::hex(&id.finalize()[..8]);
    record_release(transaction, &id, &names).await
}

/// Records (or re-records) a release as the most recent one.
async fn record_release(
    transaction: &tokio_postgres::Transaction<'_>,
    id: &str,
    functions: &[String],
) -> anyhow::Result<()> {
    let schema = shared::procedures::SCHEMA;
    transaction
        .query_typed(
            &format!(
                "INSERT INTO {schema}.releases (id, functions, installed_at) \
                 VALUES ($1, $2, clock_timestamp()) \
                 ON CONFLICT (id) DO UPDATE SET installed_at = EXCLUDED.installed_at"
            ),
            &[(&id, Type::TEXT), (&functions, Type::TEXT_ARRAY)],
        )
        .await?;
    Ok(())
}

/// Drops what none of the `keep` most recently recorded releases uses (see [`prune`]).
async fn prune_releases(
    transaction: &tokio_postgres::Transaction<'_>,
    keep: usize,
) -> anyhow::Result<Pruned> {
    let schema = shared::procedures::SCHEMA;
    let releases = transaction
        .query_typed(
            &format!("SELECT id, functions FROM {schema}.releases ORDER BY installed_at DESC"),
            &[],
        )
        .await?;
    let kept: std::collections::HashSet<String> = releases
        .iter()
        .take(keep)
        .flat_map(|row| row.get::<_, Vec<String>>(1))
        .collect();
    let mut pruned = Pruned {
        releases: releases
            .iter()
            .skip(keep)
            .rev()
            .map(|row| row.get::<_, String>(0))
            .collect(),
        ..Pruned::default()
    };
    if !pruned.releases.is_empty() {
        transaction
            .query_typed(
                &format!("DELETE FROM {schema}.releases WHERE id = ANY($1)"),
                &[(&pruned.releases, Type::TEXT_ARRAY)],
            )
            .await?;
    }
    // Every statement function is `q_<hex>`, every row type `r_<hex>` (shared::procedures):
    // nothing else in the schema is touched.
    for row in transaction
        .query_typed(
            "SELECT n.nspname || '.' || p.proname FROM pg_catalog.pg_proc p \
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = $1 AND p.proname ~ '^q_[0-9a-f]+$' ORDER BY 1",
            &[(&schema, Type::TEXT)],
        )
        .await?
    {
        let name: String = row.get(0);
        if !kept.contains(&name) {
            transaction
                .batch_execute(&format!("DROP FUNCTION {name}"))
                .await?;
            pruned.functions.push(name);
        }
    }
    for row in transaction
        .query_typed(
            "SELECT n.nspname || '.' || t.typname FROM pg_catalog.pg_type t \
             JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
             WHERE n.nspname = $1 AND t.typtype = 'c' AND t.typname ~ '^r_[0-9a-f]+$' \
             AND NOT EXISTS (SELECT FROM pg_catalog.pg_proc p WHERE p.prorettype = t.oid) ORDER BY 1",
            &[(&schema, Type::TEXT)],
        )
        .await?
    {
        let name: String = row.get(0);
        transaction
            .batch_execute(&format!("DROP TYPE {name}"))
            .await?;
        pruned.types.push(name);
    }
    Ok(pruned)
}

/// Creates (or replaces) the function of one statement, with the columns the statement
/// returns as Postgres describes them, and first, for a statement that returns a set, the
/// composite type of those columns if no earlier function created it. Public for the tests
/// that install functions of statements the API does not have (to show that row-level
/// security holds for any SQL).
pub async fn install(
    client: &impl tokio_postgres::GenericClient,
    procedure: &shared::procedures::Procedure,
) -> anyhow::Result<()> {
    let columns: Vec<_> = {
        let statement = client
            .prepare_typed(&procedure.sql, &procedure.types)
            .await
            .context("cannot describe the statement")?;
        statement
            .columns()
            .iter()
            .map(|column| (column.name().to_owned(), column.type_().clone()))
            .collect()
    };
    if procedure.returns == shared::procedures::Returns::Rows {
        if let Some(row) = shared::procedures::RowType::of(&columns) {
            client
                .batch_execute(&row.definition)
                .await
                .with_context(|| format!("cannot create the type {}", row.name))?;
        }
    }
    client
        .batch_execute(&procedure.definition(&columns))
        .await
        .context("cannot create the function")?;
    Ok(())
}

/// The most statement names [`install_in_savepoint`] tries for one function.
const STATEMENT_NAME_TRIES: usize = 1_000;

/// [`install`] in the migration transaction, behind a savepoint: [`install`] describes the
/// statement with a named statement, which tokio-postgres names `s0`, `s1`, … in each
/// process. Through a pooler that keeps no prepared statements (PgBouncer before 1.21), a
/// name another client prepared (a function's first, before it turns to unnamed
/// statements) stays on its server connection, and Postgres refuses it again ("prepared
/// statement already exists"), which would fail the whole run. Each try takes the next
/// name.
async fn install_in_savepoint(
    transaction: &tokio_postgres::Transaction<'_>,
    procedure: &shared::procedures::Procedure,
) -> anyhow::Result<()> {
    let mut tries = 0;
    loop {
        tries += 1;
        transaction.batch_execute("SAVEPOINT install").await?;
        match install(transaction, procedure).await {
            Ok(()) => {
                transaction
                    .batch_execute("RELEASE SAVEPOINT install")
                    .await?;
                return Ok(());
            }
            Err(err)
                if tries < STATEMENT_NAME_TRIES
                    && err
                        .downcast_ref::<tokio_postgres::Error>()
                        .and_then(|e| e.code())
                        == Some(&SqlState::DUPLICATE_PSTATEMENT) =>
            {
                // Rolled back to it, the savepoint stays: released, so that the tries do
                // not nest.
                transaction
                    .batch_execute("ROLLBACK TO SAVEPOINT install; RELEASE SAVEPOINT install")
                    .await?;
            }
            Err(err) => return Err(err),
        }
    }
}

/// The migration transaction as refinery sees it: what refinery would run in transactions
/// of its own runs in this one, which commits (and releases the lock) only at the end.
struct Locked<'a>(tokio_postgres::Transaction<'a>);

impl AsyncTransaction for Locked<'_> {
    type Error = tokio_postgres::Error;

    async fn execute<'a, T: Iterator<Item = &'a str> + Send + 'a>(
        &'a mut self,
        queries: T,
    ) -> Result<usize, Self::Error> {
        let mut count = 0;
        for query in queries {
            self.0.batch_execute(query).await?;
            count += 1;
        }
        Ok(count)
    }
}

impl AsyncQuery<Vec<Migration>> for Locked<'_> {
    async fn query<'a>(&'a mut self, query: &'a str) -> Result<Vec<Migration>, Self::Error> {
        // refinery's history query selects version, name, applied_on, checksum.
        let mut applied = Vec::new();
        for message in self.0.simple_query(query).await? {
            let SimpleQueryMessage::Row(row) = message else {
                continue;
            };
            let field = |i: usize| row.get(i).unwrap_or_default();
            applied.push(Migration::applied(
                field(0)
                    .parse()
                    .expect("refinery_schema_history.version is an integer"),
                field(1).to_owned(),
                OffsetDateTime::parse(field(2), &Rfc3339)
                    .expect("refinery_schema_history.applied_on is RFC 3339"),
                field(3)
                    .parse()
                    .expect("refinery_schema_history.checksum is a u64"),
            ));
        }
        Ok(applied)
    }
}

impl AsyncMigrate for Locked<'_> {}

//! Every task statement runs inside a PL/pgSQL function of its own, which sets the request's
//! row-level security context and then runs the statement, and returns the statement's row
//! as one `record` value ([`crate::record`]): one protocol message group (Bind, Execute,
//! Sync) per request, one implicit transaction, one answer.
//!
//! Why: the context (`app.user_id`, the role, the deadline) is transaction-scoped, as it
//! must be behind a pooler in transaction mode. Sent from the client, it needs `BEGIN`, the
//! context, the statement and `COMMIT`, and tokio-postgres ends each of them with a Sync,
//! so Postgres answers and flushes four times per request; on the benchmark machine that
//! cost as much backend CPU as the statement itself. Inside a function, the context and
//! the statement share the statement's own implicit transaction. The function's plans are
//! cached by the server per connection, so they stay cached even where the client cannot
//! keep prepared statements (PgBouncer before 1.21).
//!
//! The SQL stays in the repository ([`crate::repo`]); `migrate` installs one function per
//! statement ([`definition`]), named after a hash of the statement, its parameter types and
//! [`TEMPLATE_VERSION`]. A changed statement is a new function, so the previous release's
//! functions keep working while it drains; nothing is ever replaced under a running one.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::LazyLock;

use sha2::{Digest, Sha256};
use tokio_postgres::types::{Kind, Type};

/// The schema of the functions (created by `migrate`).
pub const SCHEMA: &str = "todo_api";

/// Changes whenever [`definition`]'s template changes, so that every function is new.
const TEMPLATE_VERSION: &str = "15";

/// Changes when row types of the same columns must differ from those named before (and
/// then, as the functions return them, [`TEMPLATE_VERSION`] too).
const ROW_TYPE_SERIES: &str = "2";

/// What a statement's function sets up before the statement, besides the role and
/// `app.user_id` (which every function sets). Each costs Postgres a few microseconds per
/// call, so a function does only what its statement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guards {
    /// Refuse to start after the request's deadline, and bound lock waits by the time left:
    /// what makes an error answer to a write final. Reads need neither: a late read changes
    /// nothing, and the client cancels one that outlives the deadline.
    pub deadline: bool,
    /// One plan per connection, never a sequential scan of the table: for statements that
    /// reach their rows through a non-unique index (the listings, the idempotency keys'
    /// purge), whose plans Postgres would otherwise choose per call from the table's
    /// skew. A statement that reaches one row by its primary key has one plan anyway.
    pub pinned_plan: bool,
    /// Read through an index in its order, never through a bitmap scan (which returns the
    /// rows in the table's order, to be sorted): for a statement written to stop after the
    /// rows it needs in the index's order (the unfiltered listings by creation time). A
    /// pinned plan, estimated for an average owner, would otherwise take the bitmap scan.
    pub index_order: bool,
}

impl Guards {
    /// A read of one row by its key.
    pub const READ: Guards = Guards {
        deadline: false,
        pinned_plan: false,
        index_order: false,
    };
    /// A listing.
    pub const LIST: Guards = Guards {
        deadline: false,
        pinned_plan: true,
        index_order: false,
    };
    /// A listing that reads its page in the index's order.
    pub const LIST_IN_INDEX_ORDER: Guards = Guards {
        deadline: false,
        pinned_plan: true,
        index_order: true,
    };
    /// A write of one row by its key.
    pub const WRITE: Guards = Guards {
        deadline: true,
        pinned_plan: false,
        index_order: false,
    };
    /// The deadline and a pinned plan: the default for a statement the repository does not
    /// list (the index order suits only a statement written for it).
    pub const ALL: Guards = Guards {
        deadline: true,
        pinned_plan: true,
        index_order: false,
    };

    /// The planner settings these guards make (name, value), for the function's
    /// transaction; also for a benchmark's bare statement, which must be planned the same.
    pub fn plan_settings(self) -> impl Iterator<Item = (&'static str, &'static str)> {
        let pinned = [
            ("plan_cache_mode", "force_generic_plan"),
            ("enable_seqscan", "off"),
        ];
        let ordered = [("enable_bitmapscan", "off")];
        pinned
            .into_iter()
            .filter(move |_| self.pinned_plan)
            .chain(ordered.into_iter().filter(move |_| self.index_order))
    }
}

/// How a statement's function returns what the statement returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Returns {
    /// At most one row (a statement that reaches one task by its id, or one row by
    /// construction): the row as one `record` value, the function called in the select list
    /// (`SELECT f(…)`). A function returning a set is a table function, which Postgres runs
    /// through a scan node of its own and a tuple store (callgrind of a backend serving one
    /// connection in binary, per call: get 100,382 → 92,767, toggle 176,638 → 172,297).
    Row,
    /// Any number of rows (a listing's page): a set of the columns' composite type
    /// ([`RowType`]), the function called as a table (`SELECT * FROM f(…)`), so that the
    /// client reads plain columns. (A listing as one row, its page an array of records,
    /// made the statement itself dearer than the table function: 31 → 39 µs per bare call.)
    Rows,
}

/// The context every function takes after the statement's own parameters: the user the
/// policies compare with, the request's deadline (a wall-clock time), the most a lock may be
/// waited for (a `lock_timeout` value such as `4985ms`: the time left when the call was
/// sent, at most the statement timeout), and the call itself ([`Procedure::call_name`]): the
/// name of the function the client means, which also says whether to switch to `todo_app`
/// (when the login role bypasses row-level security).
pub const CONTEXT_TYPES: [Type; 4] = [Type::TEXT, Type::TIMESTAMPTZ, Type::TEXT, Type::TEXT];

/// The message of the error a function raises, before anything else, when the call names
/// another function (SQLSTATE 26000, `invalid_sql_statement_name`, as Postgres's own "prepared
/// statement does not exist"). That happens only through a pooler in transaction mode that
/// does not keep prepared statements (PgBouncer before 1.21, or `max_prepared_statements =
/// 0`): tokio-postgres names statements `s0`, `s1`, … in each process, so two function
/// processes use the same names for different calls, and a pooler that passes names through
/// lets a call's Bind reach the statement another process prepared on that server
/// connection. Without this check a `DELETE` ran the get's statement and was answered 204
/// with nothing deleted (tests/system/test_statement_names.py).
pub const WRONG_STATEMENT: &str = "wrong-statement";

/// The message of the error a function raises when it starts after the request's deadline
/// (SQLSTATE 57014, as for a cancelled statement).
pub const DEADLINE_PASSED: &str = "deadline-passed";

/// One task statement and the function that runs it.
#[derive(Debug, Clone)]
pub struct Procedure {
    /// The statement's SQL, with parameters `$1`..`$n`.
    pub sql: String,
    /// The statement's parameter types.
    pub types: Vec<Type>,
    /// What the function sets up before the statement.
    pub guards: Guards,
    /// One row or a set.
    pub returns: Returns,
    call_types: Vec<Type>,
    /// The schema-qualified name of the function.
    pub name: String,
    /// The name, and that the function is to switch to `todo_app` ([`Procedure::call_name`]).
    name_as_app_role: String,
    /// What the client sends: the function called with the statement's parameters and the
    /// context's, in the select list for [`Returns::Row`] (the one value is the
    /// statement's row, [`crate::record`]), as a table for [`Returns::Rows`].
    pub call: String,
}

impl Procedure {
    /// The procedure of a statement that returns at most one row.
    pub fn new(sql: &str, types: &[Type], guards: Guards) -> Self {
        Procedure::returning(sql, types, guards, Returns::Row)
    }

    /// The procedure of a statement that returns as `returns` says.
    pub fn returning(sql: &str, types: &[Type], guards: Guards, returns: Returns) -> Self {
        let mut hash = Sha256::new();
        hash.update(TEMPLATE_VERSION);
        hash.update([
            0,
            u8::from(guards.deadline),
            u8::from(guards.pinned_plan),
            u8::from(guards.index_order),
            u8::from(returns == Returns::Rows),
            0,
        ]);
        hash.update(sql);
        for ty in types {
            hash.update([0]);
            hash.update(type_sql(ty));
        }
        let name = format!("{SCHEMA}.q_{}", hex(&hash.finalize()[..10]));
        let arguments: Vec<String> = (1..=types.len() + CONTEXT_TYPES.len())
            .map(|n| format!("${n}"))
            .collect();
        let call = match returns {
            Returns::Row => format!("SELECT {name}({})", arguments.join(", ")),
            Returns::Rows => format!("SELECT * FROM {name}({})", arguments.join(", ")),
        };
        Procedure {
            sql: sql.to_owned(),
            types: types.to_vec(),
            guards,
            returns,
            call_types: types.iter().chain(&CONTEXT_TYPES).cloned().collect(),
            name_as_app_role: format!("{name} as {}", crate::db::APP_ROLE),
            name,
            call,
        }
    }

    /// The last context value of a call ([`CONTEXT_TYPES`]): the function's name, followed by
    /// ` as todo_app` when it is to switch to that role. The function refuses any other
    /// value first ([`WRONG_STATEMENT`]), so a call that reaches another function's statement
    /// does nothing; the one `IF` also carries the switch, set up only when taken.
    pub fn call_name(&self, switch_role: bool) -> &str {
        if switch_role {
            &self.name_as_app_role
        } else {
            &self.name
        }
    }

    /// The types of the call's parameters: the statement's, then [`CONTEXT_TYPES`].
    pub fn call_types(&self) -> &[Type] {
        &self.call_types
    }

    /// `CREATE FUNCTION` for this statement, whose result `columns` are as Postgres describes
    /// them (every statement of the API has some).
    ///
    /// The function, in the caller's implicit transaction:
    /// - first refuses a call meant for another function ([`WRONG_STATEMENT`]), before it
    ///   does anything, and switches to `todo_app` when the call says so
    ///   ([`Procedure::call_name`]);
    /// - for a write ([`Guards::deadline`]), refuses to start after the deadline (a request
    ///   queued in a pooler past it);
    /// - sets `app.user_id`;
    /// - for a write, bounds lock waits by the time that was left when the call was sent
    ///   (`lock_timeout`: `statement_timeout` cannot be changed for the statement already
    ///   running, the call itself). A call that waited in a pooler's queue may so wait for
    ///   a lock past its deadline, by at most its time in the queue; the client cancels a
    ///   call that outlives the deadline, and the answer to the cancel tells that nothing
    ///   was written (a cancel cannot reach a call still queued in a pooler, which is then
    ///   answered as unknown, though it can only be refused by the check above or dropped
    ///   with the connection);
    /// - for a write, commits as durably as `synchronous_commit = on` at least: a session
    ///   setting another client left on a pooled server connection (PgBouncer in transaction
    ///   mode resets nothing between clients), or a role's or database's default, of `off`,
    ///   `local` or `remote_write` would otherwise answer 2xx for a commit that a crash of
    ///   the server can still lose. A stronger `remote_apply` stays;
    /// - for a write, hears Postgres's warning that its commit's wait for a synchronous
    ///   standby was cancelled ([`crate::db`] closes the connection on it: the outcome is
    ///   then unknown): a `client_min_messages` of `error` (a role's, a database's, or a
    ///   session's that another client left) would hold the warning back, and is lowered
    ///   to `warning` for the transaction;
    /// - for a listing ([`Guards::pinned_plan`]), plans the statement once per connection,
    ///   from the table's average statistics (`plan_cache_mode = force_generic_plan`), and
    ///   never with a sequential scan of the table (`enable_seqscan = off`; the listing
    ///   reaches its rows through the owner's index). Left to choose, Postgres plans the
    ///   listing anew at every call as soon as a few users hold a large share of the table
    ///   (their tasks make the average look worse than any one user's), which cost the list
    ///   two to three times its Postgres CPU per request in the benchmark; and with only a
    ///   handful of users, the average plan scans the whole table. So a request costs in
    ///   proportion to its own user's rows;
    /// - runs the statement and returns what it returns ([`Returns`]): its row as one
    ///   `record` (`SELECT … INTO`; a row of NULLs when there is none,
    ///   [`crate::record::Record::is_no_row`]), or its rows as a set of the columns'
    ///   composite type ([`RowType`], which `migrate` creates first; `RETURN QUERY`).
    ///
    /// `SECURITY INVOKER`: the statement runs as the caller (or `todo_app`), under the
    /// policies. The settings are `set_config(…, true)`: they end with the transaction. A
    /// read's function is `STABLE`: its statement runs in the call's snapshot, without one
    /// of its own.
    ///
    /// The forms are the cheapest of equivalent ones (`valgrind --tool=callgrind`,
    /// BENCHMARKS.md). One value where there is one row ([`Returns`]); a set as a named
    /// composite type, whose descriptor Postgres keeps in its type cache, where `RETURNS
    /// TABLE(…)` has it rebuilt from the function's catalog entry at every call. The
    /// settings are one PL/pgSQL assignment (one `set_config`, or an array of their results),
    /// which PL/pgSQL evaluates as a simple expression, where `PERFORM` would start an
    /// executor for a one-row `SELECT` through SPI. Every expression is set up anew in every
    /// transaction, each function in it looked up and its privilege checked, whether it runs
    /// or not. So the deadline is one comparison of timestamps and the lock timeout arrives
    /// ready: computing both from the clock in the function cost a toggle 8,851 instructions
    /// more (172,297 against 163,446), and the settings joined with `||` 1,057 more than the
    /// array; an array of one setting costs 1,840 more than the setting alone (get, 97,140
    /// against 95,300). And the role switch is a branch of its own, whose `set_config`
    /// PL/pgSQL sets up only when the branch is taken: as a `CASE` inside the settings' array,
    /// the switch not taken cost the get 856 instructions more in every transaction (97,996
    /// against 97,140, logged in as a role subject to row-level security). Since template 12
    /// that branch sits inside the `IF` that checks the call's name ([`Procedure::call_name`]),
    /// so the check costs no expression of its own: a separate `IF` for it cost the get 3,250
    /// instructions (98,190 against 94,940).
    pub fn definition(&self, columns: &[(String, Type)]) -> String {
        let mut parameters: Vec<String> = self
            .types
            .iter()
            .enumerate()
            .map(|(i, ty)| format!("p{} {}", i + 1, qualified_type_sql(ty)))
            .collect();
        parameters.extend([
            "ctx_user pg_catalog.text".to_owned(),
            "ctx_deadline pg_catalog.timestamptz".to_owned(),
            "ctx_lock_timeout pg_catalog.text".to_owned(),
            "ctx_call pg_catalog.text".to_owned(),
        ]);
        let deadline = self.guards.deadline;
        let mut declare = vec!["ctx_role pg_catalog.text;"];
        // A statement without result columns (none of the API's) returns nothing.
        let (returns, run) = match (RowType::of(columns), self.returns) {
            (None, _) => ("pg_catalog.void".to_owned(), format!("    {};\n", self.sql)),
            (Some(_), Returns::Row) => {
                declare.push("ctx_row pg_catalog.record;");
                (
                    "pg_catalog.record".to_owned(),
                    format!(
                        "    {}\n        INTO ctx_row;\n    RETURN ctx_row;\n",
                        self.sql
                    ),
                )
            }
            (Some(row), Returns::Rows) => (
                format!("SETOF {}", row.name),
                format!("    RETURN QUERY {};\n", self.sql),
            ),
        };
        let mut check = format!(
            "    IF ctx_call IS DISTINCT FROM '{name}' THEN\n        \
                 IF ctx_call = '{name_as_app_role}' THEN\n            \
                     ctx_role := set_config('role', '{role}', true);\n        \
                 ELSE\n            \
                     RAISE EXCEPTION '{WRONG_STATEMENT}' USING ERRCODE = 'invalid_sql_statement_name';\n        \
                 END IF;\n    \
             END IF;\n",
            name = self.name,
            name_as_app_role = self.name_as_app_role,
            role = crate::db::APP_ROLE,
        );
        let mut settings = vec!["set_config('app.user_id', ctx_user, true)".to_owned()];
        if deadline {
            check += &format!(
                "    IF clock_timestamp() >= ctx_deadline THEN\n        RAISE EXCEPTION '{DEADLINE_PASSED}' USING ERRCODE = 'query_canceled';\n    END IF;\n"
            );
            settings.push("set_config('lock_timeout', ctx_lock_timeout, true)".to_owned());
            declare.push("ctx_commit pg_catalog.text;");
            check += "    IF current_setting('synchronous_commit') IN ('off', 'local', 'remote_write') THEN\n        \
                          ctx_commit := set_config('synchronous_commit', 'on', true);\n    \
                      END IF;\n";
            check += "    IF current_setting('client_min_messages') = 'error' THEN\n        \
                          ctx_commit := set_config('client_min_messages', 'warning', true);\n    \
                      END IF;\n";
        }
        settings.extend(
            self.guards
                .plan_settings()
                .map(|(name, value)| format!("set_config('{name}', '{value}', true)")),
        );
        let settings = if let [setting] = &settings[..] {
            declare.push("ctx_set pg_catalog.text;");
            format!("    ctx_set := {setting};\n")
        } else {
            declare.push("ctx_set pg_catalog.text[];");
            format!(
                "    ctx_set := ARRAY[\n        {}\n    ];\n",
                settings.join(",\n        ")
            )
        };
        let volatility = if deadline { "VOLATILE" } else { "STABLE" };
        format!(
            "CREATE OR REPLACE FUNCTION {name}({parameters})\n\
             RETURNS {returns}\n\
             LANGUAGE plpgsql {volatility} SECURITY INVOKER\n\
             AS $procedure$\n\
             #variable_conflict use_column\n\
             DECLARE\n\
             \x20   {declare}\n\
             BEGIN\n\
             {check}\
             {settings}\
             {run}\
             END\n\
             $procedure$",
            name = self.name,
            parameters = parameters.join(", "),
            declare = declare.join("\n    "),
        )
    }
}

/// The composite type a statement's function returns its rows as: named after a hash of
/// the columns (names and types), so statements with the same columns share one, and a
/// changed column list is a new type, never a change to one a running function returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowType {
    /// The schema-qualified name of the type.
    pub name: String,
    /// Creates the type unless it exists, also when another session creates it at the same
    /// moment (whose `CREATE TYPE` commits first: this one then fails on the catalog's
    /// unique index, and the error is caught).
    pub definition: String,
}

impl RowType {
    /// The type of `columns`; none for a statement without result columns.
    pub fn of(columns: &[(String, Type)]) -> Option<RowType> {
        if columns.is_empty() {
            return None;
        }
        let mut hash = Sha256::new();
        // A new series of names: the types named before it have the length domains as their
        // text columns' types (migration V4), where this release's statements return text.
        hash.update(ROW_TYPE_SERIES);
        let attributes: Vec<String> = columns
            .iter()
            .map(|(column, ty)| {
                hash.update(column);
                hash.update([0]);
                hash.update(type_sql(ty));
                hash.update([0]);
                format!("{} {}", quote_ident(column), qualified_type_sql(ty))
            })
            .collect();
        let name = format!("{SCHEMA}.r_{}", hex(&hash.finalize()[..10]));
        let definition = format!(
            "DO $row_type$ BEGIN CREATE TYPE {name} AS ({}); \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $row_type$",
            attributes.join(", ")
        );
        Some(RowType { name, definition })
    }
}

/// The procedures of every task statement ([`crate::repo::statements`]), by SQL.
static PROCEDURES: LazyLock<HashMap<&'static str, Procedure>> = LazyLock::new(|| {
    crate::repo::statements()
        .into_iter()
        .map(|(sql, types, guards, returns)| {
            (sql, Procedure::returning(sql, &types, guards, returns))
        })
        .collect()
});

/// The same procedures by the address and length of their SQL: the repository passes its
/// statements as the `&'static str` listed, which are found without hashing their text
/// (up to 1,500 bytes) on every request.
static BY_ADDRESS: LazyLock<HashMap<(usize, usize), &'static Procedure>> = LazyLock::new(|| {
    PROCEDURES
        .iter()
        .map(|(sql, procedure)| ((sql.as_ptr() as usize, sql.len()), procedure))
        .collect()
});

/// Every task statement's procedure, for `migrate`.
pub fn all() -> impl Iterator<Item = &'static Procedure> {
    PROCEDURES.values()
}

/// The procedure of a statement: one of [`crate::repo::statements`] (worked out once), or
/// any other (worked out on each call, with [`Guards::ALL`], returning at most its first
/// row; its function exists only where something installed it, as the row-level security
/// tests do).
pub fn for_statement(sql: &str, types: &[Type]) -> Cow<'static, Procedure> {
    let types = types.iter();
    for_statement_typed(sql, types)
}

/// [`for_statement`], with the types as they come (no vector built per request).
pub fn for_statement_typed<'a>(
    sql: &str,
    types: impl Iterator<Item = &'a Type> + Clone,
) -> Cow<'static, Procedure> {
    let known = BY_ADDRESS
        .get(&(sql.as_ptr() as usize, sql.len()))
        .copied()
        .or_else(|| PROCEDURES.get(sql));
    match known {
        Some(procedure) if procedure.types.iter().eq(types.clone()) => Cow::Borrowed(procedure),
        _ => Cow::Owned(Procedure::new(
            sql,
            &types.cloned().collect::<Vec<_>>(),
            Guards::ALL,
        )),
    }
}

/// `bytes` in lowercase hex (the names' digests).
pub fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A type as SQL: arrays as `element[]`.
fn type_sql(ty: &Type) -> String {
    match ty.kind() {
        Kind::Array(element) => format!("{}[]", element.name()),
        _ => ty.name().to_owned(),
    }
}

/// [`type_sql`] with its schema, as the definitions spell types out: a temporary type of
/// the same name (`pg_temp` is searched first for types) must not take it over.
fn qualified_type_sql(ty: &Type) -> String {
    match ty.kind() {
        Kind::Array(element) => format!("{}.{}[]", element.schema(), element.name()),
        _ => format!("{}.{}", ty.schema(), ty.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_statement_and_its_types() {
        let a = Procedure::new("SELECT $1", &[Type::TEXT], Guards::ALL);
        let b = Procedure::new("SELECT $1", &[Type::INT8], Guards::ALL);
        let c = Procedure::new("SELECT $1 ", &[Type::TEXT], Guards::ALL);
        let d = Procedure::new("SELECT $1", &[Type::TEXT], Guards::READ);
        assert_ne!(a.name, b.name);
        assert_ne!(a.name, c.name);
        assert_ne!(a.name, d.name);
        assert_eq!(
            a.name,
            Procedure::new("SELECT $1", &[Type::TEXT], Guards::ALL).name
        );
        assert_eq!(a.call, format!("SELECT {}($1, $2, $3, $4, $5)", a.name));
        assert_eq!(type_sql(&Type::INT8_ARRAY), "int8[]");
    }

    /// A database keeps the functions it has (by name); a changed template must therefore
    /// change every name, through [`TEMPLATE_VERSION`]. When this fails after a change to
    /// [`Procedure::definition`], bump the version and then update the digest here.
    #[test]
    fn the_template_changes_only_with_its_version() {
        let mut hash = Sha256::new();
        for guards in [
            Guards::READ,
            Guards::LIST,
            Guards::LIST_IN_INDEX_ORDER,
            Guards::WRITE,
            Guards::ALL,
        ] {
            for returns in [Returns::Row, Returns::Rows] {
                let procedure =
                    Procedure::returning("SELECT $1 AS a", &[Type::TEXT], guards, returns);
                let definition = procedure.definition(&[("a".to_owned(), Type::TEXT)]);
                hash.update(definition.replace(&procedure.name, "f"));
            }
        }
        let digest = hex(&hash.finalize());
        assert_eq!(
            (TEMPLATE_VERSION, digest.as_str()),
            (
                "15",
                "46dd33746c2ba5d48bc53429c3de65c2c48d2a72d1ec41a0ff2ba628876675bd"
            ),
            "the function template changed: bump TEMPLATE_VERSION"
        );
    }

    /// Each function sets up what its statement needs, and no more: every write refuses a
    /// late start and bounds its lock waits; only the listings (and the keyed create's
    /// purge) pin their plans.
    #[test]
    fn each_function_guards_what_its_statement_needs() {
        for procedure in all() {
            let definition = procedure.definition(&[("a".to_owned(), Type::TEXT)]);
            let writes = ["INSERT ", "UPDATE ", "DELETE "]
                .iter()
                .any(|verb| procedure.sql.contains(verb));
            assert_eq!(procedure.guards.deadline, writes, "{}", procedure.sql);
            assert_eq!(definition.contains(DEADLINE_PASSED), writes);
            assert_eq!(definition.contains("'lock_timeout'"), writes);
            assert_eq!(
                definition.contains(
                    "    IF current_setting('synchronous_commit') IN ('off', 'local', 'remote_write') THEN\n        ctx_commit := set_config('synchronous_commit', 'on', true);\n    END IF;\n"
                ),
                writes,
                "{definition}"
            );
            assert_eq!(
                definition.contains(
                    "    IF current_setting('client_min_messages') = 'error' THEN\n        ctx_commit := set_config('client_min_messages', 'warning', true);\n    END IF;\n"
                ),
                writes,
                "{definition}"
            );
            let lists = procedure.sql.contains(" LIMIT $4 OFFSET $5");
            let purges = procedure.sql.contains("purge AS");
            assert_eq!(
                procedure.guards.pinned_plan,
                lists || purges,
                "{}",
                procedure.sql
            );
            assert_eq!(definition.contains("force_generic_plan"), lists || purges);
            assert_eq!(
                definition.contains("'enable_seqscan', 'off'"),
                lists || purges
            );
            assert!(definition.contains("set_config('app.user_id', ctx_user, true)"));
            let in_index_order = procedure.sql.contains("WITH matched AS NOT MATERIALIZED");
            assert_eq!(procedure.guards.index_order, in_index_order);
            assert_eq!(
                definition.contains("'enable_bitmapscan', 'off'"),
                in_index_order
            );
        }
        assert_eq!(all().filter(|p| p.guards == Guards::LIST).count(), 6);
        assert_eq!(
            all()
                .filter(|p| p.guards == Guards::LIST_IN_INDEX_ORDER)
                .count(),
            2
        );
        assert_eq!(all().filter(|p| p.guards == Guards::READ).count(), 1);
    }

    /// The settings are one assignment, never `PERFORM` (an executor per call), and the role
    /// switch is a branch that costs nothing when not taken; a statement of one row returns
    /// it as one `record`, never as a set (a table function: a scan node and a tuple store);
    /// a listing returns its rows as the columns' composite type, never `TABLE(…)` (a
    /// descriptor built per call).
    #[test]
    fn functions_take_the_cheaper_forms() {
        let columns = [
            ("id".to_owned(), Type::UUID),
            ("title".to_owned(), Type::TEXT),
        ];
        let row = RowType::of(&columns).expect("columns make a type");
        for procedure in all() {
            let definition = procedure.definition(&columns);
            assert!(!definition.contains("PERFORM"), "{definition}");
            assert!(!definition.contains("TABLE("), "{definition}");
            let lists = procedure.sql.contains(" LIMIT $4 OFFSET $5");
            assert_eq!(procedure.returns == Returns::Rows, lists, "{definition}");
            if lists {
                assert!(
                    definition.contains(&format!("RETURNS SETOF {}\n", row.name)),
                    "{definition}"
                );
                assert!(definition.contains("    RETURN QUERY "), "{definition}");
                assert!(procedure.call.starts_with("SELECT * FROM todo_api.q_"));
            } else {
                assert!(
                    definition.contains("RETURNS pg_catalog.record\n"),
                    "{definition}"
                );
                assert!(!definition.contains("SETOF"), "{definition}");
                assert!(
                    definition.contains(&format!(
                        "    {}\n        INTO ctx_row;\n    RETURN ctx_row;\n",
                        procedure.sql
                    )),
                    "{definition}"
                );
                assert!(procedure.call.starts_with("SELECT todo_api.q_"));
            }
            // Before anything else, one `IF` on the call's name: a call meant for another
            // function is refused, and the role switch is a branch set up only when taken.
            let first = format!(
                "BEGIN\n    IF ctx_call IS DISTINCT FROM '{name}' THEN\n        IF ctx_call = '{name} as todo_app' THEN\n            ctx_role := set_config('role', 'todo_app', true);\n        ELSE\n            RAISE EXCEPTION '{WRONG_STATEMENT}' USING ERRCODE = 'invalid_sql_statement_name';\n        END IF;\n    END IF;\n",
                name = procedure.name
            );
            assert!(definition.contains(&first), "{definition}");
            assert_eq!(procedure.call_name(false), procedure.name);
            assert_eq!(
                procedure.call_name(true),
                format!("{} as todo_app", procedure.name)
            );
            assert!(!definition.contains("CASE WHEN ctx_"), "{definition}");
            // One assignment for the settings: the one setting of a read of one row as it
            // is, several as an array.
            assert_eq!(definition.matches("ctx_set :=").count(), 1, "{definition}");
            let alone = procedure.guards == Guards::READ;
            assert_eq!(
                definition.contains("    ctx_set := set_config('app.user_id', ctx_user, true);\n"),
                alone,
                "{definition}"
            );
            assert_eq!(
                definition.contains(
                    "    ctx_set := ARRAY[\n        set_config('app.user_id', ctx_user, true),\n"
                ),
                !alone,
                "{definition}"
            );
            // The `IF`s: the call's name, the role switch inside it, and a write's deadline,
            // its commit's durability and its commit's warnings.
            assert_eq!(
                definition.matches("IF ").count(),
                2 + 3 * usize::from(procedure.guards.deadline),
                "{definition}"
            );
            // The deadline is compared as it came, the lock timeout set as it came: no
            // arithmetic on the clock.
            assert!(!definition.contains("extract("), "{definition}");
            assert!(!definition.contains("date_part("), "{definition}");
            assert_eq!(
                definition.contains("IF clock_timestamp() >= ctx_deadline THEN"),
                procedure.guards.deadline,
                "{definition}"
            );
            assert_eq!(
                definition.contains("set_config('lock_timeout', ctx_lock_timeout, true)"),
                procedure.guards.deadline,
                "{definition}"
            );
            // Reads run in the call's snapshot.
            let volatility = if procedure.guards.deadline {
                "VOLATILE"
            } else {
                "STABLE"
            };
            assert!(
                definition.contains(&format!("LANGUAGE plpgsql {volatility} SECURITY INVOKER")),
                "{definition}"
            );
        }
        let nothing = Procedure::new("DELETE FROM t", &[], Guards::ALL).definition(&[]);
        assert!(nothing.contains("RETURNS pg_catalog.void\n"), "{nothing}");
        assert!(!nothing.contains("INTO ctx_row"), "{nothing}");
    }

    /// Every type name the statements and their functions spell out carries its schema
    /// (`pg_temp`, searched first for types, must not take one over), the listings' filters
    /// and the `If-Match` writes too, which no test through a pooler calls.
    #[test]
    fn every_type_name_carries_its_schema() {
        const BUILT_IN: [&str; 9] = [
            "text",
            "record",
            "uuid",
            "timestamptz",
            "int8",
            "bool",
            "bytea",
            "void",
            "regrole",
        ];
        let columns = [("id".to_owned(), Type::UUID), ("n".to_owned(), Type::INT8)];
        for procedure in all() {
            let definition = procedure.definition(&columns);
            let row = RowType::of(&columns).expect("a row type").definition;
            for sql in [&procedure.sql, &definition, &row] {
                let unqualified: Vec<&str> = sql
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                    .filter(|word| BUILT_IN.contains(word))
                    .collect();
                assert!(unqualified.is_empty(), "{unqualified:?} in {sql}");
            }
        }
    }

    /// Statements with the same columns share a type; any other column list is another.
    #[test]
    fn row_types_follow_the_columns() {
        let row = |columns: &[(&str, Type)]| {
            let columns: Vec<(String, Type)> = columns
                .iter()
                .map(|(name, ty)| ((*name).to_owned(), ty.clone()))
                .collect();
            RowType::of(&columns)
        };
        let a = row(&[("id", Type::UUID), ("title", Type::TEXT)]).unwrap();
        assert!(a.name.starts_with("todo_api.r_"));
        assert!(
            a.definition.contains(&format!(
                "CREATE TYPE {} AS (\"id\" pg_catalog.uuid, \"title\" pg_catalog.text);",
                a.name
            )),
            "{}",
            a.definition
        );
        assert_eq!(
            Some(&a),
            row(&[("id", Type::UUID), ("title", Type::TEXT)]).as_ref()
        );
        for other in [
            row(&[("id", Type::UUID), ("title", Type::VARCHAR)]),
            row(&[("id", Type::UUID), ("name", Type::TEXT)]),
            row(&[("title", Type::TEXT), ("id", Type::UUID)]),
            row(&[("id", Type::UUID)]),
            row(&[("idt", Type::TEXT), ("itle", Type::TEXT)]),
        ] {
            assert_ne!(other.unwrap().name, a.name);
        }
        assert_eq!(row(&[]), None);
    }

    /// The repository's statements, as its methods pass them, are found by their address
    /// (no hashing of their text per request).
    #[test]
    fn the_repositorys_statements_are_found_by_address() {
        use crate::listing::{SortField, SortOrder};
        use crate::repo;
        let by_address = |sql: &str| BY_ADDRESS.contains_key(&(sql.as_ptr() as usize, sql.len()));
        for sql in [
            repo::INSERT,
            repo::SELECT_ONE,
            repo::UPDATE,
            repo::COMPLETE,
            repo::DELETE,
            repo::CREATE_IDEMPOTENT,
            repo::list_statement(SortField::CreatedAt, SortOrder::Desc, false),
            repo::list_statement(SortField::Title, SortOrder::Asc, true),
        ] {
            assert!(by_address(sql), "{sql}");
        }
        // Any other text of the same SQL is found by its text.
        let copy = repo::SELECT_ONE.to_owned();
        assert!(!by_address(&copy));
        assert!(matches!(
            for_statement(&copy, &[Type::UUID, Type::TEXT]),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn every_statement_has_a_procedure() {
        assert!(all().count() >= 15);
        for procedure in all() {
            assert!(procedure.name.starts_with("todo_api.q_"));
            assert!(matches!(
                for_statement(&procedure.sql, &procedure.types),
                Cow::Borrowed(_)
            ));
        }
    }
}

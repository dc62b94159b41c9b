//! A pooled connection that sat idle (a Lambda instance frozen between invocations) may have
//! been forgotten on the way without the function hearing of it: a NAT gateway times it out
//! (350 s on AWS) and answers its next packet with a reset, Neon's compute suspends after
//! its idle minutes, a path loses its state and answers nothing. A request must not be the
//! one to find out: a write sent on such a connection has an unknown outcome (504), and a
//! read waits for its deadline. A connection idle for `DB_IDLE_CHECK_AFTER_MS` is checked
//! with one Sync round trip before use, and replaced if that fails.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tests::proxy::{FlightCounter, Forget, Forgetter};
use tests::{database_url, env, state_with, user_id, ApiEvent};

use crate::{create_titled, id_of, task_path, tasks_path};

/// The check's threshold in these tests, and a pause that exceeds it. (A second: requests
/// meant to come within it do, even on a loaded machine.)
const IDLE_CHECK_AFTER_MS: &str = "1000";
const IDLE: Duration = Duration::from_millis(1500);

/// The JSON log lines of this thread while captured, as the functions write them (the tests
/// run on a current-thread runtime, so the handler logs on the test's thread).
#[derive(Clone, Default)]
pub(crate) struct Logs(Arc<Mutex<Vec<u8>>>);

thread_local! {
    /// Where this thread's log lines go while a [`Logs::capture`] lasts.
    static CAPTURING: std::cell::RefCell<Option<Logs>> = const { std::cell::RefCell::new(None) };
}

/// Ends a capture.
pub(crate) struct Capture;

impl Drop for Capture {
    fn drop(&mut self) {
        CAPTURING.with(|capturing| capturing.borrow_mut().take());
    }
}

/// Writes one line to the capture of the thread that logs it, if any.
struct ThreadSink;

impl std::io::Write for ThreadSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURING.with(|capturing| {
            if let Some(logs) = capturing.borrow().as_ref() {
                logs.0.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// One global subscriber for the whole test binary, routing each line to its thread's
    /// capture. Not a scoped one (`set_default`): tracing caches each log call site's
    /// interest globally, and with a single scoped subscriber alive it computes a call
    /// site's interest from the default of whichever thread registers it, so a request line
    /// could be dropped here while other tests ran (seen about once in seven full runs).
    pub(crate) fn capture(&self) -> Capture {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| {
            tracing::subscriber::set_global_default(shared::telemetry::json_logs("info", || {
                ThreadSink
            }))
            .expect("no other global subscriber in the API tests");
        });
        CAPTURING.with(|capturing| *capturing.borrow_mut() = Some(self.clone()));
        Capture
    }

    pub(crate) fn lines(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

/// A state whose connections go through a [`Forgetter`] in front of `url`'s server.
async fn forgetful_state(url: &str, extra: &[(&str, &str)]) -> (Forgetter, shared::AppState) {
    let (_, upstream) = tests::through_port(url, 0);
    let forgetter = Forgetter::start(upstream).await;
    let (proxied, _) = tests::through_port(url, forgetter.port);
    let mut vars = vec![
        ("DATABASE_URL", proxied.as_str()),
        ("DB_POOL_SIZE", "1"),
        ("DB_IDLE_CHECK_AFTER_MS", IDLE_CHECK_AFTER_MS),
    ];
    vars.extend_from_slice(extra);
    (forgetter, state_with(env(&vars)))
}

/// Behind PgBouncer in transaction mode, as on Neon: the check's Sync goes through the
/// pooler too.
#[tokio::test(flavor = "current_thread")]
async fn a_write_on_a_connection_reset_while_idle_is_applied_not_a_504() {
    let pooler = crate::pooler::topology().1.url();
    let (forgetter, state) = forgetful_state(&pooler, &[("DB_PREPARED_STATEMENTS", "false")]).await;
    let user = user_id();
    let id = id_of(&create_titled(&state, &user, "before").await);
    forgetter.forget(Forget::Reset);
    tokio::time::sleep(IDLE).await;
    let logs = Logs::default();
    let response = {
        let _capture = logs.capture();
        ApiEvent::put(&task_path(&user, &id))
            .as_user(&user)
            .json(&json!({"title": "after"}))
            .send(&state)
            .await
    };
    assert_eq!(
        forgetter.hits(),
        1,
        "the forgotten connection was tried once"
    );
    response.assert_status(200);
    // One line for the request, which says why it took a reconnect.
    let lines = logs.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        lines[0]["database"],
        "an idle connection failed its check and was replaced"
    );
    let stored = crate::get(&state, &user, &id).await.json();
    assert_eq!(stored["title"], "after");
}

/// A connection that answers nothing costs the check's second, not the statement's
/// deadline and a cancel (here 5 s + 1.5 s, then a 504).
#[tokio::test(flavor = "current_thread")]
async fn a_read_on_a_connection_silent_since_it_was_idle_is_answered_within_the_check() {
    let (forgetter, state) = forgetful_state(database_url(), &[]).await;
    let user = user_id();
    create_titled(&state, &user, "listed").await;
    forgetter.forget(Forget::Silently);
    tokio::time::sleep(IDLE).await;
    let started = Instant::now();
    let response = ApiEvent::get(&tasks_path(&user))
        .as_user(&user)
        .send(&state)
        .await;
    let took = started.elapsed();
    assert_eq!(
        forgetter.hits(),
        1,
        "the forgotten connection was tried once"
    );
    response.assert_status(200);
    assert_eq!(response.json().as_array().map(Vec::len), Some(1));
    assert!(took < Duration::from_millis(3000), "took {took:?}");
}

/// With several pooled connections, as on Lambda Managed Instances, what silenced one has
/// silenced the others idle as long: one failed check drops them all, rather than a
/// second's check each (4 s here before).
#[tokio::test(flavor = "current_thread")]
async fn after_one_failed_check_the_connections_idle_as_long_are_dropped_unchecked() {
    let base = database_url();
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}application_name=idle_four");
    let (forgetter, state) = forgetful_state(&url, &[("DB_POOL_SIZE", "4")]).await;
    let user = user_id();
    let list = || async {
        ApiEvent::get(&tasks_path(&user))
            .as_user(&user)
            .send(&state)
            .await
    };
    let (a, b, c, d) = tokio::join!(list(), list(), list(), list());
    for response in [a, b, c, d] {
        response.assert_status(200);
    }
    let admin = shared::db::connect_once(database_url(), None, Duration::from_secs(10))
        .await
        .unwrap();
    let pooled: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'idle_four'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pooled, 4, "four connections pooled");
    forgetter.forget(Forget::Silently);
    tokio::time::sleep(IDLE).await;
    let started = Instant::now();
    list().await.assert_status(200);
    let took = started.elapsed();
    assert_eq!(
        forgetter.hits(),
        1,
        "one failed check, then the other three dropped unchecked"
    );
    assert!(took < Duration::from_millis(2500), "took {took:?}");
}

/// The check costs one round trip, and only after the pause: a warm connection still
/// serves a request in one. A check that passes keeps the connection (a reconnect would
/// take several more flights), directly and through both poolers: the Sync goes through
/// PgBouncer 1.18, and through 1.24 (Neon's kind, which keeps prepared statements).
#[tokio::test(flavor = "current_thread")]
async fn only_a_connection_idle_past_the_threshold_is_checked() {
    let direct = database_url().to_owned();
    let pgbouncer = crate::pooler::topology().1.url();
    let keeping = crate::pooler::prepared_topology().1.url();
    for (url, prepared) in [(direct, "true"), (pgbouncer, "false"), (keeping, "true")] {
        let (_, upstream) = tests::through_port(&url, 0);
        let proxy = FlightCounter::start(upstream).await;
        let (proxied, _) = tests::through_port(&url, proxy.port);
        let state = state_with(env(&[
            ("DATABASE_URL", proxied.as_str()),
            ("DB_POOL_SIZE", "1"),
            ("DB_PREPARED_STATEMENTS", prepared),
            ("DB_IDLE_CHECK_AFTER_MS", IDLE_CHECK_AFTER_MS),
        ]));
        let user = user_id();
        let list = || ApiEvent::get(&tasks_path(&user)).as_user(&user);
        list().send(&state).await.assert_status(200);
        list().send(&state).await.assert_status(200);
        let flights = |before: usize| proxy.flights.load(Ordering::SeqCst) - before;
        let before = proxy.flights.load(Ordering::SeqCst);
        list().send(&state).await.assert_status(200);
        assert_eq!(flights(before), 1, "a warm request, {url}");
        tokio::time::sleep(IDLE).await;
        let before = proxy.flights.load(Ordering::SeqCst);
        list().send(&state).await.assert_status(200);
        assert_eq!(flights(before), 2, "the check, then the request, {url}");
    }
}

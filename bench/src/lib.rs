//! Helpers shared by the benchmark programs: statistics, tokens and API Gateway events.

use std::time::Duration;

use serde_json::Value;
use tests::ApiEvent;

/// Percentile (0–100) of durations, by nearest rank.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    assert!(!samples.is_empty());
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000_000.0
}

/// An HS256 token for `sub`, valid one hour (minted as `dev-token` does).
pub fn token(secret: &str, sub: &str) -> String {
    shared::auth::mint_hs256(secret, sub, 3600).expect("sign")
}

/// An API Gateway HTTP API (payload v2.0) event, built by the integration tests' builder;
/// `path_parameters` (an object) replaces the ones the route table gives.
pub fn event(
    method: &str,
    path: &str,
    query: &str,
    token: &str,
    body: Option<&Value>,
    path_parameters: Value,
) -> Value {
    let mut event = ApiEvent::new(method, path).query(query).bearer(token);
    if let Some(body) = body {
        event = event.json(body);
    }
    let mut event = event.to_json();
    event["pathParameters"] = path_parameters;
    event
}

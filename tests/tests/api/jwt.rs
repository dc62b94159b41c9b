//! The token matrix: what is refused (401) and what is accepted.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use tests::tokens::{self, claims, hs256, hs256_with, now, raw, signed};
use tests::{env, state, state_with, user_id, ApiEvent, ApiResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn list_with(state: &shared::AppState, user: &str, token: &str) -> ApiResponse {
    ApiEvent::get(&format!("/api/{user}/tasks"))
        .bearer(token)
        .send(state)
        .await
}

#[track_caller]
fn assert_401(response: &ApiResponse, case: &str) {
    assert_eq!(response.status, 401, "{case}: {}", response.text());
    assert!(
        response
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer"),
        "{case}"
    );
    assert!(response.detail().is_string(), "{case}");
}

fn jwks() -> Value {
    serde_json::from_str(include_str!("../../fixtures/jwks.json")).unwrap()
}

#[tokio::test]
async fn forged_expired_and_malformed_tokens_are_401() {
    let state = state();
    let user = user_id();
    let valid = tokens::token(&user);
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let ed_x = jwks()["keys"][0]["x"].as_str().unwrap().to_owned();
    let mut tampered: Vec<String> = valid.split('.').map(str::to_owned).collect();
    tampered[1] = raw(&json!({}), &claims(&user_id()), b"")
        .split('.')
        .nth(1)
        .unwrap()
        .into();
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            raw(&json!({"alg": "none", "typ": "JWT"}), &claims(&user), b""),
        ),
        (
            "alg none with signature",
            raw(&json!({"alg": "none"}), &claims(&user), b"sig"),
        ),
        (
            "HS256 signed with the JWKS public key (algorithm confusion)",
            tokens::hs256_forged(
                &json!({"alg": "HS256", "kid": "ed-1"}),
                &claims(&user),
                ed_x.as_bytes(),
            ),
        ),
        (
            "HS256 signed with the JWKS document",
            tokens::hs256_forged(&header, &claims(&user), jwks().to_string().as_bytes()),
        ),
        (
            "wrong secret",
            hs256_with("another-secret-0123456789abcdefghijklmnop", &claims(&user)),
        ),
        ("tampered payload", tampered.join(".")),
        (
            "expired beyond the leeway",
            hs256(&json!({"sub": user, "exp": now() - 31})),
        ),
        (
            "future nbf",
            hs256(&json!({"sub": user, "exp": now() + 600, "nbf": now() + 120})),
        ),
        (
            "future iat",
            hs256(&json!({"sub": user, "exp": now() + 600, "iat": now() + 120})),
        ),
        (
            "exp as a string",
            hs256(&json!({"sub": user, "exp": (now() + 600).to_string()})),
        ),
        (
            "nbf as a string",
            hs256(&json!({"sub": user, "exp": now() + 600, "nbf": "0"})),
        ),
        ("no exp", hs256(&json!({"sub": user}))),
        (
            "unknown kid",
            signed(
                Algorithm::EdDSA,
                "ed25519-rotated",
                Some("ed-2"),
                &claims(&user),
            ),
        ),
        (
            "known kid, wrong key",
            signed(
                Algorithm::EdDSA,
                "ed25519-rotated",
                Some("ed-1"),
                &claims(&user),
            ),
        ),
        (
            "kid of another algorithm",
            signed(Algorithm::EdDSA, "ed25519", Some("rs-1"), &claims(&user)),
        ),
        ("empty sub", hs256(&json!({"sub": "", "exp": now() + 600}))),
        (
            "numeric sub",
            hs256(&json!({"sub": 42, "exp": now() + 600})),
        ),
        ("no sub", hs256(&json!({"exp": now() + 600}))),
        ("garbage", "not.a.token".into()),
        ("two segments", "abc.def".into()),
    ];
    for (case, token) in cases {
        assert_401(&list_with(&state, &user, &token).await, case);
    }
    let long = "a".repeat(256);
    assert_401(
        &list_with(
            &state,
            &long,
            &hs256(&json!({"sub": long, "exp": now() + 600})),
        )
        .await,
        "over-long sub",
    );
}

#[tokio::test]
async fn a_missing_or_non_bearer_header_is_401() {
    let state = state();
    let user = user_id();
    let missing = ApiEvent::get(&format!("/api/{user}/tasks"))
        .send(&state)
        .await;
    assert_401(&missing, "missing");
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    assert_eq!(missing.text(), r#"{"detail":"Not authenticated"}"#);
    let basic = ApiEvent::get(&format!("/api/{user}/tasks"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send(&state)
        .await;
    assert_401(&basic, "basic");
}

#[tokio::test]
async fn valid_tokens_of_every_enabled_kind_are_accepted() {
    let state = state();
    let user = user_id();
    let ok: Vec<(&str, String)> = vec![
        ("HS256", tokens::token(&user)),
        (
            "EdDSA via JWKS",
            signed(Algorithm::EdDSA, "ed25519", Some("ed-1"), &claims(&user)),
        ),
        (
            "ES256 via JWKS",
            signed(Algorithm::ES256, "es256", Some("es-1"), &claims(&user)),
        ),
        (
            "RS256 via JWKS",
            signed(Algorithm::RS256, "rs256", Some("rs-1"), &claims(&user)),
        ),
        (
            "HS256 with aud and iss while none is configured",
            hs256(
                &json!({"sub": user, "exp": now() + 600, "aud": "http://localhost:3000", "iss": "http://localhost:3000"}),
            ),
        ),
        (
            "expired within the leeway",
            hs256(&json!({"sub": user, "exp": now() - 5})),
        ),
        (
            "Better Auth cookie-cache token with user.id and no sub",
            hs256(&json!({"user": {"id": user, "email": "a@example.com"}, "exp": now() + 600})),
        ),
    ];
    for (case, token) in ok {
        let response = list_with(&state, &user, &token).await;
        assert_eq!(response.status, 200, "{case}: {}", response.text());
    }
    let lower = ApiEvent::get(&format!("/api/{user}/tasks"))
        .header("authorization", &format!("bearer {}", tokens::token(&user)))
        .send(&state)
        .await;
    lower.assert_status(200);
    let longest = "é".repeat(255);
    let response = list_with(
        &state,
        &longest,
        &hs256(&json!({"sub": longest, "exp": now() + 600})),
    )
    .await;
    response.assert_status(200);
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let state = state_with(env(&[
        ("JWT_ISSUER", "https://auth.example.com"),
        ("JWT_AUDIENCE", "https://api.example.com,other"),
    ]));
    let user = user_id();
    let merged = |mut base: Value, extra: Value| {
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        base
    };
    let with = |extra: Value| merged(claims(&user), extra);
    // Better Auth's cookie-cache JWT (HS256): the user in `user`, no `sub`.
    let cookie_cache = |extra: Value| {
        hs256(&merged(
            json!({"user": {"id": user}, "exp": now() + 600}),
            extra,
        ))
    };
    let key_pair = |c: &Value| signed(Algorithm::EdDSA, "ed25519", Some("ed-1"), c);
    let good =
        with(json!({"iss": "https://auth.example.com", "aud": ["x", "https://api.example.com"]}));
    let good_str = with(json!({"iss": "https://auth.example.com", "aud": "other"}));
    for (case, token) in [
        ("HS256", hs256(&good)),
        ("HS256, aud a string", hs256(&good_str)),
        ("EdDSA", key_pair(&good)),
        ("EdDSA, aud a string", key_pair(&good_str)),
        // The cookie-cache JWT carries neither claim: checked only when present, or a
        // stack that also takes the jwt plugin's tokens would refuse it.
        (
            "HS256 cookie-cache token without iss and aud",
            cookie_cache(json!({})),
        ),
    ] {
        let response = list_with(&state, &user, &token).await;
        assert_eq!(response.status, 200, "{case}: {}", response.text());
    }
    let wrong_issuer = with(json!({"iss": "https://evil.example", "aud": "other"}));
    let wrong_audience = with(json!({"iss": "https://auth.example.com", "aud": "nope"}));
    let no_issuer = with(json!({"aud": "other"}));
    let no_audience = with(json!({"iss": "https://auth.example.com"}));
    for (case, token) in [
        ("HS256, wrong issuer", hs256(&wrong_issuer)),
        ("HS256, wrong audience", hs256(&wrong_audience)),
        // Only the cookie cache's shape (no `sub`) is let off the two claims.
        ("HS256 with a sub, no issuer", hs256(&no_issuer)),
        ("HS256 with a sub, no audience", hs256(&no_audience)),
        (
            "HS256, an audience that is not a string",
            hs256(&with(json!({"iss": "https://auth.example.com", "aud": 42}))),
        ),
        (
            "HS256, an issuer that is not a string",
            hs256(&with(json!({"iss": {}, "aud": "other"}))),
        ),
        (
            "cookie-cache shape, wrong audience",
            cookie_cache(json!({"aud": "nope"})),
        ),
        (
            "cookie-cache shape, an audience that is not a string",
            cookie_cache(json!({"aud": 42})),
        ),
        (
            "cookie-cache shape, an issuer that is not a string",
            cookie_cache(json!({"iss": ["https://auth.example.com", 1]})),
        ),
        ("EdDSA, wrong issuer", key_pair(&wrong_issuer)),
        ("EdDSA, wrong audience", key_pair(&wrong_audience)),
        ("EdDSA, no issuer", key_pair(&no_issuer)),
        ("EdDSA, no audience", key_pair(&no_audience)),
    ] {
        assert_401(&list_with(&state, &user, &token).await, case);
    }
}

#[tokio::test]
async fn only_configured_algorithms_are_accepted() {
    let user = user_id();
    let hs_only = state_with(env(&[("JWT_JWKS", "")]));
    let eddsa = signed(Algorithm::EdDSA, "ed25519", Some("ed-1"), &claims(&user));
    assert_401(
        &list_with(&hs_only, &user, &eddsa).await,
        "EdDSA without a JWKS",
    );
    let jwks_only = state_with(env(&[("BETTER_AUTH_SECRET", "")]));
    assert_401(
        &list_with(&jwks_only, &user, &tokens::token(&user)).await,
        "HS256 without a secret",
    );
    list_with(&jwks_only, &user, &eddsa)
        .await
        .assert_status(200);
}

/// A JWKS endpoint on 127.0.0.1 that counts its requests and keeps their heads; it serves
/// `document`, or redirects to `redirect_to` when that is set, and keeps connections alive.
/// With `no_length`, it sends the document without a length and closes the connection
/// after it.
struct JwksServer {
    url: String,
    hits: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
    document: Arc<Mutex<String>>,
    redirect_to: Arc<Mutex<Option<String>>>,
    no_length: Arc<AtomicBool>,
}

impl JwksServer {
    async fn start(document: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/auth/jwks", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let document = Arc::new(Mutex::new(document.to_owned()));
        let redirect_to = Arc::new(Mutex::new(None::<String>));
        let no_length = Arc::new(AtomicBool::new(false));
        let (h, hd, d, r, u) = (
            hits.clone(),
            heads.clone(),
            document.clone(),
            redirect_to.clone(),
            no_length.clone(),
        );
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (h, hd, d, r, u) = (h.clone(), hd.clone(), d.clone(), r.clone(), u.clone());
                // Keep-alive, as Better Auth's Node server: one connection serves every
                // request the client sends on it.
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        h.fetch_add(1, Ordering::SeqCst);
                        hd.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                        let body = d.lock().unwrap().clone();
                        let location = r.lock().unwrap().clone();
                        let no_length = u.load(Ordering::SeqCst);
                        let response = match location {
                            Some(location) => format!(
                                "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n"
                            ),
                            None if no_length => format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{body}"
                            ),
                            None => format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            ),
                        };
                        if socket.write_all(response.as_bytes()).await.is_err() || no_length {
                            return;
                        }
                    }
                });
            }
        });
        JwksServer {
            url,
            hits,
            heads,
            document,
            redirect_to,
            no_length,
        }
    }
}

#[tokio::test]
async fn an_unknown_kid_refetches_at_most_once_per_cooldown() {
    let server = JwksServer::start(include_str!("../../fixtures/jwks.json")).await;
    let state = state_with(env(&[("JWT_JWKS", ""), ("JWKS_URL", &server.url)]));
    let user = user_id();
    let known = signed(Algorithm::EdDSA, "ed25519", Some("ed-1"), &claims(&user));
    list_with(&state, &user, &known).await.assert_status(200);
    assert_eq!(server.hits.load(Ordering::SeqCst), 1, "first use fetches");
    list_with(&state, &user, &known).await.assert_status(200);
    assert_eq!(server.hits.load(Ordering::SeqCst), 1, "keys are cached");
    let rotated = signed(
        Algorithm::EdDSA,
        "ed25519-rotated",
        Some("ed-2"),
        &claims(&user),
    );
    *server.document.lock().unwrap() = include_str!("../../fixtures/jwks-rotated.json").into();
    for _ in 0..10 {
        assert_401(
            &list_with(&state, &user, &rotated).await,
            "unknown kid in cool-down",
        );
    }
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        1,
        "no refetch inside the cool-down, however many requests"
    );
}

/// A JWKS fetch says what it is: firewalls in front of a Better Auth app (Cloudflare's
/// browser integrity check, AWS WAF's core rules) refuse requests without a User-Agent.
#[tokio::test]
async fn a_jwks_fetch_sends_a_user_agent() {
    let server = JwksServer::start(include_str!("../../fixtures/jwks.json")).await;
    let state = state_with(env(&[("JWT_JWKS", ""), ("JWKS_URL", &server.url)]));
    let user = user_id();
    let token = signed(Algorithm::EdDSA, "ed25519", Some("ed-1"), &claims(&user));
    list_with(&state, &user, &token).await.assert_status(200);
    let heads = server.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    let agent = heads[0].lines().find_map(|line| {
        line.to_ascii_lowercase()
            .strip_prefix("user-agent:")
            .map(|v| v.trim().to_owned())
    });
    assert_eq!(
        agent.as_deref(),
        Some(concat!("todo-api/", env!("CARGO_PKG_VERSION"))),
        "{}",
        heads[0]
    );
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_after_the_cooldown() {
    let server = JwksServer::start(include_str!("../../fixtures/jwks.json")).await;
    let state = state_with(env(&[
        ("JWT_JWKS", ""),
        (
            "BETTER_AUTH_URL",
            server.url.trim_end_matches("/api/auth/jwks"),
        ),
        ("JWKS_REFETCH_COOLDOWN_SECONDS", "0"),
    ]));
    rotate_between_two_requests(&state, &server, || {}).await;
}

/// A request with the endpoint's first key; `between`; the endpoint's keys rotated; a
/// request with the new key, which the refetch (no cool-down in `state`) must find.
async fn rotate_between_two_requests(
    state: &shared::AppState,
    server: &JwksServer,
    between: impl FnOnce(),
) {
    let user = user_id();
    let known = signed(Algorithm::EdDSA, "ed25519", Some("ed-1"), &claims(&user));
    list_with(state, &user, &known).await.assert_status(200);
    between();
    *server.document.lock().unwrap() = include_str!("../../fixtures/jwks-rotated.json").into();
    let rotated = signed(
        Algorithm::EdDSA,
        "ed25519-rotated",
        Some("ed-2"),
        &claims(&user),
    );
    list_with(state, &user, &rotated).await.assert_status(200);
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
}

/// The refetch after a key rotation comes long after the fetch before it (the cool-down, a
/// Lambda freeze): a kept-alive connection to the JWKS endpoint may have been forgotten on
/// the way since (a NAT gateway's timeout answers with a reset), and reusing it made the
/// refetch fail, every token of the new key a 503 until the retry 5 s later. Each fetch
/// opens a connection of its own.
#[tokio::test]
async fn a_refetch_does_not_reuse_a_connection_that_sat_idle() {
    let server = JwksServer::start(include_str!("../../fixtures/jwks.json")).await;
    let upstream = server.url["http://".len()..]
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let forgetter = tests::proxy::Forgetter::start(upstream.clone()).await;
    let url = server
        .url
        .replacen(&upstream, &format!("127.0.0.1:{}", forgetter.port), 1);
    let state = state_with(env(&[
        ("JWT_JWKS", ""),
        ("JWKS_URL", &url),
        ("JWKS_REFETCH_COOLDOWN_SECONDS", "0"),
    ]));
    rotate_between_two_requests(&state, &server, || {
        forgetter.forget(tests::proxy::Forget::Reset)
    })
    .await;
    assert_eq!(
        forgetter.hits(),
        0,
        "the first fetch's connection was not reused"
    );
}

/// A state whose JWKS URL (`/jwks` and `query` on a port nothing listens on) cannot be
/// reached, a user, and an EdDSA token of that user whose key only the JWKS could give.
fn with_unreachable_jwks(query: &str) -> (shared::AppState, String, String) {
    let port = tests::cluster::free_port();
    let url = format!("http://127.0.0.1:{port}/jwks{query}");
    let state = state_with(env(&[("JWT_JWKS", ""), ("JWKS_URL", &url)]));
    let user = user_id();
    let token = signed(Algorithm::EdDSA, "ed25519", Some("ed-1"), &claims(&user));
    (state, user, token)
}

/// A JWKS URL may carry a credential (an API key in its query): a failed fetch's log line
/// does not print it.
#[tokio::test(flavor = "current_thread")]
async fn a_failed_jwks_fetch_logs_no_part_of_its_url() {
    let (state, user, token) = with_unreachable_jwks("?api_key=s3cr3t-in-the-query");
    let logs = crate::idle::Logs::default();
    let response = {
        let _capture = logs.capture();
        list_with(&state, &user, &token).await
    };
    response.assert_status(503);
    let lines = logs.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = lines[0].to_string();
    assert!(line.contains("JWKS"), "{line}");
    assert!(!line.contains("s3cr3t"), "{line}");
}

#[tokio::test]
async fn an_unreachable_jwks_endpoint_is_503_not_401() {
    let (state, user, token) = with_unreachable_jwks("");
    let response = list_with(&state, &user, &token).await;
    response.assert_status(503);
    assert!(response.header("retry-after").is_some());
    // HS256 tokens still work while the JWKS endpoint is down.
    list_with(&state, &user, &tokens::token(&user))
        .await
        .assert_status(200);
}

#[tokio::test]
async fn a_jwks_redirect_is_not_followed() {
    let real = JwksServer::start(include_str!("../../fixtures/jwks.json")).await;
    let redirecting = JwksServer::start("{}").await;
    *redirecting.redirect_to.lock().unwrap() = Some(real.url.clone());
    let state = state_with(env(&[("JWT_JWKS", ""), ("JWKS_URL", &redirecting.url)]));
    let user = user_id();
    let token = signed(Algorithm::EdDSA, "ed25519", Some("ed-1"), &claims(&user));
    let response = list_with(&state, &user, &token).await;
    response.assert_status(503);
    assert_eq!(redirecting.hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        real.hits.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
}

#[tokio::test]
async fn a_refetch_without_usable_keys_keeps_the_keys_that_worked() {
    let server = JwksServer::start(include_str!("../../fixtures/jwks.json")).await;
    let state = state_with(env(&[
        ("JWT_JWKS", ""),
        ("JWKS_URL", &server.url),
        ("JWKS_REFETCH_COOLDOWN_SECONDS", "0"),
    ]));
    let user = user_id();
    let known = signed(Algorithm::EdDSA, "ed25519", Some("ed-1"), &claims(&user));
    let unknown = signed(
        Algorithm::EdDSA,
        "ed25519-rotated",
        Some("ed-2"),
        &claims(&user),
    );
    list_with(&state, &user, &known).await.assert_status(200);
    for unusable in [
        r#"{"keys": []}"#,
        r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "ed-2"}]}"#,
    ] {
        *server.document.lock().unwrap() = unusable.into();
        let hits = server.hits.load(Ordering::SeqCst);
        // Anyone can force a refetch with an unknown kid.
        let refused = list_with(&state, &user, &unknown).await;
        assert_ne!(refused.status, 200, "{unusable}");
        assert_eq!(server.hits.load(Ordering::SeqCst), hits + 1, "refetched");
        list_with(&state, &user, &known).await.assert_status(200);
    }
    // A document with usable keys still replaces the set (key rotation).
    *server.document.lock().unwrap() = include_str!("../../fixtures/jwks-rotated.json").into();
    list_with(&state, &user, &unknown).await.assert_status(200);
}

#[tokio::test]
async fn an_oversized_jwks_document_is_refused_with_or_without_a_length() {
    let fixture = include_str!("../../fixtures/jwks.json");
    // A usable key set, padded with whitespace past the 256 KiB the API reads.
    let padded = format!("{}{}", fixture, " ".repeat(300 * 1024));
    for no_length in [false, true] {
        let server = JwksServer::start(fixture).await;
        server.no_length.store(no_length, Ordering::SeqCst);
        let state = state_with(env(&[("JWT_JWKS", ""), ("JWKS_URL", &server.url)]));
        let user = user_id();
        let token = signed(Algorithm::EdDSA, "ed25519", Some("ed-1"), &claims(&user));
        // The same document, unpadded, is read in both modes.
        list_with(&state, &user, &token).await.assert_status(200);

        *server.document.lock().unwrap() = padded.clone();
        let fresh = state_with(env(&[("JWT_JWKS", ""), ("JWKS_URL", &server.url)]));
        let response = list_with(&fresh, &user, &token).await;
        response.assert_status(503);
        assert!(
            response.header("retry-after").is_some(),
            "no_length: {no_length}"
        );
        assert!(
            server.hits.load(Ordering::SeqCst) >= 2,
            "the padded document was fetched (no_length: {no_length})"
        );
    }
}

//! Token parsing and verification on arbitrary input: the Authorization header and the
//! token itself, against HS256 and an inline JWKS (EdDSA, ES256, RS256). Must never panic.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shared::auth::TokenVerifier;
use shared::config::Config;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    verifier: TokenVerifier,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let jwks = include_str!("../../tests/fixtures/jwks.json");
        let config = Config::from_lookup(|name| match name {
            "DATABASE_URL" => Some("postgres://fuzz@127.0.0.1:1/fuzz".into()),
            "BETTER_AUTH_SECRET" => Some("fuzz-secret-0123456789abcdefghijklmnop".into()),
            "JWT_JWKS" => Some(jwks.into()),
            _ => None,
        })
        .expect("fuzz configuration");
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            verifier: TokenVerifier::new(&config.auth).expect("verifier"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        headers.insert(http::header::AUTHORIZATION, value);
        let _ = shared::request::bearer_token(&headers);
    }
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = fixture
            .runtime
            .block_on(fixture.verifier.verify_token(token));
    }
});

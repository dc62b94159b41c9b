//! `dev-token`: mints an HS256 token for local development, signed with the configured
//! `BETTER_AUTH_SECRET`, so frontend developers can call the local API. The scripts and the
//! Python system tests mint their tokens with it too.
//!
//! Usage: `dev-token <user_id> [lifetime-seconds]` (default one hour). With `JWT_ISSUER` or
//! `JWT_AUDIENCE` set, which the API then requires of a token with a `sub`, the token
//! carries the first value of each as `iss` / `aud`.

use std::process::ExitCode;

use secrecy::ExposeSecret;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(user_id), lifetime) = (args.next(), args.next()) else {
        eprintln!("usage: dev-token <user_id> [lifetime-seconds]");
        return ExitCode::from(2);
    };
    let Ok(lifetime) = lifetime.as_deref().unwrap_or("3600").parse::<i64>() else {
        eprintln!("dev-token: the lifetime must be a whole number of seconds");
        return ExitCode::from(2);
    };
    if shared::auth::UserId::parse(&user_id).is_none() {
        eprintln!("dev-token: a user id is 1-255 characters without U+0000");
        return ExitCode::from(2);
    }
    let secret = match std::env::var("BETTER_AUTH_SECRET").or_else(|_| std::env::var("JWT_SECRET"))
    {
        Ok(secret) if secret.len() >= shared::config::MIN_SECRET_BYTES => {
            secrecy::SecretString::from(secret)
        }
        _ => {
            eprintln!(
                "dev-token: BETTER_AUTH_SECRET must be set (at least {} bytes); scripts/dev writes one to .env",
                shared::config::MIN_SECRET_BYTES
            );
            return ExitCode::from(2);
        }
    };
    let now = chrono::Utc::now().timestamp();
    let mut claims = serde_json::json!({ "sub": user_id, "iat": now, "exp": now + lifetime });
    for (claim, variable) in [("iss", "JWT_ISSUER"), ("aud", "JWT_AUDIENCE")] {
        let first = std::env::var(variable).ok().and_then(|list| {
            list.split(',')
                .map(str::trim)
                .find(|value| !value.is_empty())
                .map(str::to_owned)
        });
        if let Some(value) = first {
            claims[claim] = serde_json::Value::from(value);
        }
    }
    match shared::auth::sign_hs256(secret.expose_secret(), &claims) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("dev-token: cannot sign: {err}");
            ExitCode::FAILURE
        }
    }
}

//! Configuration, read from the environment and validated once per cold start.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::config::{SslMode, SslNegotiation};

/// Shortest HS256 secret accepted; Better Auth itself asks for at least 32 characters.
pub const MIN_SECRET_BYTES: usize = 32;

/// A setting that is missing or invalid. Messages name the variable, never a secret's value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0} must be set")]
    Missing(&'static str),
    #[error("{name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("no way to verify tokens is configured: set BETTER_AUTH_SECRET, JWKS_URL, BETTER_AUTH_URL or JWT_JWKS")]
    NoTokenVerifier,
}

/// Where the public keys for asymmetric tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Fetched over HTTPS and cached per warm instance.
    Url(String),
    /// A JWKS document given inline (`JWT_JWKS`), for offline setups.
    Inline(String),
}

/// How tokens are verified.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub hs256_secret: Option<SecretString>,
    pub jwks: Option<JwksSource>,
    pub issuer: Option<Vec<String>>,
    pub audience: Option<Vec<String>>,
    pub leeway_seconds: u64,
    /// Minimum time between two JWKS refetches triggered by an unknown `kid`.
    pub jwks_refetch_cooldown: Duration,
}

impl AuthConfig {
    /// No key at all: every token is refused (the health function's, which verifies none).
    pub fn verifying_nothing() -> Self {
        AuthConfig {
            hs256_secret: None,
            jwks: None,
            issuer: None,
            audience: None,
            leeway_seconds: 0,
            jwks_refetch_cooldown: Duration::ZERO,
        }
    }
}

/// How the database is reached.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: SecretString,
    /// The URL, parsed (its password is redacted from `Debug`).
    pub postgres: tokio_postgres::Config,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub pool_wait_timeout: Duration,
    pub statement_timeout: Duration,
    /// A pooled connection idle at least this long is checked with a round trip before a
    /// request uses it (`DB_IDLE_CHECK_AFTER_MS`).
    pub idle_check_after: Duration,
    /// Named prepared statements, cached per connection (`DB_PREPARED_STATEMENTS`); off,
    /// every statement is sent unnamed and parsed anew, as PgBouncer before 1.21 needs in
    /// transaction mode.
    pub prepared_statements: bool,
    /// The only CA certificates (PEM) trusted for the database, instead of the public web
    /// PKI roots: `DATABASE_CA_FILE`, else the URL's `sslrootcert`.
    pub ca_file: Option<PathBuf>,
}

/// A Postgres URL, parsed: the driver's settings and the CA file its `sslrootcert` names.
#[derive(Debug, Clone)]
pub struct PostgresUrl {
    pub postgres: tokio_postgres::Config,
    pub root_cert: Option<PathBuf>,
}

/// Everything a function needs to know, loaded once per cold start.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub cors_allowed_origins: Vec<String>,
}

/// Settings that are also read under a second name (the contract's aliases).
const ALIASES: [(&str, &str); 2] = [
    ("DATABASE_URL", "NEON_DATABASE_URL"),
    ("BETTER_AUTH_SECRET", "JWT_SECRET"),
];

/// The other name setting `name` is also read under, if it has one.
pub fn alias_of(name: &str) -> Option<&'static str> {
    ALIASES
        .iter()
        .find(|(setting, _)| *setting == name)
        .map(|(_, alias)| *alias)
}

impl Config {
    /// Reads settings through `get`, so tests need not touch the process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let url = var("DATABASE_URL")
            .or_else(|| alias_of("DATABASE_URL").and_then(&var))
            .ok_or(ConfigError::Missing("DATABASE_URL"))?;
        Ok(Config {
            database: Self::database(&var, SecretString::from(url))?,
            auth: Self::auth(&var)?,
            cors_allowed_origins: list(
                var("CORS_ALLOWED_ORIGINS")
                    .as_deref()
                    .unwrap_or("http://localhost:3000"),
            ),
        })
    }

    /// The database settings around a URL obtained elsewhere (e.g. from Secrets Manager).
    pub fn database(
        var: &impl Fn(&str) -> Option<String>,
        url: SecretString,
    ) -> Result<DatabaseConfig, ConfigError> {
        // Parsed now so that a typo stops the cold start, not the first request.
        let parsed = parse_url(url.expose_secret())?;
        let pool_size = number(var, "DB_POOL_SIZE", max_concurrency(var).into())?;
        if pool_size == 0 {
            return Err(ConfigError::Invalid {
                name: "DB_POOL_SIZE",
                reason: "must be at least 1".into(),
            });
        }
        Ok(DatabaseConfig {
            url,
            postgres: parsed.postgres,
            pool_size: pool_size as usize,
            connect_timeout: millis(var, "DB_CONNECT_TIMEOUT_MS", 3_000)?,
            pool_wait_timeout: millis(var, "DB_POOL_TIMEOUT_MS", 3_000)?,
            statement_timeout: millis(var, "DB_STATEMENT_TIMEOUT_MS", 5_000)?,
            idle_check_after: millis(var, "DB_IDLE_CHECK_AFTER_MS", 30_000)?,
            prepared_statements: flag(var, "DB_PREPARED_STATEMENTS", true)?,
            ca_file: var("DATABASE_CA_FILE")
                .map(PathBuf::from)
                .or(parsed.root_cert),
        })
    }

    fn auth(var: &impl Fn(&str) -> Option<String>) -> Result<AuthConfig, ConfigError> {
        let hs256_secret = match var("BETTER_AUTH_SECRET")
            .or_else(|| alias_of("BETTER_AUTH_SECRET").and_then(&var))
        {
            Some(secret) if secret.len() < MIN_SECRET_BYTES => {
                return Err(ConfigError::Invalid {
                    name: "BETTER_AUTH_SECRET",
                    reason: format!("must be at least {MIN_SECRET_BYTES} bytes long"),
                })
            }
            Some(secret) => Some(SecretString::from(secret)),
            None => None,
        };
        let jwks = if let Some(url) = var("JWKS_URL") {
            Some(JwksSource::Url(http_url("JWKS_URL", url)?))
        } else if let Some(base) = var("BETTER_AUTH_URL") {
            let base = http_url("BETTER_AUTH_URL", base)?;
            Some(JwksSource::Url(format!(
                "{}/api/auth/jwks",
                base.trim_end_matches('/')
            )))
        } else {
            var("JWT_JWKS").map(JwksSource::Inline)
        };
        if hs256_secret.is_none() && jwks.is_none() {
            return Err(ConfigError::NoTokenVerifier);
        }
        Ok(AuthConfig {
            hs256_secret,
            jwks,
            issuer: var("JWT_ISSUER").map(|v| list(&v)),
            audience: var("JWT_AUDIENCE").map(|v| list(&v)),
            leeway_seconds: match number(var, "JWT_LEEWAY_SECONDS", 30)? {
                seconds if seconds > MAX_LEEWAY_SECONDS => {
                    return Err(ConfigError::Invalid {
                        name: "JWT_LEEWAY_SECONDS",
                        reason: format!("must be at most {MAX_LEEWAY_SECONDS} (5 minutes)"),
                    })
                }
                seconds => seconds,
            },
            jwks_refetch_cooldown: Duration::from_secs(number(
                var,
                "JWKS_REFETCH_COOLDOWN_SECONDS",
                60,
            )?),
        })
    }
}

/// libpq options that tokio-postgres does not know and that only concern TLS, which rustls
/// handles (certificates are always verified, SNI is always sent), or that ask for nothing
/// (`gssencmode` other than `require`: no GSSAPI encryption is ever tried).
const LIBPQ_TLS_ONLY_OPTIONS: &[&str] = &["sslsni", "sslcompression", "gssencmode"];

/// Parses a Postgres URL as libpq users write it (including Neon's
/// `?sslmode=require&channel_binding=require`) into a tokio-postgres config.
///
/// `verify-ca` and `verify-full` become `require`: rustls always verifies the certificate
/// chain and host name, which is what they ask for.
///
/// A connection that leaves the machine is encrypted unless the URL says otherwise in so
/// many words: without `sslmode`, a host other than `localhost`, 127.0.0.0/8, `::1` or a
/// Unix socket gets `require` (libpq's default, `prefer`, falls back to clear text when the
/// server, or anyone on the path, answers that it has no TLS), and `sslmode=prefer` is
/// refused for such a host. `sslmode=disable` is taken as written (a private network's
/// server without TLS). Options that ask for a protection this client cannot give
/// (`sslcrl`, `gssencmode=require`) are refused rather than ignored.
pub fn parse_url(url: &str) -> Result<PostgresUrl, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        name: "DATABASE_URL",
        reason,
    };
    let normalized = normalize_url(url).map_err(invalid)?;
    let mut postgres = tokio_postgres::Config::from_str(&normalized.url)
        .map_err(|err| invalid(format!("not a usable Postgres URL ({err})")))?;
    let local = stays_on_this_machine(&postgres);
    if !normalized.ssl_mode_given && (!local || normalized.system_roots) {
        postgres.ssl_mode(SslMode::Require);
    }
    if postgres.get_ssl_mode() == SslMode::Prefer && !local {
        return Err(invalid(
            "sslmode=prefer falls back to an unencrypted connection, which anyone on the way \
             to a remote host can force: write sslmode=require (or sslmode=disable to mean it)"
                .into(),
        ));
    }
    if postgres.get_ssl_negotiation() == SslNegotiation::Direct
        && postgres.get_ssl_mode() != SslMode::Require
    {
        return Err(invalid(
            "sslnegotiation=direct needs sslmode=require (or verify-full)".into(),
        ));
    }
    Ok(PostgresUrl {
        postgres,
        root_cert: normalized.root_cert.map(PathBuf::from),
    })
}

/// Whether every host the config names is this machine: a Unix socket, `localhost` or a
/// loopback address, and so is every `hostaddr`. No host at all counts as local (the
/// driver refuses it when it connects).
fn stays_on_this_machine(config: &tokio_postgres::Config) -> bool {
    use tokio_postgres::config::Host;
    config.get_hosts().iter().all(|host| match host {
        Host::Tcp(name) => is_loopback(name),
        #[cfg(unix)]
        Host::Unix(_) => true,
    }) && config.get_hostaddrs().iter().all(|addr| addr.is_loopback())
}

/// A URL as tokio-postgres can parse it, and what was taken out of it on the way.
#[derive(Debug, PartialEq)]
struct Normalized {
    url: String,
    /// The CA file `sslrootcert` names.
    root_cert: Option<String>,
    /// Whether the URL says `sslmode` at all (tokio-postgres's own default is `prefer`).
    ssl_mode_given: bool,
    /// `sslrootcert=system`, which libpq (16 and later) takes as `verify-full`.
    system_roots: bool,
}

/// Rewrites a libpq URL for tokio-postgres: `verify-*` modes become `require`, `sslrootcert`
/// and the TLS options rustls covers anyway are taken out. Refuses options that ask for a
/// check this client would not make. A key/value string (`host=… sslmode=…`) passes as it
/// is, but for noting its `sslmode`.
fn normalize_url(url: &str) -> Result<Normalized, String> {
    let mut normalized = Normalized {
        url: url.to_owned(),
        root_cert: None,
        ssl_mode_given: false,
        system_roots: false,
    };
    let Some((base, query)) = url.split_once('?') else {
        normalized.ssl_mode_given = !url.contains("://")
            && url
                .split_whitespace()
                .any(|pair| pair.starts_with("sslmode="));
        return Ok(normalized);
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => {
                normalized.ssl_mode_given = true;
                if value == "verify-full" || value == "verify-ca" {
                    kept.push("sslmode=require".to_owned());
                } else {
                    kept.push(pair.to_owned());
                }
            }
            "sslrootcert" if value == "system" => normalized.system_roots = true,
            "sslrootcert" => {
                normalized.root_cert = Some(
                    percent_encoding::percent_decode_str(value)
                        .decode_utf8_lossy()
                        .into_owned(),
                );
            }
            // Empty, as libpq reads it: not set.
            "sslcrl" | "sslcrldir" if value.is_empty() => {}
            "sslcrl" | "sslcrldir" => {
                return Err(format!(
                    "{key} is not supported: certificate revocation lists are not checked"
                ));
            }
            "gssencmode" if value == "require" => {
                return Err("gssencmode=require is not supported (no GSSAPI encryption)".into());
            }
            key if LIBPQ_TLS_ONLY_OPTIONS.contains(&key) => {}
            _ => kept.push(pair.to_owned()),
        }
    }
    normalized.url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(normalized)
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// How many invocations the platform runs at once in one execution environment:
/// `AWS_LAMBDA_MAX_CONCURRENCY` on Lambda Managed Instances, 1 otherwise. A value the
/// runtime would not honour (not a positive whole number) counts as 1, as it does there.
pub fn max_concurrency(var: &impl Fn(&str) -> Option<String>) -> u32 {
    var("AWS_LAMBDA_MAX_CONCURRENCY")
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

fn number(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
) -> Result<u64, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(value) => u64::from_str(value.trim()).map_err(|_| ConfigError::Invalid {
            name,
            reason: format!("expected a whole number, got {value:?}"),
        }),
    }
}

fn flag(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match var(name).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "on" | "yes") => Ok(true),
        Some("false" | "0" | "off" | "no") => Ok(false),
        Some(_) => Err(ConfigError::Invalid {
            name,
            reason: "must be true or false".into(),
        }),
    }
}

/// The most clock skew a token's times may be given: five minutes, Kerberos's classic
/// figure. Beyond it, a token that expired long ago passes (30,000 read as milliseconds
/// would be eight hours), and past the current Unix time jsonwebtoken's `now - leeway`
/// wraps in a release build (every token "expired") and panics in a debug one.
const MAX_LEEWAY_SECONDS: u64 = 300;

/// The longest any `DB_*_MS` setting may be: Lambda's longest timeout, 15 minutes. A
/// statement timeout also travels to Postgres as a `lock_timeout`, which refuses more
/// than 2^31 - 1 ms (every write would then fail), and deadlines are `Instant`s that a
/// value near `u64::MAX` would overflow.
const MAX_MILLIS: u64 = 900_000;

fn millis(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
) -> Result<Duration, ConfigError> {
    match number(var, name, default)? {
        0 => Err(ConfigError::Invalid {
            name,
            reason: "must be greater than 0".into(),
        }),
        ms if ms > MAX_MILLIS => Err(ConfigError::Invalid {
            name,
            reason: format!("must be at most {MAX_MILLIS} (15 minutes)"),
        }),
        ms => Ok(Duration::from_millis(ms)),
    }
}

/// A JWKS (or Better Auth) URL: `https://`, or `http://` on a loopback host only
/// (`localhost`, 127.0.0.0/8, `[::1]`), so that keys are never fetched in clear text over a
/// network where someone could plant their own.
fn http_url(name: &'static str, value: String) -> Result<String, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        name,
        reason: reason.into(),
    };
    // Checked and used trimmed: a space pasted after the URL would otherwise end up in the
    // middle of the JWKS address built from it.
    let value = value.trim().to_owned();
    let url = reqwest::Url::parse(&value).map_err(|_| invalid("is not a URL"))?;
    let host = url.host_str().ok_or_else(|| invalid("has no host"))?;
    match url.scheme() {
        "https" => Ok(value),
        "http" if is_loopback(host) => Ok(value),
        "http" => Err(invalid(
            "must use https:// (http:// only for localhost, 127.0.0.0/8 or [::1])",
        )),
        _ => Err(invalid("must start with https://")),
    }
}

fn is_loopback(host: &str) -> bool {
    let unbracketed = host.trim_start_matches('[').trim_end_matches(']');
    match unbracketed.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_suit_a_lambda_instance() {
        let config = load(&[
            ("DATABASE_URL", "postgres://u:p@localhost/db"),
            ("BETTER_AUTH_SECRET", SECRET),
        ])
        .unwrap();
        assert_eq!(config.database.pool_size, 1);
        assert_eq!(config.auth.leeway_seconds, 30);
        assert_eq!(config.cors_allowed_origins, vec!["http://localhost:3000"]);
        assert!(config.auth.jwks.is_none());
    }

    #[test]
    fn the_pool_defaults_to_the_platforms_concurrency_unless_db_pool_size_says_otherwise() {
        let base = [
            ("DATABASE_URL", "postgres://u:p@localhost/db"),
            ("BETTER_AUTH_SECRET", SECRET),
        ];
        let pool = |extra: &[(&str, &str)]| {
            load(&[&base[..], extra].concat())
                .unwrap()
                .database
                .pool_size
        };
        assert_eq!(pool(&[("AWS_LAMBDA_MAX_CONCURRENCY", "32")]), 32);
        assert_eq!(pool(&[("AWS_LAMBDA_MAX_CONCURRENCY", "1")]), 1);
        assert_eq!(pool(&[("AWS_LAMBDA_MAX_CONCURRENCY", "0")]), 1);
        assert_eq!(pool(&[("AWS_LAMBDA_MAX_CONCURRENCY", "many")]), 1);
        assert_eq!(
            pool(&[("AWS_LAMBDA_MAX_CONCURRENCY", "32"), ("DB_POOL_SIZE", "4")]),
            4
        );
    }

    #[test]
    fn idle_connections_are_checked_after_30_s_unless_db_idle_check_after_ms_says_otherwise() {
        let base = [
            ("DATABASE_URL", "postgres://u:p@localhost/db"),
            ("BETTER_AUTH_SECRET", SECRET),
        ];
        let after = |extra: &[(&str, &str)]| {
            load(&[&base[..], extra].concat()).map(|config| config.database.idle_check_after)
        };
        assert_eq!(after(&[]), Ok(Duration::from_secs(30)));
        assert_eq!(
            after(&[("DB_IDLE_CHECK_AFTER_MS", "250")]),
            Ok(Duration::from_millis(250))
        );
        assert!(after(&[("DB_IDLE_CHECK_AFTER_MS", "0")]).is_err());
    }

    #[test]
    fn the_token_leeway_is_refused_beyond_5_minutes() {
        let base = [
            ("DATABASE_URL", "postgres://u:p@localhost/db"),
            ("BETTER_AUTH_SECRET", SECRET),
        ];
        for value in ["0", "300"] {
            let config = load(&[&base[..], &[("JWT_LEEWAY_SECONDS", value)]].concat()).unwrap();
            assert_eq!(config.auth.leeway_seconds.to_string(), value);
        }
        for value in ["301", "30000", "4000000000", "18446744073709551615"] {
            let err = load(&[&base[..], &[("JWT_LEEWAY_SECONDS", value)]].concat()).unwrap_err();
            assert!(err.to_string().contains("JWT_LEEWAY_SECONDS"), "{err}");
            assert!(err.to_string().contains("at most 300"), "{err}");
        }
    }

    #[test]
    fn database_times_are_refused_beyond_15_minutes() {
        let base = [
            ("DATABASE_URL", "postgres://u:p@localhost/db"),
            ("BETTER_AUTH_SECRET", SECRET),
        ];
        for name in [
            "DB_CONNECT_TIMEOUT_MS",
            "DB_POOL_TIMEOUT_MS",
            "DB_STATEMENT_TIMEOUT_MS",
            "DB_IDLE_CHECK_AFTER_MS",
        ] {
            assert!(load(&[&base[..], &[(name, "900000")]].concat()).is_ok());
            for value in ["900001", "3000000000", "18446744073709551615"] {
                let err = load(&[&base[..], &[(name, value)]].concat()).unwrap_err();
                assert!(err.to_string().contains(name), "{err}");
            }
        }
    }

    #[test]
    fn neon_urls_are_accepted_verbatim() {
        let url = "postgresql://alex:AbC123dEf@ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech/dbname?sslmode=require&channel_binding=require";
        let config = load(&[("NEON_DATABASE_URL", url), ("JWT_SECRET", SECRET)]).unwrap();
        assert_eq!(config.database.url.expose_secret(), url);
    }

    #[test]
    fn better_auth_url_points_at_its_jwks_endpoint() {
        for (name, value, jwks) in [
            (
                "BETTER_AUTH_URL",
                "https://app.example.com/",
                "https://app.example.com/api/auth/jwks",
            ),
            // As pasted into a form, with white space around it.
            (
                "BETTER_AUTH_URL",
                " https://app.example.com/ \n",
                "https://app.example.com/api/auth/jwks",
            ),
            (
                "JWKS_URL",
                "https://auth.example.com/jwks ",
                "https://auth.example.com/jwks",
            ),
        ] {
            let config =
                load(&[("DATABASE_URL", "postgres://localhost/db"), (name, value)]).unwrap();
            assert_eq!(
                config.auth.jwks,
                Some(JwksSource::Url(jwks.into())),
                "{value:?}"
            );
        }
    }

    #[test]
    fn missing_or_bad_settings_name_the_variable_without_secrets() {
        assert_eq!(
            load(&[("BETTER_AUTH_SECRET", SECRET)]).unwrap_err(),
            ConfigError::Missing("DATABASE_URL")
        );
        assert_eq!(
            load(&[("DATABASE_URL", "postgres://localhost/db")]).unwrap_err(),
            ConfigError::NoTokenVerifier
        );
        let short = load(&[
            ("DATABASE_URL", "postgres://localhost/db"),
            ("BETTER_AUTH_SECRET", "hunter2"),
        ])
        .unwrap_err();
        assert!(short.to_string().contains("BETTER_AUTH_SECRET"));
        assert!(!short.to_string().contains("hunter2"));
        let bad_url = load(&[
            (
                "DATABASE_URL",
                "postgres://u:s3cr3t@localhost/db?sslmode=bogus",
            ),
            ("BETTER_AUTH_SECRET", SECRET),
        ])
        .unwrap_err();
        assert!(bad_url.to_string().contains("DATABASE_URL"));
        assert!(!bad_url.to_string().contains("s3cr3t"));
        let bad_pool = load(&[
            ("DATABASE_URL", "postgres://localhost/db"),
            ("BETTER_AUTH_SECRET", SECRET),
            ("DB_POOL_SIZE", "many"),
        ])
        .unwrap_err();
        assert!(bad_pool.to_string().contains("DB_POOL_SIZE"));
    }

    #[test]
    fn keys_are_fetched_over_https_or_from_a_loopback_host_only() {
        let jwks = |name: &str, url: &str| {
            load(&[("DATABASE_URL", "postgres://localhost/db"), (name, url)])
                .map(|config| config.auth.jwks)
        };
        for ok in [
            "https://auth.example.com/api/auth/jwks",
            "http://localhost:3000/api/auth/jwks",
            "http://127.0.0.1:3000/jwks",
            "http://127.1.2.3/jwks",
            "http://[::1]:3000/jwks",
        ] {
            assert!(jwks("JWKS_URL", ok).is_ok(), "{ok}");
        }
        assert!(jwks("BETTER_AUTH_URL", "http://localhost:3000").is_ok());
        for (name, bad) in [
            ("JWKS_URL", "http://auth.example.com/api/auth/jwks"),
            ("JWKS_URL", "http://10.0.0.1/jwks"),
            ("JWKS_URL", "http://localhost.example.com/jwks"),
            ("JWKS_URL", "http://127.0.0.1.nip.io/jwks"),
            ("JWKS_URL", "ftp://localhost/jwks"),
            ("JWKS_URL", "auth.example.com/jwks"),
            ("BETTER_AUTH_URL", "http://auth.example.com"),
        ] {
            let err = jwks(name, bad).unwrap_err();
            assert!(err.to_string().contains(name), "{bad}: {err}");
        }
    }

    #[test]
    fn verify_modes_become_require_and_libpq_only_options_are_dropped() {
        let normalized = normalize_url(
            "postgres://u:p@h/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&sslsni=1&channel_binding=require",
        )
        .unwrap();
        assert_eq!(
            normalized.url,
            "postgres://u:p@h/db?sslmode=require&channel_binding=require"
        );
        assert_eq!(normalized.root_cert.as_deref(), Some("/tmp/ca.pem"));
        assert!(normalized.ssl_mode_given);
    }

    fn ssl_mode(url: &str) -> Result<SslMode, ConfigError> {
        parse_url(url).map(|parsed| parsed.postgres.get_ssl_mode())
    }

    #[test]
    fn a_remote_host_without_sslmode_gets_tls_required() {
        for url in [
            "postgresql://alex:pw@ep-x-pooler.us-east-2.aws.neon.tech/neondb",
            "postgresql://alex:pw@ep-x-pooler.us-east-2.aws.neon.tech/neondb?channel_binding=require",
            "postgresql://alex:pw@10.0.0.5:5432/db",
            // The name decides, wherever hostaddr points: TLS is verified against the name.
            "postgresql://alex:pw@db.example.com/db?hostaddr=127.0.0.1",
            // A local name with a remote address leaves the machine all the same.
            "postgresql://alex:pw@localhost/db?hostaddr=10.0.0.5",
            "postgresql://alex:pw@localhost,db.example.com/db",
            "host=db.example.com user=alex dbname=db",
            // libpq 16 reads sslrootcert=system as verify-full.
            "postgresql://alex:pw@localhost/db?sslrootcert=system",
        ] {
            assert_eq!(ssl_mode(url), Ok(SslMode::Require), "{url}");
        }
    }

    #[test]
    fn a_local_host_keeps_libpqs_default_and_any_mode_written() {
        for url in [
            "postgres://localhost/db",
            "postgres://u@127.0.0.1:5432/db",
            "postgres://u@[::1]:5432/db",
            "host=/var/run/postgresql dbname=db",
        ] {
            assert_eq!(ssl_mode(url), Ok(SslMode::Prefer), "{url}");
        }
        assert_eq!(
            ssl_mode("postgres://u@127.0.0.1/db?sslmode=disable"),
            Ok(SslMode::Disable)
        );
        assert_eq!(
            ssl_mode("postgres://u@db.internal/db?sslmode=disable"),
            Ok(SslMode::Disable),
            "a mode written out is taken as written"
        );
        assert_eq!(
            ssl_mode("host=db.internal sslmode=disable"),
            Ok(SslMode::Disable)
        );
    }

    #[test]
    fn a_fallback_to_clear_text_or_a_check_not_made_is_refused() {
        for (url, says) in [
            (
                "postgres://u:s3cr3t@db.example.com/db?sslmode=prefer",
                "sslmode=prefer",
            ),
            (
                "host=db.example.com password=s3cr3t sslmode=prefer",
                "sslmode=prefer",
            ),
            (
                "postgres://u:s3cr3t@127.0.0.1/db?sslnegotiation=direct",
                "sslnegotiation=direct",
            ),
            (
                "postgres://u:s3cr3t@db.example.com/db?sslmode=disable&sslnegotiation=direct",
                "sslnegotiation=direct",
            ),
            (
                "postgres://u:s3cr3t@db.example.com/db?sslmode=require&sslcrl=%2Fcrl.pem",
                "sslcrl",
            ),
            (
                "postgres://u:s3cr3t@db.example.com/db?gssencmode=require",
                "gssencmode",
            ),
        ] {
            let err = parse_url(url).unwrap_err().to_string();
            assert!(
                err.contains("DATABASE_URL") && err.contains(says),
                "{url}: {err}"
            );
            assert!(!err.contains("s3cr3t"), "{err}");
        }
        assert!(parse_url("postgres://u@db.example.com/db?sslcrl=&sslcrldir=").is_ok());
        // Without sslmode, direct negotiation to a remote host is fine: the mode is require.
        assert!(parse_url("postgres://u@db.example.com/db?sslnegotiation=direct").is_ok());
    }

    #[test]
    fn neon_urls_parse_with_channel_binding() {
        let config = parse_url(
            "postgresql://alex:pw@ep-x-pooler.us-east-2.aws.neon.tech/neondb?sslmode=require&channel_binding=require",
        )
        .unwrap()
        .postgres;
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(
            config.get_channel_binding(),
            tokio_postgres::config::ChannelBinding::Require
        );
    }

    #[test]
    fn neon_urls_with_direct_tls_negotiation_parse() {
        let config = parse_url(
            "postgresql://alex:pw@ep-x-pooler.us-east-2.aws.neon.tech/neondb?sslmode=require&sslnegotiation=direct&channel_binding=require",
        )
        .unwrap()
        .postgres;
        assert_eq!(
            config.get_ssl_negotiation(),
            tokio_postgres::config::SslNegotiation::Direct
        );
    }
}

//! Token verification: HS256 with the shared secret, and EdDSA / ES256 / RS256 against a
//! JWKS cached per warm instance.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{AuthConfig, ConfigError, JwksSource};
use crate::error::{ApiError, AuthError};

/// Longest user id accepted, in characters.
pub const USER_ID_MAX_CHARS: usize = 255;
/// How long a JWKS fetch may take.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// After a failed fetch, how long before the next attempt.
const JWKS_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// The largest JWKS document read. Better Auth's holds a few keys of a few hundred bytes
/// each; anything near this is not a key set, and reading it whole could exhaust a small
/// function's memory (the fetch can be triggered by anyone, with an unknown `kid`).
const JWKS_MAX_BYTES: usize = 256 * 1024;

/// The verified identity of the caller: the token's `sub` (or `user.id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserId(String);

impl UserId {
    /// A user id is an opaque string of 1–255 characters (Better Auth ids are not UUIDs).
    pub fn parse(raw: &str) -> Option<Self> {
        let chars = raw.chars().count();
        ((1..=USER_ID_MAX_CHARS).contains(&chars) && !raw.contains('\0'))
            .then(|| UserId(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Signs `claims` with HS256 and `secret`: the one HS256 signer of the repository
/// (`dev-token`, the tests' tokens and the benchmarks' go through it). The API itself only
/// verifies tokens.
pub fn sign_hs256(secret: &str, claims: &Value) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// A token for `sub` as Better Auth would issue it, issued now and valid for
/// `lifetime_seconds`.
pub fn mint_hs256(
    secret: &str,
    sub: &str,
    lifetime_seconds: i64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = chrono::Utc::now().timestamp();
    sign_hs256(
        secret,
        &serde_json::json!({ "sub": sub, "iat": now, "exp": now + lifetime_seconds }),
    )
}

/// Verifies bearer tokens; built once per cold start.
pub struct TokenVerifier {
    hs256: Option<DecodingKey>,
    jwks: Option<KeyStore>,
    issuer: Option<Vec<String>>,
    audience: Option<Vec<String>>,
    leeway: u64,
}

/// The claims this API looks at; time claims are kept raw so their type can be checked.
#[derive(Deserialize)]
struct Claims {
    exp: Option<Value>,
    nbf: Option<Value>,
    iat: Option<Value>,
    sub: Option<Value>,
    user: Option<Value>,
    iss: Option<Value>,
    aud: Option<Value>,
}

impl TokenVerifier {
    pub fn new(config: &AuthConfig) -> Result<Self, ConfigError> {
        let jwks = match &config.jwks {
            None => None,
            Some(JwksSource::Inline(document)) => {
                let keys =
                    KeySet::parse(document.as_bytes()).map_err(|err| ConfigError::Invalid {
                        name: "JWT_JWKS",
                        reason: format!("{err:#}"),
                    })?;
                if keys.is_empty() {
                    return Err(ConfigError::Invalid {
                        name: "JWT_JWKS",
                        reason: "contains no usable EdDSA, ES256 or RS256 key".into(),
                    });
                }
                Some(KeyStore::fixed(keys))
            }
            Some(JwksSource::Url(url)) => {
                Some(KeyStore::remote(url.clone(), config.jwks_refetch_cooldown)?)
            }
        };
        Ok(TokenVerifier {
            hs256: config
                .hs256_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.expose_secret().as_bytes())),
            jwks,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway_seconds,
        })
    }

    /// Verifies a token and returns the caller's user id.
    ///
    /// Only algorithms the configuration enables are accepted, and each only with a key of
    /// its own kind: an HS256 token is never checked against a public key.
    pub async fn verify_token(&self, token: &str) -> Result<UserId, ApiError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid("not a JWT"))?;
        let key = match header.alg {
            Algorithm::HS256 => (self.hs256.clone()).ok_or(AuthError::Invalid(
                "HS256, and no HS256 secret is configured",
            ))?,
            Algorithm::EdDSA | Algorithm::ES256 | Algorithm::RS256 => {
                let store = (self.jwks.as_ref()).ok_or(AuthError::Invalid(
                    "signed with a key pair, and no JWKS is configured",
                ))?;
                store.key_for(header.kid.as_deref(), header.alg).await?
            }
            _ => return Err(AuthError::Invalid("an algorithm the API does not accept").into()),
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        // A configured issuer or audience is required of a token signed with a key pair;
        // of an HS256 token, in `check_claims`, unless it has the shape of the only ones
        // Better Auth signs (its `session_data` cookie cache: the user in `user`, no `sub`),
        // which carry neither: requiring them would refuse every such token of a stack that
        // also takes the `jwt` plugin's (README, *Connect your frontend*).
        let required = header.alg != Algorithm::HS256;
        match &self.audience {
            Some(audience) => {
                validation.set_audience(audience);
                if required {
                    validation.required_spec_claims.insert("aud".into());
                }
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(issuer);
            if required {
                validation.required_spec_claims.insert("iss".into());
            }
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|err| {
                match err.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    ErrorKind::InvalidSignature => AuthError::Invalid("a bad signature"),
                    ErrorKind::InvalidIssuer => AuthError::Invalid("another issuer (iss)"),
                    ErrorKind::InvalidAudience => AuthError::Invalid("another audience (aud)"),
                    ErrorKind::MissingRequiredClaim(_) => {
                        AuthError::Invalid("a required claim missing (exp, or iss or aud when set)")
                    }
                    ErrorKind::InvalidAlgorithm => {
                        AuthError::Invalid("an algorithm that is not its key's")
                    }
                    _ => AuthError::Invalid("claims that cannot be read"),
                }
            })?;
        self.check_claims(&data.claims)
    }

    fn check_claims(&self, claims: &Claims) -> Result<UserId, ApiError> {
        // jsonwebtoken checks a configured `iss` / `aud` only when it can read the claim (a
        // string, or strings): one of another type would pass. And of an HS256 token with a
        // `sub` (not the cookie cache's shape) a configured one is required here.
        for (claim, configured) in [
            (&claims.iss, self.issuer.is_some()),
            (&claims.aud, self.audience.is_some()),
        ] {
            match claim {
                Some(value) if configured && !is_string_or_strings(value) => {
                    return Err(AuthError::Invalid("an iss or aud that is not a string").into());
                }
                None if configured && claims.sub.is_some() => {
                    return Err(AuthError::Invalid(
                        "a required claim missing (exp, or iss or aud when set)",
                    )
                    .into());
                }
                _ => {}
            }
        }
        // jsonwebtoken checks exp and nbf; a time claim must still be a number, and `iat`
        // may not lie in the future.
        for claim in [&claims.exp, &claims.nbf, &claims.iat]
            .into_iter()
            .flatten()
        {
            if !claim.is_number() {
                return Err(AuthError::Invalid("a time claim that is not a number").into());
            }
        }
        if let Some(iat) = claims.iat.as_ref().and_then(Value::as_f64) {
            let now = jsonwebtoken::get_current_timestamp() as f64;
            if iat > now + self.leeway as f64 {
                return Err(AuthError::NotYetValid.into());
            }
        }
        let subject = match (&claims.sub, &claims.user) {
            (Some(sub), _) => sub,
            (None, Some(user)) => user.get("id").ok_or(AuthError::InvalidSubject)?,
            (None, None) => return Err(AuthError::InvalidSubject.into()),
        };
        subject
            .as_str()
            .and_then(UserId::parse)
            .ok_or_else(|| AuthError::InvalidSubject.into())
    }
}

/// Whether a claim is a string or an array of strings (`iss`, `aud`).
fn is_string_or_strings(value: &Value) -> bool {
    match value {
        Value::String(_) => true,
        Value::Array(items) => items.iter().all(Value::is_string),
        _ => false,
    }
}

/// Public keys by `kid`, each bound to the one algorithm it may verify.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, (Algorithm, DecodingKey)>,
    without_kid: Vec<(Algorithm, DecodingKey)>,
}

impl KeySet {
    /// Parses a JWKS document, skipping keys that are not usable for signatures here
    /// (symmetric keys, encryption keys, unsupported curves) rather than failing on them.
    fn parse(document: &[u8]) -> anyhow::Result<Self> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<Value>,
        }
        let document: Document = serde_json::from_slice(document).context("not a JWKS document")?;
        let mut set = KeySet::default();
        for raw in document.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
                continue;
            };
            let Some(alg) = signing_algorithm(&jwk) else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            match jwk.common.key_id.clone() {
                Some(kid) => {
                    set.by_kid.insert(kid, (alg, key));
                }
                None => set.without_kid.push((alg, key)),
            }
        }
        Ok(set)
    }

    fn is_empty(&self) -> bool {
        self.by_kid.is_empty() && self.without_kid.is_empty()
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        match kid {
            Some(kid) => self
                .by_kid
                .get(kid)
                .filter(|(key_alg, _)| *key_alg == alg)
                .map(|(_, key)| key.clone()),
            None => {
                let mut candidates = self
                    .by_kid
                    .values()
                    .chain(self.without_kid.iter())
                    .filter(|(key_alg, _)| *key_alg == alg);
                match (candidates.next(), candidates.next()) {
                    (Some((_, key)), None) => Some(key.clone()),
                    _ => None, // none, or ambiguous without a kid
                }
            }
        }
    }
}

/// The one algorithm a JWK may verify, or `None` when it is not a usable signing key.
fn signing_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        _ => return None,
    };
    let declared = jwk.common.key_algorithm;
    let consistent = match declared {
        None => true,
        Some(KeyAlgorithm::EdDSA) => alg == Algorithm::EdDSA,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(_) => false,
    };
    consistent.then_some(alg)
}

/// The JWKS cache of a warm instance.
struct KeyStore {
    keys: RwLock<Arc<KeySet>>,
    remote: Option<Remote>,
}

struct Remote {
    url: String,
    client: reqwest::Client,
    cooldown: Duration,
    /// When the last fetch was attempted and whether it worked; also serialises fetches.
    last_fetch: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

impl KeyStore {
    fn fixed(keys: KeySet) -> Self {
        KeyStore {
            keys: RwLock::new(Arc::new(keys)),
            remote: None,
        }
    }

    fn remote(url: String, cooldown: Duration) -> Result<Self, ConfigError> {
        crate::tls::install_crypto_provider();
        // No redirects: a redirect could lead from https:// to http:// (config.rs allows
        // http:// for loopback hosts only, and only as configured).
        // No connection kept alive between fetches: they are at least a cool-down apart
        // (and a Lambda freeze, perhaps), by when a NAT gateway may have forgotten the
        // connection and answer its reuse with a reset, failing the refetch after a key
        // rotation. A fetch pays for its own TLS handshake instead.
        // A User-Agent: firewalls in front of the auth server (Cloudflare's browser
        // integrity check, AWS WAF's core rule set) refuse requests without one.
        let client = reqwest::Client::builder()
            .user_agent(concat!("todo-api/", env!("CARGO_PKG_VERSION")))
            .timeout(JWKS_FETCH_TIMEOUT)
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|_| ConfigError::Invalid {
                name: "JWKS_URL",
                reason: "cannot build an HTTPS client".into(),
            })?;
        Ok(KeyStore {
            keys: RwLock::new(Arc::new(KeySet::default())),
            remote: Some(Remote {
                url,
                client,
                cooldown,
                last_fetch: tokio::sync::Mutex::new(None),
            }),
        })
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, ApiError> {
        if let Some(key) = self.current().find(kid, alg) {
            return Ok(key);
        }
        let Some(remote) = &self.remote else {
            return Err(AuthError::Invalid("no key of its kid and algorithm").into());
        };
        // Unknown kid: refetch, at most once per cool-down however many requests ask.
        let mut last_fetch = remote.last_fetch.lock().await;
        if let Some(key) = self.current().find(kid, alg) {
            return Ok(key); // another request refetched while this one waited
        }
        let due = match *last_fetch {
            None => true,
            Some((at, true)) => at.elapsed() >= remote.cooldown,
            Some((at, false)) => at.elapsed() >= JWKS_RETRY_AFTER_FAILURE.min(remote.cooldown),
        };
        if !due {
            return match *last_fetch {
                Some((_, false)) => Err(ApiError::Unavailable(anyhow!("JWKS unavailable"))),
                _ => Err(AuthError::Invalid("no key of its kid and algorithm").into()),
            };
        }
        // A document without a usable key counts as a failed fetch: the keys that worked
        // stay, so an endpoint that briefly serves `{"keys": []}` logs nobody out, and
        // anyone can trigger a refetch with an unknown `kid`.
        let fetched = remote.fetch().await.and_then(|keys| {
            if keys.is_empty() {
                Err(anyhow!("the JWKS has no usable EdDSA, ES256 or RS256 key"))
            } else {
                Ok(keys)
            }
        });
        *last_fetch = Some((Instant::now(), fetched.is_ok()));
        // The cause goes into the request's one log line (a 503).
        let keys = fetched.map_err(ApiError::Unavailable)?;
        let key = keys.find(kid, alg);
        *self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(keys);
        key.ok_or_else(|| AuthError::Invalid("no key of its kid and algorithm").into())
    }
}

impl Remote {
    async fn fetch(&self) -> anyhow::Result<KeySet> {
        let mut response = self
            .client
            .get(&self.url)
            .header("accept", "application/json")
            .send()
            .await
            // The URL could carry a credential in its query (reqwest prints it whole).
            .map_err(reqwest::Error::without_url)
            .context("JWKS request failed")?;
        // error_for_status passes redirects, which are not followed.
        if !response.status().is_success() {
            anyhow::bail!("JWKS endpoint answered {}", response.status());
        }
        if response.content_length().unwrap_or(0) > JWKS_MAX_BYTES as u64 {
            anyhow::bail!("JWKS document over {JWKS_MAX_BYTES} bytes");
        }
        // Read chunk by chunk: a body without a length is bounded too.
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(reqwest::Error::without_url)
            .context("JWKS body")?
        {
            if body.len() + chunk.len() > JWKS_MAX_BYTES {
                anyhow::bail!("JWKS document over {JWKS_MAX_BYTES} bytes");
            }
            body.extend_from_slice(&chunk);
        }
        KeySet::parse(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_opaque_bounded_strings() {
        assert!(UserId::parse("Yh3kXq9f0aZ1b2c3d4e5f6g7h8i9j0kL").is_some());
        assert!(UserId::parse("").is_none());
        assert!(UserId::parse(&"é".repeat(255)).is_some());
        assert!(UserId::parse(&"a".repeat(256)).is_none());
        assert!(UserId::parse("a\0b").is_none());
    }

    #[test]
    fn jwks_parsing_skips_keys_it_cannot_use() {
        let doc = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"sym"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"ed"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"mislabelled","alg":"RS256"},
            {"kty":"weird"}
        ]}"#;
        let set = KeySet::parse(doc).unwrap();
        assert!(set.find(Some("ed"), Algorithm::EdDSA).is_some());
        assert!(set.find(Some("ed"), Algorithm::RS256).is_none());
        assert!(set.find(Some("sym"), Algorithm::HS256).is_none());
        assert!(set.find(Some("mislabelled"), Algorithm::EdDSA).is_none());
        assert!(set.find(None, Algorithm::EdDSA).is_some());
    }
}

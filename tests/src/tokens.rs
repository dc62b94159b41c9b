//! Tokens for tests: HS256 with the test secret, and EdDSA / ES256 / RS256 with the
//! fixture keys whose public halves are in `fixtures/jwks.json`.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims a valid Better Auth token would carry for `sub`.
pub fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "iat": now(), "exp": now() + 600 })
}

pub fn hs256_with(secret: &str, claims: &Value) -> String {
    shared::auth::sign_hs256(secret, claims).expect("sign HS256")
}

pub fn hs256(claims: &Value) -> String {
    hs256_with(crate::TEST_SECRET, claims)
}

/// A valid HS256 token for `sub`.
pub fn token(sub: &str) -> String {
    shared::auth::mint_hs256(crate::TEST_SECRET, sub, 600).expect("sign HS256")
}

/// Signs with a fixture key: `ed25519`, `ed25519-rotated`, `es256` or `rs256`.
pub fn signed(alg: Algorithm, fixture: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = std::fs::read(format!(
        "{}/fixtures/{fixture}.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture key");
    let key = match alg {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        other => panic!("no fixture for {other:?}"),
    }
    .expect("fixture key parses");
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).expect("sign")
}

/// Unpadded base64url, as JWTs use.
fn b64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A token with an arbitrary header and payload and a given signature, for forgeries.
pub fn raw(header: &Value, payload: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes()),
        b64(signature)
    )
}

/// An HS256 signature over `header.payload` with an arbitrary key (e.g. a public key).
pub fn hs256_forged(header: &Value, payload: &Value, key: &[u8]) -> String {
    use jsonwebtoken::crypto::sign;
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    );
    let signature = sign(
        message.as_bytes(),
        &EncodingKey::from_secret(key),
        Algorithm::HS256,
    )
    .expect("sign");
    format!("{message}.{signature}")
}

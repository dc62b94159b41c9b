//! Secrets read from AWS Secrets Manager once per cold start, when their ARNs are set.
//!
//! `DATABASE_URL_SECRET_ARN` supplies `DATABASE_URL` and `BETTER_AUTH_SECRET_ARN` supplies
//! `BETTER_AUTH_SECRET`. Without either ARN the AWS SDK is never touched, so it costs no
//! cold-start time. Errors name the variable and the ARN, never a secret's value.

use std::collections::HashMap;

/// Which secret fills which setting.
pub const SECRET_SETTINGS: [(&str, &str); 2] = [
    ("DATABASE_URL_SECRET_ARN", "DATABASE_URL"),
    ("BETTER_AUTH_SECRET_ARN", "BETTER_AUTH_SECRET"),
];

/// The settings whose values come from Secrets Manager, keyed by setting name.
pub async fn resolve(
    get: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<HashMap<&'static str, String>> {
    let wanted: Vec<(&'static str, &'static str, String)> = SECRET_SETTINGS
        .iter()
        .filter_map(|(arn_var, target)| {
            get(arn_var)
                .filter(|arn| !arn.trim().is_empty())
                .map(|arn| (*arn_var, *target, arn.trim().to_owned()))
        })
        .collect();
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    fetch(wanted).await
}

#[cfg(feature = "secrets-manager")]
async fn fetch(
    wanted: Vec<(&'static str, &'static str, String)>,
) -> anyhow::Result<HashMap<&'static str, String>> {
    use anyhow::{anyhow, Context as _};
    use aws_config::timeout::TimeoutConfig;
    use aws_sdk_secretsmanager::error::DisplayErrorContext;
    use aws_smithy_http_client::tls;
    use std::time::Duration;

    crate::tls::install_crypto_provider();
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                // With the database's connect timeout (3 s), under Lambda's 10 s for a
                // function's initialisation.
                .operation_timeout(Duration::from_secs(5))
                .build(),
        )
        .load()
        .await;
    let client = &aws_sdk_secretsmanager::Client::new(&config);
    // Both at once: a cold start waits for one round trip to Secrets Manager, not two, and
    // at most one operation timeout.
    let values = futures_util::future::try_join_all(wanted.into_iter().map(
        |(arn_var, target, arn)| async move {
            let output = client
                .get_secret_value()
                .secret_id(&arn)
                .send()
                .await
                .map_err(|err| anyhow!("{}", DisplayErrorContext(&err)))
                .with_context(|| format!("{arn_var}: cannot read secret {arn}"))?;
            let value = output
                .secret_string()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| anyhow!("{arn_var}: secret {arn} has no SecretString value"))?;
            let value =
                secret_value(target, value).with_context(|| format!("{arn_var}: secret {arn}"))?;
            anyhow::Ok((target, value))
        },
    ))
    .await?;
    Ok(values.into_iter().collect())
}

/// The value of setting `target` in a secret's `SecretString`: the string itself, or, when
/// it is a JSON object (the console's "key/value" secrets), its entry named after the
/// setting (or its alias), or its only entry. Any other object is refused, naming its keys,
/// never a value: taken whole, it would be a wrong but plausible value (a 40-byte HS256
/// secret that signs nothing Better Auth sends).
#[cfg(any(feature = "secrets-manager", test))]
fn secret_value(target: &str, raw: &str) -> anyhow::Result<String> {
    let Ok(serde_json::Value::Object(entries)) = serde_json::from_str::<serde_json::Value>(raw)
    else {
        return Ok(raw.to_owned());
    };
    let named = (entries.get(target))
        .or_else(|| crate::config::alias_of(target).and_then(|alias| entries.get(alias)));
    let only = (entries.len() == 1)
        .then(|| entries.values().next())
        .flatten();
    match named
        .or(only)
        .and_then(serde_json::Value::as_str)
        .map(str::trim)
    {
        Some(value) if !value.is_empty() => Ok(value.to_owned()),
        _ => {
            let keys: Vec<&str> = entries.keys().map(String::as_str).collect();
            anyhow::bail!(
                "holds a JSON object (keys: {}) without a non-empty string under \"{target}\": \
                 store the plain value, or a key/value pair named {target}",
                keys.join(", ")
            )
        }
    }
}

#[cfg(not(feature = "secrets-manager"))]
async fn fetch(
    wanted: Vec<(&'static str, &'static str, String)>,
) -> anyhow::Result<HashMap<&'static str, String>> {
    let names: Vec<_> = wanted.iter().map(|(arn_var, _, _)| *arn_var).collect();
    anyhow::bail!(
        "{} set, but this build has no Secrets Manager support (feature `secrets-manager`)",
        names.join(" and ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_value_secret_gives_its_entry_and_a_plain_one_itself() {
        let url = "postgresql://u:p@ep-x-pooler.neon.tech/db?sslmode=require";
        assert_eq!(secret_value("DATABASE_URL", url).unwrap(), url);
        let named = format!(r#"{{"DATABASE_URL": "{url}", "other": "x"}}"#);
        assert_eq!(secret_value("DATABASE_URL", &named).unwrap(), url);
        let alias = format!(r#"{{"NEON_DATABASE_URL": "{url}", "other": "x"}}"#);
        assert_eq!(secret_value("DATABASE_URL", &alias).unwrap(), url);
        assert_eq!(
            secret_value("BETTER_AUTH_SECRET", r#"{"key1": " s3cret-value "}"#).unwrap(),
            "s3cret-value"
        );
        let refused = secret_value(
            "BETTER_AUTH_SECRET",
            r#"{"a": "s3cret-1", "b": "s3cret-2"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(refused.contains("keys: a, b"), "{refused}");
        assert!(!refused.contains("s3cret"), "{refused}");
        assert!(secret_value("BETTER_AUTH_SECRET", r#"{"BETTER_AUTH_SECRET": 42}"#).is_err());
        // Not an object: the string as it is.
        assert_eq!(secret_value("BETTER_AUTH_SECRET", "[1]").unwrap(), "[1]");
    }

    #[tokio::test]
    async fn no_arn_means_no_sdk_and_no_settings() {
        let resolved = resolve(|_| None).await.unwrap();
        assert!(resolved.is_empty());
        let blank = resolve(|name| (name == "DATABASE_URL_SECRET_ARN").then(|| " ".into()))
            .await
            .unwrap();
        assert!(blank.is_empty());
    }
}

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
            anyhow::Ok((target, value.to_owned()))
        },
    ))
    .await?;
    Ok(values.into_iter().collect())
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

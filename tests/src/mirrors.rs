//! The generated files: each function's crate (`functions/<function>/Cargo.toml` and
//! `src/main.rs`) and the `cargo lambda watch` router at the end of the workspace
//! `Cargo.toml`, generated from the route table, and `infra/managed-instances.yaml`,
//! generated from `infra/template.yaml` (see [`managed_instances`]).
//! `cargo run -p tests --bin routes` writes them; `tests/tests/api/routes_agree.rs` fails
//! when one differs. The other mirrors (the SAM template, `docs/openapi.json`, the
//! contract) say more than the table knows, so they are written by hand and checked
//! against it there.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use shared::routes::{FALLBACK_FUNCTION, FALLBACK_METHODS, ROUTES};

/// The line that starts the generated router; everything after it in `Cargo.toml` is
/// generated.
const ROUTER_HEADER: &str = "[workspace.metadata.lambda.watch.router]\n";

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every generated file: its path from the repository root and its contents. `Cargo.toml`
/// is read, and only its router section replaced.
pub fn generated() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for route in &ROUTES {
        let dir = Path::new("functions").join(route.function);
        files.push((dir.join("Cargo.toml"), function_manifest(route.function)));
        files.push((
            dir.join("src/main.rs"),
            function_main(route.method, route.path, route.function, route.operation),
        ));
    }
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).expect("Cargo.toml");
    let kept = manifest
        .find(ROUTER_HEADER)
        .map_or(manifest.as_str(), |at| &manifest[..at]);
    files.push(("Cargo.toml".into(), format!("{kept}{}", watch_router())));
    let template =
        std::fs::read_to_string(repo().join("infra/template.yaml")).expect("infra/template.yaml");
    files.push((
        "infra/managed-instances.yaml".into(),
        managed_instances(&template),
    ));
    files
}

fn function_manifest(function: &str) -> String {
    format!(
        r#"[package]
name = "{function}"
version.workspace = true
edition.workspace = true
rust-version.workspace = true
license.workspace = true
publish.workspace = true

[dependencies]
shared = {{ workspace = true, default-features = false }}
lambda_http.workspace = true
tokio.workspace = true

[features]
default = ["secrets-manager"]
secrets-manager = ["shared/secrets-manager"]
"#
    )
}

fn function_main(
    method: &str,
    path: &str,
    function: &str,
    operation: shared::routes::Operation,
) -> String {
    let handler = function.replace('-', "_");
    format!(
        r#"//! Lambda function for `{method} {path}`.
// The handler's future inside the Lambda runtime's is deep, and rustc computes its layout
// only to this query depth: at the default 128, complete-task was at 125 to 128, and a
// fresh build (no incremental cache) failed with "queries overflow the depth limit".
#![recursion_limit = "256"]

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {{
    let state = shared::cold_start(shared::routes::Operation::{operation:?}).await?;
    shared::lambda::run(move |req| shared::handlers::{handler}(state, req)).await
}}
"#
    )
}

/// Each path with its routes, in the table's order, and one `OPTIONS` entry sent to the
/// path's first function (scripts/dev runs watch with `--disable-cors`, so preflights
/// reach a function, which answers them as API Gateway does in AWS); then, as the fallback
/// routes do in AWS, every other method of [`FALLBACK_METHODS`] of each path, and every
/// method of them and `OPTIONS` of every other path (`/` and `/{*proxy}`, matchit's
/// catch-all, whose parameter the function reads as API Gateway's `{proxy+}`), sent to the
/// fallback function. (The watch router matches a path first and then its methods, so a
/// catch-all does not take the other methods of a routed path.)
fn watch_router() -> String {
    let mut paths: Vec<&str> = Vec::new();
    for route in &ROUTES {
        if !paths.contains(&route.path) {
            paths.push(route.path);
        }
    }
    let mut out = String::from(ROUTER_HEADER);
    // Each path also with one trailing slash, which API Gateway routes as the path without
    // it (`Route::match_path`).
    let with_slashes = paths.iter().flat_map(|path| [(*path, ""), (*path, "/")]);
    for (path, slash) in with_slashes {
        let routes: Vec<_> = ROUTES.iter().filter(|r| r.path == path).collect();
        let _ = writeln!(out, "\"{path}{slash}\" = [");
        for route in &routes {
            for method in route.methods() {
                let _ = writeln!(
                    out,
                    "    {{ method = \"{method}\", function = \"{}\" }},",
                    route.function
                );
            }
        }
        let _ = writeln!(
            out,
            "    {{ method = \"OPTIONS\", function = \"{}\" }},",
            routes[0].function
        );
        for method in FALLBACK_METHODS {
            if routes.iter().all(|route| !route.takes(method)) {
                let _ = writeln!(
                    out,
                    "    {{ method = \"{method}\", function = \"{FALLBACK_FUNCTION}\" }},"
                );
            }
        }
        out.push_str("]\n");
    }
    for path in ["/", "/{*proxy}"] {
        let _ = writeln!(out, "\"{path}\" = [");
        for method in FALLBACK_METHODS.iter().chain(&["OPTIONS"]) {
            let _ = writeln!(
                out,
                "    {{ method = \"{method}\", function = \"{FALLBACK_FUNCTION}\" }},"
            );
        }
        out.push_str("]\n");
    }
    out
}

/// `infra/managed-instances.yaml`: `infra/template.yaml` with every function on Lambda
/// Managed Instances. A second template rather than a parameter, because a function's
/// compute type is fixed when it is created (CapacityProviderConfig cannot be added or
/// removed later) and the SAM transform takes `CapacityProviderConfig` only as a literal,
/// not under `Fn::If`. Generated, so the two templates never drift: each change below
/// finds its place by a YAML key (or an exact line) and panics, naming it, when that
/// place is gone or ambiguous, rather than guess.
///
/// The changes: a header; a `managed` deploy hint; the capacity provider's parameters
/// replace `ReservedConcurrencyPerFunction` (reserved concurrency bounded the classic
/// functions' connections; here `FunctionScalingConfig` does) and its condition; in
/// `Globals.Function`, 2048 MB (the smallest managed-instances function),
/// `CapacityProviderConfig`, `FunctionScalingConfig` and `PublishToLatestPublished` in
/// place of `ReservedConcurrentExecutions`, and `DB_POOL_SIZE` unset unless the
/// `DbPoolSize` parameter says (the pool follows `AWS_LAMBDA_MAX_CONCURRENCY`); the
/// `AWS::Serverless::CapacityProvider` resource and its name as an output.
pub fn managed_instances(template: &str) -> String {
    let mut out = template.to_owned();
    replace_entry(&mut out, "Description:", MANAGED_DESCRIPTION);
    replace_exact(&mut out, DEPLOY_HINT, MANAGED_DEPLOY_HINT);
    replace_entry(
        &mut out,
        "  ReservedConcurrencyPerFunction:",
        MANAGED_PARAMETERS,
    );
    replace_entry(&mut out, "  ReservesConcurrency:", MANAGED_CONDITIONS);
    replace_entry(&mut out, "    MemorySize:", MANAGED_MEMORY);
    replace_entry(
        &mut out,
        "    ReservedConcurrentExecutions:",
        MANAGED_FUNCTION_GLOBALS,
    );
    replace_entry(&mut out, "        DB_POOL_SIZE:", MANAGED_DB_POOL_SIZE);
    insert_after_line(&mut out, "Resources:", MANAGED_RESOURCES);
    insert_after_line(&mut out, "Outputs:", MANAGED_OUTPUTS);
    format!("{MANAGED_HEADER}{out}")
}

const MANAGED_HEADER: &str = "\
# GENERATED from infra/template.yaml by `cargo run -p tests --bin routes`
# (managed_instances in tests/src/mirrors.rs): edit those, not this file;
# tests/tests/api/routes_agree.rs fails when it is out of date.
#
# The stack of infra/template.yaml with its seven functions on Lambda Managed Instances:
# EC2 instances in your VPC, launched, patched and scaled by Lambda (a capacity
# provider), each execution environment serving many requests at once. A template of
# its own because a function's compute type is fixed when the function is created, and
# SAM accepts CapacityProviderConfig only as a literal, not under Fn::If. See README.md,
# \"Lambda Managed Instances\".
";

const MANAGED_DESCRIPTION: &str = "\
Description: >-
  Todo API on Lambda Managed Instances: seven Rust Lambda functions (one per route of
  shared/src/routes.rs) on a capacity provider in your VPC, behind one API Gateway HTTP
  API, with Neon Postgres and Better Auth tokens. Secrets are passed as Secrets Manager
  ARNs, never as values.
";

const DEPLOY_HINT: &str = "\
# Build and deploy from the repository root (samconfig.toml points here):
#   sam validate --lint && sam build && sam deploy --guided
";

const MANAGED_DEPLOY_HINT: &str = "\
# Build and deploy from the repository root with samconfig.toml's `managed` environment
# (this template, its own build directory and its own stack, todo-api-managed):
#   sam validate --config-env managed && sam build --config-env managed
#   sam deploy --config-env managed --guided
";

const MANAGED_PARAMETERS: &str = r#"  SubnetIds:
    Type: List<AWS::EC2::Subnet::Id>
    Description: >-
      Subnets (comma-separated; several Availability Zones) where Lambda launches the
      capacity provider's instances. The functions reach Neon, the JWKS URL, Secrets
      Manager and CloudWatch Logs from there: private subnets with a route to a NAT
      gateway.
  SecurityGroupIds:
    Type: List<AWS::EC2::SecurityGroup::Id>
    Description: >-
      Security groups (comma-separated, at most 5) of the instances: outbound TCP 443
      (AWS APIs, the JWKS) and 5432 (Neon) must be allowed; nothing inbound is needed.
  PerExecutionEnvironmentMaxConcurrency:
    Type: Number
    Default: 32
    MinValue: 1
    MaxValue: 1600
    Description: >-
      Requests one execution environment serves at once (AWS_LAMBDA_MAX_CONCURRENCY),
      and so the most Postgres connections its pool opens.
  MinExecutionEnvironments:
    Type: Number
    Default: 3
    MinValue: 1
    MaxValue: 15000
    Description: >-
      Execution environments (2 GB, 1 vCPU each) each function keeps running, traffic
      or not; Lambda's default, 3, spreads them over three Availability Zones.
  MaxExecutionEnvironments:
    Type: Number
    Default: 6
    MinValue: 1
    MaxValue: 15000
    Description: >-
      Execution environments each function may scale to (at least
      MinExecutionEnvironments). Bounds Postgres connections: at most 7 x this x
      PerExecutionEnvironmentMaxConcurrency.
  DbPoolSize:
    Type: String
    Default: ""
    AllowedPattern: "^([1-9][0-9]*)?$"
    ConstraintDescription: must be empty or a whole number
    Description: >-
      DB_POOL_SIZE, Postgres connections per execution environment; empty (the default)
      for PerExecutionEnvironmentMaxConcurrency. Fewer bound Neon connections lower:
      requests beyond them wait up to DB_POOL_TIMEOUT_MS for one (503 after that).
  MaxVCpuCount:
    Type: String
    Default: ""
    AllowedPattern: "^([2-9]|[1-9][0-9]+)?$"
    ConstraintDescription: must be empty or a whole number from 2 to 15000
    Description: >-
      Most vCPUs the capacity provider's instances may have in all (2 to 15000); empty
      for no limit beyond the functions' MaxExecutionEnvironments.
"#;

const MANAGED_CONDITIONS: &str = r#"  LimitsVCpus: !Not [!Equals [!Ref MaxVCpuCount, ""]]
  SetsDbPoolSize: !Not [!Equals [!Ref DbPoolSize, ""]]
"#;

const MANAGED_DB_POOL_SIZE: &str =
    "        # Unset unless DbPoolSize is given: the pool follows AWS_LAMBDA_MAX_CONCURRENCY.
        DB_POOL_SIZE: !If [SetsDbPoolSize, !Ref DbPoolSize, !Ref AWS::NoValue]
";

const MANAGED_MEMORY: &str =
    "    # 2048 MB: the smallest function Lambda Managed Instances runs (2 GB and 1 vCPU, at
    # ExecutionEnvironmentMemoryGiBPerVCpu 2, below). One environment serves
    # PerExecutionEnvironmentMaxConcurrency requests at once with it; the binaries need
    # well under 64 MB each, so this is CPU, not headroom.
    MemorySize: 2048
";

const MANAGED_FUNCTION_GLOBALS: &str = "    # Every function on CapacityProvider. Each execution environment serves up to
    # PerExecutionEnvironmentMaxConcurrency requests at once (lambda_runtime's
    # run_concurrent) with one state and one pool of that many connections
    # (AWS_LAMBDA_MAX_CONCURRENCY; DbPoolSize sets fewer). FunctionScalingConfig bounds the
    # environments, and so Neon connections: at most 7 x MaxExecutionEnvironments x the
    # pool size, opened as requests need them; no reserved concurrency. API Gateway invokes
    # the unqualified function, which on managed instances runs its $LATEST.PUBLISHED
    # version; PublishToLatestPublished republishes that on every update. The ARN is built
    # from the capacity provider's Ref (its name): cfn-lint's schema of
    # AWS::Serverless::CapacityProvider declares no attributes, so it fails
    # `!GetAtt CapacityProvider.Arn` (E1010) although SAM resolves it.
    CapacityProviderConfig:
      Arn: !Sub arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:capacity-provider:${CapacityProvider}
      PerExecutionEnvironmentMaxConcurrency: !Ref PerExecutionEnvironmentMaxConcurrency
      ExecutionEnvironmentMemoryGiBPerVCpu: 2
    FunctionScalingConfig:
      MinExecutionEnvironments: !Ref MinExecutionEnvironments
      MaxExecutionEnvironments: !Ref MaxExecutionEnvironments
    PublishToLatestPublished: true
";

const MANAGED_RESOURCES: &str =
    "  # The instances the functions run on, in your subnets, arm64 like the binaries. Lambda
  # launches, patches and scales them; SAM adds the operator role it does that with
  # (CapacityProviderOperatorRole, AWS managed policy AWSLambdaManagedEC2ResourceOperator).
  CapacityProvider:
    Type: AWS::Serverless::CapacityProvider
    Properties:
      VpcConfig:
        SubnetIds: !Ref SubnetIds
        SecurityGroupIds: !Ref SecurityGroupIds
      InstanceRequirements:
        Architectures: [arm64]
      ScalingConfig:
        MaxVCpuCount: !If [LimitsVCpus, !Ref MaxVCpuCount, !Ref AWS::NoValue]

";

const MANAGED_OUTPUTS: &str = "  CapacityProviderName:
    Description: The capacity provider the functions run on (its CloudWatch metrics' dimension).
    Value: !Ref CapacityProvider
";

/// The lines of `text`, each with its byte offset and its `\n`.
fn lines(text: &str) -> Vec<(usize, &str)> {
    let mut at = 0;
    text.split_inclusive('\n')
        .map(|line| {
            let start = at;
            at += line.len();
            (start, line)
        })
        .collect()
}

/// The index of the one line for which `matches` holds; panics, naming `what`, unless
/// there is exactly one.
fn the_line(lines: &[(usize, &str)], what: &str, matches: impl Fn(&str) -> bool) -> usize {
    let found: Vec<usize> = (0..lines.len()).filter(|&i| matches(lines[i].1)).collect();
    assert!(
        found.len() == 1,
        "infra/template.yaml has {} lines {what}, not one: update managed_instances() in \
         tests/src/mirrors.rs",
        found.len()
    );
    found[0]
}

/// Replaces the YAML entry on the one line that starts with `key` (indentation included,
/// e.g. `"    MemorySize:"`): that line, the comment lines right above it at its
/// indentation, and every line below it that is indented deeper (blank lines within).
fn replace_entry(text: &mut String, key: &str, replacement: &str) {
    let indent = key.len() - key.trim_start().len();
    let depth = |line: &str| line.len() - line.trim_start().len();
    let blank = |line: &str| line.trim().is_empty();
    let all = lines(text);
    let at = the_line(&all, &format!("starting with {key:?}"), |line| {
        line.starts_with(key)
    });
    let mut first = at;
    while first > 0 {
        let line = all[first - 1].1;
        if blank(line) || depth(line) != indent || !line.trim_start().starts_with('#') {
            break;
        }
        first -= 1;
    }
    let mut end = at + 1;
    let mut next = at + 1;
    while next < all.len() && (blank(all[next].1) || depth(all[next].1) > indent) {
        next += 1;
        if !blank(all[next - 1].1) {
            end = next;
        }
    }
    let start = all[first].0;
    let stop = all.get(end).map_or(text.len(), |line| line.0);
    text.replace_range(start..stop, replacement);
}

/// Replaces `old`, which must occur exactly once.
fn replace_exact(text: &mut String, old: &str, new: &str) {
    let count = text.matches(old).count();
    assert!(
        count == 1,
        "infra/template.yaml has {count} copies of {old:?}, not one: update \
         managed_instances() in tests/src/mirrors.rs"
    );
    *text = text.replacen(old, new, 1);
}

/// Inserts `insertion` after the one line that is exactly `line`.
fn insert_after_line(text: &mut String, line: &str, insertion: &str) {
    let all = lines(text);
    let at = the_line(&all, &format!("reading {line:?}"), |l| {
        l.trim_end_matches('\n') == line
    });
    let after = all.get(at + 1).map_or(text.len(), |next| next.0);
    text.insert_str(after, insertion);
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
Top: 1
Parameters:
  A:
    Type: String
  # about B
  # more about B
  B:
    Type: Number

    Default: 1
  C:
    Type: String
";

    #[test]
    fn an_entry_takes_its_comments_and_its_deeper_lines() {
        let mut text = YAML.to_owned();
        replace_entry(&mut text, "  B:", "  D: x\n");
        assert_eq!(
            text,
            "Top: 1\nParameters:\n  A:\n    Type: String\n  D: x\n  C:\n    Type: String\n"
        );
        insert_after_line(&mut text, "Parameters:", "  Z: 0\n");
        assert!(text.contains("Parameters:\n  Z: 0\n  A:\n"), "{text}");
    }

    #[test]
    #[should_panic(expected = "has 0 lines starting with \"  E:\"")]
    fn a_missing_entry_panics() {
        replace_entry(&mut YAML.to_owned(), "  E:", "");
    }

    #[test]
    #[should_panic(expected = "has 2 lines starting with \"    Type:")]
    fn an_ambiguous_entry_panics() {
        replace_entry(&mut YAML.to_owned(), "    Type: String", "");
    }

    #[test]
    #[should_panic(expected = "has 0 copies of")]
    fn a_missing_line_panics() {
        replace_exact(&mut YAML.to_owned(), "Bottom: 2\n", "");
    }
}

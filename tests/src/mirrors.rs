//! The files that mirror the route table, generated from it: each function's crate
//! (`functions/<function>/Cargo.toml` and `src/main.rs`) and the `cargo lambda watch`
//! router at the end of the workspace `Cargo.toml`. `cargo run -p tests --bin routes`
//! writes them; `tests/tests/api/routes_agree.rs` fails when one differs. The other
//! mirrors (the SAM template, `docs/openapi.json`, the contract) say more than the table
//! knows, so they are written by hand and checked against it there.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use shared::routes::ROUTES;

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
            function_main(route.method, route.path, route.function),
        ));
    }
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).expect("Cargo.toml");
    let kept = manifest
        .find(ROUTER_HEADER)
        .map_or(manifest.as_str(), |at| &manifest[..at]);
    files.push(("Cargo.toml".into(), format!("{kept}{}", watch_router())));
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

fn function_main(method: &str, path: &str, function: &str) -> String {
    let handler = function.replace('-', "_");
    format!(
        r#"//! Lambda function for `{method} {path}`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {{
    let state = shared::cold_start().await?;
    shared::lambda::run(move |req| shared::handlers::{handler}(state, req)).await
}}
"#
    )
}

/// Each path with its routes, in the table's order, and one `OPTIONS` entry sent to the
/// path's first function (scripts/dev runs watch with `--disable-cors`, so preflights
/// reach a function, which answers them as API Gateway does in AWS).
fn watch_router() -> String {
    let mut paths: Vec<&str> = Vec::new();
    for route in &ROUTES {
        if !paths.contains(&route.path) {
            paths.push(route.path);
        }
    }
    let mut out = String::from(ROUTER_HEADER);
    for path in paths {
        let routes: Vec<_> = ROUTES.iter().filter(|r| r.path == path).collect();
        let _ = writeln!(out, "\"{path}\" = [");
        for route in &routes {
            let _ = writeln!(
                out,
                "    {{ method = \"{}\", function = \"{}\" }},",
                route.method, route.function
            );
        }
        let _ = writeln!(
            out,
            "    {{ method = \"OPTIONS\", function = \"{}\" }},",
            routes[0].function
        );
        out.push_str("]\n");
    }
    out
}

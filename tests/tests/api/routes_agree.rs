//! The route table in `shared/src/routes.rs` is the single source of truth: the
//! `cargo lambda watch` router, the SAM template, the OpenAPI document and the contract
//! must agree with it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use shared::routes::{FALLBACK_FUNCTION, FALLBACK_METHODS, FALLBACK_PATHS, ROUTES};

type RouteSet = BTreeSet<(String, String, String)>;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn route_table() -> RouteSet {
    ROUTES
        .iter()
        .map(|r| {
            (
                r.method.to_owned(),
                r.path.to_owned(),
                r.function.to_owned(),
            )
        })
        .collect()
}

/// [`route_table`] with every method each route takes ([`shared::routes::Route::methods`]:
/// `HEAD` beside each `GET`), as the SAM templates and the watch router route them.
fn routed_table() -> RouteSet {
    ROUTES
        .iter()
        .flat_map(|r| {
            r.methods()
                .map(|method| (method.to_owned(), r.path.to_owned(), r.function.to_owned()))
        })
        .collect()
}

/// The fallback routes, as `(method, path, function)`: [`FALLBACK_METHODS`] on each of
/// [`FALLBACK_PATHS`], written `path` (API Gateway's syntax, `{proxy+}`) or `catch_all`
/// for the other path.
fn fallback_routes(catch_all: &str) -> RouteSet {
    let mut routes = RouteSet::new();
    for path in FALLBACK_PATHS {
        let path = if path == "/" { path } else { catch_all };
        for method in FALLBACK_METHODS {
            routes.insert((
                method.to_owned(),
                path.to_owned(),
                FALLBACK_FUNCTION.to_owned(),
            ));
        }
    }
    routes
}

#[test]
fn the_watch_router_serves_every_route_with_its_function() {
    let table = routed_table();
    let paths: BTreeSet<&str> = ROUTES.iter().map(|r| r.path).collect();
    let mut routes = RouteSet::new();
    let mut preflights = Vec::new();
    let mut fallback = RouteSet::new();
    // Each routed path is there a second time with one trailing slash, for the same
    // functions: API Gateway routes `/api/u/tasks/` as `/api/u/tasks`.
    let (slashed, plain): (Vec<_>, Vec<_>) = watch_router()
        .into_iter()
        .partition(|(_, path, _)| path.len() > 1 && path.ends_with('/'));
    let twins: BTreeSet<_> = plain
        .iter()
        .filter(|(_, path, _)| paths.contains(path.as_str()))
        .map(|(method, path, function)| (method.clone(), format!("{path}/"), function.clone()))
        .collect();
    assert_eq!(slashed.into_iter().collect::<BTreeSet<_>>(), twins);
    for route in plain {
        if table.contains(&route) {
            routes.insert(route);
        } else if route.0 == "OPTIONS" && paths.contains(route.1.as_str()) {
            preflights.push(route);
        } else {
            fallback.insert(route);
        }
    }
    assert_eq!(routes, table);
    // As the fallback routes do in AWS: every other method of a routed path, and every
    // method of every other path (`OPTIONS` too: a preflight, which API Gateway answers in
    // AWS on any path), to the fallback function.
    let mut expected = fallback_routes("/{*proxy}");
    for path in ["/", "/{*proxy}"] {
        expected.insert((
            "OPTIONS".to_owned(),
            path.to_owned(),
            FALLBACK_FUNCTION.to_owned(),
        ));
    }
    for path in &paths {
        for method in FALLBACK_METHODS {
            if !ROUTES.iter().any(|r| r.path == *path && r.takes(method)) {
                expected.insert((
                    method.to_owned(),
                    (*path).to_owned(),
                    FALLBACK_FUNCTION.to_owned(),
                ));
            }
        }
    }
    assert_eq!(fallback, expected);
    // scripts/dev runs watch with --disable-cors, so every path needs one OPTIONS entry,
    // sent to a function that serves that path (any function answers a preflight), as
    // API Gateway answers preflights on every route in AWS.
    let mut preflight_paths: Vec<&str> = preflights.iter().map(|r| r.1.as_str()).collect();
    preflight_paths.sort_unstable();
    assert_eq!(
        preflight_paths,
        paths.iter().copied().collect::<Vec<_>>(),
        "exactly one OPTIONS entry per routed path"
    );
    for (_, path, function) in &preflights {
        assert!(
            ROUTES
                .iter()
                .any(|r| r.path == path && r.function == function),
            "OPTIONS {path} goes to {function}, which does not serve {path}"
        );
    }
}

/// `(method, path, function)` of every `[workspace.metadata.lambda.watch.router]` entry,
/// duplicates kept.
fn watch_router() -> Vec<(String, String, String)> {
    let manifest: toml::Table = std::fs::read_to_string(repo().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let router = manifest["workspace"]["metadata"]["lambda"]["watch"]["router"]
        .as_table()
        .expect("[workspace.metadata.lambda.watch.router]");
    let mut routes = Vec::new();
    for (path, entries) in router {
        for entry in entries.as_array().expect("an array of {method, function}") {
            routes.push((
                entry["method"].as_str().unwrap().to_owned(),
                path.clone(),
                entry["function"].as_str().unwrap().to_owned(),
            ));
        }
    }
    routes
}

#[test]
fn scripts_dev_turns_off_the_permissive_cors_of_cargo_lambda_watch() {
    let script = std::fs::read_to_string(repo().join("scripts/dev")).unwrap();
    let watch = script
        .lines()
        .skip_while(|line| !line.contains("cargo lambda watch --"))
        .take(2)
        .collect::<String>();
    assert!(watch.contains("--disable-cors"), "{watch}");
}

#[test]
fn the_generated_mirrors_are_up_to_date() {
    for (path, expected) in tests::mirrors::generated() {
        let actual = std::fs::read_to_string(repo().join(&path)).unwrap_or_default();
        assert!(
            actual == expected,
            "{} is not what its source generates (the route table, or infra/template.yaml): \
             run `cargo run -p tests --bin routes`",
            path.display()
        );
    }
    let mut crates: Vec<String> = std::fs::read_dir(repo().join("functions"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    crates.sort_unstable();
    let mut functions: Vec<&str> = ROUTES.iter().map(|r| r.function).collect();
    functions.sort_unstable();
    assert_eq!(
        crates, functions,
        "functions/ holds exactly one crate per route"
    );
}

#[test]
fn every_function_has_its_crate() {
    for route in &ROUTES {
        let manifest = repo()
            .join("functions")
            .join(route.function)
            .join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .unwrap_or_else(|_| panic!("{} is missing", manifest.display()));
        assert!(text.contains(&format!("name = \"{}\"", route.function)));
    }
}

#[test]
fn the_openapi_document_matches_paths_methods_and_statuses() {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("docs/openapi.json")).unwrap())
            .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = RouteSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let method = method.to_uppercase();
            let function = operation["x-lambda-function"].as_str().unwrap().to_owned();
            let route = ROUTES
                .iter()
                .find(|r| r.method == method && r.path == path)
                .unwrap_or_else(|| panic!("{method} {path} is documented but not routed"));
            let mut statuses: BTreeSet<u16> = operation["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|code| code.parse().expect("numeric status codes only"))
                .collect();
            statuses.remove(&500);
            assert_eq!(
                statuses,
                route.statuses.iter().copied().collect(),
                "status codes of {method} {path}"
            );
            documented.insert((method, path.clone(), function));
        }
    }
    assert_eq!(documented, route_table());
}

/// `../shared/CONTRACT.md` lives beside the repository (it is documentation we are given,
/// not part of the repo). CI always has it; a local checkout without it skips this check
/// and says so.
#[test]
fn the_contract_lists_the_same_routes() {
    let contract = repo().join("../shared/CONTRACT.md");
    let Ok(text) = std::fs::read_to_string(&contract) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is missing in CI",
            contract.display()
        );
        eprintln!(
            "note: {} not found; contract check skipped",
            contract.display()
        );
        return;
    };
    assert_eq!(markdown_routes(&text), route_table());
}

#[test]
fn the_readme_lists_the_same_routes() {
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert_eq!(markdown_routes(&text), route_table());
}

/// The `| Method | `path` | `function` | …` rows of a Markdown document's route table.
fn markdown_routes(text: &str) -> RouteSet {
    let mut routes = RouteSet::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 {
            continue;
        }
        let (method, path, function) = (cells[1], cells[2], cells[3]);
        if ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method) && path.starts_with('`') {
            routes.insert((
                method.to_owned(),
                path.trim_matches('`').to_owned(),
                function.trim_matches('`').to_owned(),
            ));
        }
    }
    routes
}

/// Both templates: the default one and `infra/managed-instances.yaml`, generated from it.
/// Besides the table's routes, exactly the fallback routes, none of them for `OPTIONS` (a
/// route that takes it would take the CORS preflights API Gateway answers itself).
#[test]
fn the_sam_templates_route_every_route_to_its_function() {
    let mut expected = routed_table();
    expected.extend(fallback_routes("/{proxy+}"));
    assert!(expected
        .iter()
        .all(|(method, _, _)| method != "OPTIONS" && method != "ANY"));
    for template in ["infra/template.yaml", "infra/managed-instances.yaml"] {
        assert_eq!(sam_template_routes(template), expected, "{template}");
    }
}

/// A SAM template of the repository, parsed.
fn sam_template(template: &str) -> yaml_rust2::Yaml {
    let text = std::fs::read_to_string(repo().join(template)).unwrap();
    let mut docs =
        yaml_rust2::YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{template}: {e}"));
    docs.swap_remove(0)
}

fn sam_template_routes(template: &str) -> RouteSet {
    use yaml_rust2::Yaml;
    let doc = sam_template(template);
    let resources = doc["Resources"].as_hash().expect("Resources");
    let mut routes = RouteSet::new();
    let mut functions = 0;
    for (_, resource) in resources {
        if resource["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        functions += 1;
        assert_eq!(
            resource["Metadata"]["BuildMethod"].as_str(),
            Some("rust-cargolambda")
        );
        let binary = resource["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .expect("BuildProperties.Binary");
        let events = resource["Properties"]["Events"].as_hash().expect("Events");
        for (_, event) in events {
            assert_eq!(event["Type"].as_str(), Some("HttpApi"));
            let properties = &event["Properties"];
            assert!(!matches!(properties["ApiId"], Yaml::BadValue), "ApiId");
            routes.insert((
                properties["Method"].as_str().unwrap().to_uppercase(),
                properties["Path"].as_str().unwrap().to_owned(),
                binary.to_owned(),
            ));
        }
    }
    assert_eq!(functions, ROUTES.len(), "{template}");
    routes
}

/// API Gateway answers CORS in AWS, `shared::cors` locally: both templates list exactly the
/// methods and headers the local answers carry, so a browser reads the same headers in
/// both places (a header missing from `ExposeHeaders` is invisible to browser code).
#[test]
fn the_sam_templates_answer_cors_as_the_functions_do() {
    use shared::cors::{CORS_ALLOW_HEADERS, CORS_ALLOW_METHODS, CORS_EXPOSE_HEADERS};
    let listed =
        |list: &str| -> Vec<String> { list.split(',').map(|h| h.trim().to_lowercase()).collect() };
    for template in ["infra/template.yaml", "infra/managed-instances.yaml"] {
        let doc = sam_template(template);
        let cors = &doc["Resources"]["HttpApi"]["Properties"]["CorsConfiguration"];
        let of = |key: &str| -> Vec<String> {
            cors[key]
                .as_vec()
                .unwrap_or_else(|| panic!("{template}: CorsConfiguration.{key}"))
                .iter()
                .map(|h| h.as_str().unwrap().to_lowercase())
                .collect()
        };
        assert_eq!(of("AllowMethods"), listed(CORS_ALLOW_METHODS), "{template}");
        assert_eq!(of("AllowHeaders"), listed(CORS_ALLOW_HEADERS), "{template}");
        assert_eq!(
            of("ExposeHeaders"),
            listed(CORS_EXPOSE_HEADERS),
            "{template}"
        );
    }
}

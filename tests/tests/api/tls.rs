//! TLS to Postgres through rustls: a server whose certificate comes from a CA the test
//! makes. Trusted (its CA file) → the API works, with Neon's URL parameters verbatim;
//! untrusted → it refuses to connect and answers 503.

use std::sync::OnceLock;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::json;
use tests::cluster::{Cluster, Options};
use tests::{env, state_with, user_id, ApiEvent};

const PASSWORD: &str = "tls-test-password";

struct TlsServer {
    port: u16,
    ca_file: std::path::PathBuf,
    other_ca_file: std::path::PathBuf,
}

/// A self-signed CA: its certificate (PEM) and what signs with it.
fn ca(name: &str) -> (String, rcgen::Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    (pem, rcgen::Issuer::new(params, key))
}

fn server() -> &'static TlsServer {
    static SERVER: OnceLock<TlsServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let (ca_pem, issuer) = ca("todo-api test CA");
        let server_key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let server_cert = params.signed_by(&server_key, &issuer).unwrap();
        let cluster = Cluster::start_with(Options {
            tls: Some((server_cert.pem(), server_key.serialize_pem())),
            password: Some(PASSWORD.into()),
            ..Options::default()
        });
        let ca_file = cluster.dir.join("ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        let other_ca_file = cluster.dir.join("other-ca.pem");
        std::fs::write(&other_ca_file, ca("some other CA").0).unwrap();
        let url = format!(
            "postgres://postgres:{PASSWORD}@localhost:{}/postgres?sslmode=require",
            cluster.port
        );
        tests::migrate_with(&url, Some(&ca_file));
        TlsServer {
            port: cluster.port,
            ca_file,
            other_ca_file,
        }
    })
}

fn neon_style_url(port: u16) -> String {
    format!(
        "postgresql://postgres:{PASSWORD}@localhost:{port}/postgres?sslmode=require&channel_binding=require"
    )
}

#[tokio::test]
async fn a_trusted_ca_connects_over_tls_with_neon_parameters_verbatim() {
    let server = server();
    let url = neon_style_url(server.port);
    let state = state_with(env(&[
        ("DATABASE_URL", url.as_str()),
        ("DATABASE_CA_FILE", server.ca_file.to_str().unwrap()),
    ]));
    ApiEvent::get("/health")
        .send(&state)
        .await
        .assert_status(200);
    let user = user_id();
    ApiEvent::post(&format!("/api/{user}/tasks"))
        .as_user(&user)
        .json(&json!({"title": "over TLS"}))
        .send(&state)
        .await
        .assert_status(201);

    let client = shared::db::connect_once(
        &url,
        Some(&server.ca_file),
        std::time::Duration::from_secs(10),
    )
    .await
    .unwrap();
    let row = client
        .query_one(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the connection is encrypted");
    assert!(row.get::<_, String>(1).starts_with("TLSv1."));
}

#[tokio::test]
async fn the_ca_can_also_come_from_sslrootcert_in_the_url() {
    let server = server();
    let url = format!(
        "{}&sslrootcert={}",
        neon_style_url(server.port),
        server.ca_file.display()
    );
    let state = state_with(env(&[("DATABASE_URL", url.as_str())]));
    ApiEvent::get("/health")
        .send(&state)
        .await
        .assert_status(200);
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let server = server();
    let url = neon_style_url(server.port);
    for ca_file in [None, Some(server.other_ca_file.to_str().unwrap())] {
        let mut vars = vec![("DATABASE_URL", url.as_str())];
        if let Some(file) = ca_file {
            vars.push(("DATABASE_CA_FILE", file));
        }
        refuses_to_connect(&state_with(env(&vars))).await;
    }
}

/// A state that cannot connect answers `/health` and a listing 503, without the driver's
/// reason (the certificate's) in the body.
async fn refuses_to_connect(state: &shared::AppState) {
    let response = ApiEvent::get("/health").send(state).await;
    response.assert_status(503);
    assert!(
        !response.text().contains("certificate"),
        "no driver details: {}",
        response.text()
    );
    let user = user_id();
    ApiEvent::get(&format!("/api/{user}/tasks"))
        .as_user(&user)
        .send(state)
        .await
        .assert_status(503);
}

/// The cold start of a function over TLS, counted on the wire by a proxy: every round trip
/// from the first byte to the first response. With `sslnegotiation=direct` (Neon's proxy,
/// Postgres 17) the first one, the SSLRequest, goes; Postgres 15 here cannot show it.
#[tokio::test(flavor = "current_thread")]
async fn a_cold_start_over_tls_costs_a_known_number_of_round_trips() {
    use std::sync::atomic::Ordering;
    let server = server();
    let counter = tests::proxy::FlightCounter::start(format!("127.0.0.1:{}", server.port)).await;
    // 127.0.0.1 for the socket, `localhost` for the certificate's name.
    let url = format!(
        "postgresql://postgres:{PASSWORD}@localhost:{}/postgres?sslmode=require&channel_binding=require&hostaddr=127.0.0.1",
        counter.port
    );
    let state = state_with(env(&[
        ("DATABASE_URL", url.as_str()),
        ("DATABASE_CA_FILE", server.ca_file.to_str().unwrap()),
    ]));
    state.tasks.warm_up().await;
    let connected = counter.flights.load(Ordering::SeqCst);
    let user = user_id();
    ApiEvent::get(&format!("/api/{user}/tasks"))
        .as_user(&user)
        .send(&state)
        .await
        .assert_status(200);
    let total = counter.flights.load(Ordering::SeqCst);
    eprintln!(
        "cold start over TLS: {total} client flights to the first response: {connected} to \
         connect (TCP is not counted; SSLRequest, TLS 1.3 handshake, startup, \
         SCRAM-SHA-256-PLUS in two steps), then 1 for the first request, whose statements \
         are prepared in that same flight; sslnegotiation=direct removes the SSLRequest's"
    );
    // SSLRequest, ClientHello, Finished, StartupMessage (the proxy sees Postgres's TLS
    // session tickets pass between the two, so it counts them apart), SASL initial, SASL
    // final; then the request.
    assert!(connected <= 6, "{connected} flights to connect");
    assert_eq!(total - connected, 1, "the first request is one round trip");
}

/// Without `sslmode`, a host that is not this machine is reached over TLS or not at all. A
/// server that answers that it has no TLS (as anyone on the path can answer for it) is
/// refused, where libpq's default, `prefer`, goes on in clear text: the password exchange
/// and every task readable on the way. The host's name decides; `hostaddr` points it at a
/// cluster without TLS.
#[tokio::test]
async fn a_remote_host_without_sslmode_is_never_reached_in_clear_text() {
    let cluster = Cluster::start();
    tests::migrate_with(&cluster.url(), None);
    let url = format!(
        "postgres://postgres@db.example.com:{}/postgres?hostaddr=127.0.0.1",
        cluster.port
    );
    // The same server and route answer in clear text when the URL asks for that in words.
    let clear = format!("{url}&sslmode=disable");
    let state = state_with(env(&[("DATABASE_URL", clear.as_str())]));
    ApiEvent::get("/health")
        .send(&state)
        .await
        .assert_status(200);

    refuses_to_connect(&state_with(env(&[("DATABASE_URL", url.as_str())]))).await;
}

/// A call that gets no answer by its deadline is cancelled, over TLS, through a connection
/// of its own that the client keeps open until the server has processed the cancel and
/// closed it, as libpq does: PgBouncer before 1.20 exits when a cancel's client closes
/// first (pgbouncer#801), which tokio-postgres's own cancel does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_over_tls_waits_for_the_server_to_close_its_connection() {
    use tests::proxy::{Forget, Forgetter};
    let server = server();
    let proxy = Forgetter::start(format!("127.0.0.1:{}", server.port)).await;
    // One address (hostaddr) for the socket, `localhost` for the certificate's name.
    let url = format!(
        "postgresql://postgres:{PASSWORD}@localhost:{}/postgres?sslmode=require&hostaddr=127.0.0.1",
        proxy.port
    );
    let state = state_with(env(&[
        ("DATABASE_URL", url.as_str()),
        ("DATABASE_CA_FILE", server.ca_file.to_str().unwrap()),
        ("DB_POOL_SIZE", "1"),
        ("DB_STATEMENT_TIMEOUT_MS", "300"),
    ]));
    let user = user_id();
    let list = || ApiEvent::get(&format!("/api/{user}/tasks")).as_user(&user);
    list().send(&state).await.assert_status(200);
    // The pooled connection's next call vanishes on its way: no answer, so a cancel.
    proxy.forget(Forget::Silently);
    list().send(&state).await.assert_status(503);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let ended = loop {
        let ended = proxy.ended_since_forget();
        if !ended.is_empty() || std::time::Instant::now() > deadline {
            break ended;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        ended,
        vec![false],
        "one cancel connection, closed by the server first (true: by the client)"
    );
}

/// A cold start whose connection fails says why in its warning: the server's refusal, not
/// only "db error".
#[tokio::test(flavor = "current_thread")]
async fn a_failed_warm_up_logs_its_cause() {
    let server = server();
    let url = format!(
        "postgresql://postgres:wrong-password@localhost:{}/postgres?sslmode=require",
        server.port
    );
    let state = state_with(env(&[
        ("DATABASE_URL", url.as_str()),
        ("DATABASE_CA_FILE", server.ca_file.to_str().unwrap()),
    ]));
    let logs = crate::idle::Logs::default();
    {
        let _capture = logs.capture();
        state.tasks.warm_up().await;
    }
    let line = logs
        .lines()
        .iter()
        .map(|l| l.to_string())
        .collect::<String>();
    assert!(line.contains("password authentication failed"), "{line}");
    assert!(!line.contains("wrong-password"), "{line}");
}

use std::time::Instant;
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = std::env::var("URL").unwrap();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    if std::env::var("PIN").is_ok() {
        std::process::Command::new("taskset")
            .args(["-p", "-c", "0", &pid.to_string()])
            .output()
            .unwrap();
    }
    let sqls: Vec<String> = std::env::args()
        .skip(1)
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .trim()
                .trim_end_matches(';')
                .to_string()
        })
        .collect();
    let stmts: Vec<_> = {
        let mut v = Vec::new();
        for s in &sqls {
            v.push(client.prepare(s).await.unwrap());
        }
        v
    };
    let mut times = vec![Vec::new(); stmts.len()];
    for round in 0..3000 {
        for (i, st) in stmts.iter().enumerate() {
            let t = Instant::now();
            let rows = client.query(st, &[]).await.unwrap();
            let e = t.elapsed();
            std::hint::black_box(rows);
            if round >= 300 {
                times[i].push(e);
            }
        }
    }
    for (i, t) in times.iter_mut().enumerate() {
        t.sort();
        println!("{}: p50 {:?}", i, t[t.len() / 2]);
    }
}

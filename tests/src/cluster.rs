//! A throwaway PostgreSQL cluster for one test run.
//!
//! It lives in a temporary directory, listens on a free port on 127.0.0.1 only, and is
//! stopped and deleted by a watchdog once the test process exits. As root, where `initdb`
//! refuses to run, the server runs as the `postgres` user.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Cluster {
    pub port: u16,
    pub dir: PathBuf,
    options: String,
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`.
pub fn postgres_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries found under /usr/lib/postgresql; \
             run scripts/test (it installs them) or set DATABASE_URL or PG_BIN"
        )
    })
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a server binary, as `postgres` when we are root.
pub fn pg_command(bin: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(bin);
        cmd
    } else {
        Command::new(bin)
    }
}

pub(crate) fn chown_to_postgres(path: &Path) {
    if is_root() {
        run(
            Command::new("chown").arg("postgres:postgres").arg(path),
            "chown",
        );
    }
}

/// A port on 127.0.0.1 that nothing listens on, below the ephemeral range (32768–60999):
/// a port handed out by the kernel (`bind(0)`) is an ephemeral one, which a client socket
/// can take before the server that was meant to have it binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Different processes start at different places; one process never hands out a port twice.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    const FIRST: u16 = 20_000;
    const COUNT: u16 = 12_000;
    let _ = NEXT.compare_exchange(
        0,
        (std::process::id() % u32::from(COUNT)) as u16 + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..COUNT {
        let port = FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % COUNT;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {FIRST}..{}", FIRST + COUNT)
}

pub(crate) fn run(cmd: &mut Command, what: &str) {
    let output = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `cleanup` (sh, with `env`) once this process has exited, from a detached watchdog
/// (`setsid --fork` returns at once), so that a test run never leaves a server behind.
pub(crate) fn spawn_watchdog(what: &str, cleanup: &str, env: &[(&str, &std::ffi::OsStr)]) {
    let script = format!("while kill -0 \"$OWNER\" 2>/dev/null; do sleep 0.5; done; {cleanup}");
    let mut command = Command::new("setsid");
    command
        .args(["--fork", "sh", "-c", &script])
        .env("OWNER", std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("{what} watchdog: {e}"));
    assert!(status.success(), "cannot start the {what} watchdog");
}

/// How a cluster differs from the plain trust-everything default.
#[derive(Default)]
pub struct Options {
    /// Server certificate and key (PEM): TLS on, and only TLS with a password over TCP.
    pub tls: Option<(String, String)>,
    /// Password of the `postgres` user (SCRAM-SHA-256 over TCP).
    pub password: Option<String>,
    /// Commits survive a crash (`fsync`, `synchronous_commit`): for tests that crash the
    /// server and then check what was acknowledged. Off by default, for speed.
    pub durable: bool,
}

impl Cluster {
    /// Creates and starts a cluster; it is removed when this process exits.
    pub fn start() -> Cluster {
        Self::start_with(Options::default())
    }

    /// Like [`Cluster::start`], with TLS and/or password authentication.
    pub fn start_with(options: Options) -> Cluster {
        let bin = postgres_bin_dir();
        let dir = std::env::temp_dir().join(format!(
            "todo-api-pg-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("cluster directory");
        if is_root() {
            run(
                Command::new("chown").arg("postgres:postgres").arg(&dir),
                "chown",
            );
        }
        let data = dir.join("data");
        let mut initdb = pg_command(&bin.join("initdb"));
        match &options.password {
            Some(password) => {
                let pwfile = dir.join("pwfile");
                std::fs::write(&pwfile, password).expect("password file");
                chown_to_postgres(&pwfile);
                initdb
                    .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                    .arg(format!("--pwfile={}", pwfile.display()));
            }
            None => {
                initdb.args(["-A", "trust"]);
            }
        }
        run(
            initdb.arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ]),
            "initdb",
        );
        let port = free_port();
        let mut server_options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            dir.display()
        );
        if !options.durable {
            server_options
                .push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        if let Some((cert, key)) = &options.tls {
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(name);
                std::fs::write(&path, pem).expect("TLS file");
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .expect("TLS file mode");
                chown_to_postgres(&path);
            }
            server_options.push_str(" -c ssl=on");
        }
        let options = server_options;
        run(
            pg_command(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-o", &options, "-l"])
                .arg(dir.join("server.log"))
                .args(["-w", "-t", "60", "start"]),
            "pg_ctl start",
        );
        let cluster = Cluster { port, dir, options };
        cluster.spawn_watchdog(&bin);
        cluster
    }

    /// Stops and deletes the cluster once this process has exited.
    fn spawn_watchdog(&self, bin: &Path) {
        let stop = if is_root() {
            "runuser -u postgres -- \"$PG_CTL\""
        } else {
            "\"$PG_CTL\""
        };
        let script = format!("{stop} -D \"$DIR/data\" -m immediate stop; rm -rf \"$DIR\"");
        spawn_watchdog(
            "cluster",
            &script,
            &[
                ("DIR", self.dir.as_os_str()),
                ("PG_CTL", bin.join("pg_ctl").as_os_str()),
            ],
        );
    }

    /// Stops the server (fast shutdown: open connections are closed), keeping the data.
    pub fn stop(&self) {
        run(
            pg_command(&postgres_bin_dir().join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "fast", "-w", "stop"]),
            "pg_ctl stop",
        );
    }

    /// Starts a stopped server again on the same port.
    pub fn restart(&self) {
        run(
            pg_command(&postgres_bin_dir().join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-o", &self.options, "-l"])
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t", "60", "start"]),
            "pg_ctl start",
        );
    }

    /// Crashes the server (immediate shutdown: no checkpoint, crash recovery at start) and
    /// starts it again on the same port.
    pub fn crash_restart(&self) {
        run(
            pg_command(&postgres_bin_dir().join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-o", &self.options, "-l"])
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t", "60", "restart"]),
            "pg_ctl restart -m immediate",
        );
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }
}

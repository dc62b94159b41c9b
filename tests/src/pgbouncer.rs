//! A throwaway PgBouncer in front of a throwaway cluster: the production topology, where
//! the functions reach Neon through its pooler in transaction mode.
//!
//! Debian's `pgbouncer` (1.18 here: no protocol-level prepared statements), or for
//! [`PoolerOptions::prepared_statements`] one that has them as Neon's does (≥ 1.21, built by
//! `scripts/lib.sh`'s `ensure_pgbouncer_prepared`), is started as a daemon with a
//! configuration of its own in a temporary directory, listens on 127.0.0.1 only, trusts
//! the `postgres` user and is killed by a watchdog once the test process exits. As root,
//! where it refuses to run, it runs as the `postgres` user.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::{chown_to_postgres, free_port, is_root, run, spawn_watchdog, Cluster};

/// How the pooler is set up.
pub struct PoolerOptions {
    /// `pool_mode`: `transaction` as Neon runs it, or `session`.
    pub pool_mode: &'static str,
    /// Server connections per database and user (`default_pool_size`).
    pub pool_size: u32,
    /// Client connections accepted in all (`max_client_conn`).
    pub max_client_conn: u32,
    /// Protocol-level prepared statements (`max_prepared_statements`), as Neon's pooler
    /// keeps them: a PgBouncer ≥ 1.21 ([`prepared_binary`]) instead of Debian's 1.18.
    pub prepared_statements: bool,
    /// The port the pooler's server connections go to (a proxy in front of the cluster);
    /// the cluster's own when `None`.
    pub server_port: Option<u16>,
}

impl Default for PoolerOptions {
    fn default() -> Self {
        PoolerOptions {
            pool_mode: "transaction",
            pool_size: 4,
            max_client_conn: 500,
            prepared_statements: false,
            server_port: None,
        }
    }
}

pub struct PgBouncer {
    pub port: u16,
    dir: PathBuf,
    binary: PathBuf,
}

/// The `pgbouncer` binary: `PGBOUNCER` when set, else Debian's.
fn binary() -> PathBuf {
    std::env::var_os("PGBOUNCER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/pgbouncer"))
}

/// A `pgbouncer` with protocol-level prepared statements: `PGBOUNCER_PREPARED` when set,
/// else the one `scripts/test` builds into `.local/pgbouncer`.
pub fn prepared_binary() -> PathBuf {
    std::env::var_os("PGBOUNCER_PREPARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.local/pgbouncer/bin/pgbouncer")
        })
}

/// Whether the user pgbouncer runs as (`postgres` when we are root) can execute `binary`.
fn runs_as_postgres(binary: &Path) -> bool {
    !is_root()
        || Command::new("runuser")
            .args(["-u", "postgres", "--", "test", "-x"])
            .arg(binary)
            .status()
            .is_ok_and(|status| status.success())
}

/// A pgbouncer binary's version, from `pgbouncer --version` ("PgBouncer 1.18.0").
fn version(binary: &Path) -> (u32, u32) {
    let mut cmd = if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(binary);
        cmd
    } else {
        Command::new(binary)
    };
    let output = cmd
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{} --version: {e}", binary.display()));
    let text = String::from_utf8_lossy(&output.stdout);
    let parsed = text.split_whitespace().nth(1).and_then(|v| {
        let mut parts = v.split('.').map(|n| n.parse::<u32>().ok());
        Some((parts.next()??, parts.next()??))
    });
    parsed.unwrap_or_else(|| panic!("{} --version said {text:?}", binary.display()))
}

impl PgBouncer {
    /// Starts a pooler in front of `cluster` and waits until it accepts connections.
    pub fn start(cluster: &Cluster, options: PoolerOptions) -> PgBouncer {
        let (binary, installed_by) = if options.prepared_statements {
            (
                prepared_binary(),
                "scripts/test builds one with prepared statements, or set PGBOUNCER_PREPARED",
            )
        } else {
            (
                binary(),
                "scripts/test installs it: apt-get install pgbouncer",
            )
        };
        assert!(
            binary.exists(),
            "no pgbouncer at {} ({installed_by})",
            binary.display()
        );
        let dir = std::env::temp_dir().join(format!(
            "todo-api-pgbouncer-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("pgbouncer directory");
        chown_to_postgres(&dir);
        // The `postgres` user may not reach the one in the checkout (a checkout under /root,
        // mode 700): then it runs from a copy in that directory.
        let binary = if runs_as_postgres(&binary) {
            binary
        } else {
            let copy = dir.join("pgbouncer");
            std::fs::copy(&binary, &copy).expect("copy of pgbouncer");
            chown_to_postgres(&copy);
            copy
        };
        let knows_max_prepared_statements = version(&binary) >= (1, 21);
        let port = free_port();
        let userlist = dir.join("userlist.txt");
        // `todo_login`: a login role subject to row-level security, where a test makes one.
        std::fs::write(&userlist, "\"postgres\" \"\"\n\"todo_login\" \"\"\n").expect("userlist");
        let config = format!(
            "[databases]\n\
             * = host=127.0.0.1 port={pg_port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {userlist}\n\
             pool_mode = {mode}\n\
             default_pool_size = {pool_size}\n\
             max_client_conn = {max_client_conn}\n\
             ignore_startup_parameters = extra_float_digits\n\
             {prepared}\
             server_reset_query =\n\
             logfile = {log}\n\
             pidfile = {pid}\n",
            pg_port = options.server_port.unwrap_or(cluster.port),
            userlist = userlist.display(),
            mode = options.pool_mode,
            pool_size = options.pool_size,
            max_client_conn = options.max_client_conn,
            // 0 turns them off (1.24 and later keep 200 by default); 1.18, Debian 12's,
            // does not know the setting at all and never keeps them.
            prepared = match (options.prepared_statements, knows_max_prepared_statements) {
                (true, _) => "max_prepared_statements = 200\n",
                (false, true) => "max_prepared_statements = 0\n",
                (false, false) => "",
            },
            log = dir.join("pgbouncer.log").display(),
            pid = dir.join("pgbouncer.pid").display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), config).expect("pgbouncer.ini");
        for file in ["userlist.txt", "pgbouncer.ini"] {
            chown_to_postgres(&dir.join(file));
        }
        let pooler = PgBouncer { port, dir, binary };
        pooler.launch();
        pooler.spawn_watchdog();
        pooler
    }

    fn launch(&self) {
        let mut cmd = if is_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(&self.binary);
            cmd
        } else {
            Command::new(&self.binary)
        };
        run(
            cmd.arg("-d").arg(self.dir.join("pgbouncer.ini")),
            "pgbouncer -d",
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen on {} within 20 s:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the pooler at once (SIGKILL: every client and server connection drops),
    /// then starts it again on the same port.
    pub fn restart(&self) {
        self.kill();
        self.launch();
    }

    /// Kills the pooler and waits until it is gone.
    pub fn kill(&self) {
        let Some(pid) = self.pid() else { return };
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(10);
        // SAFETY: signal 0 only checks that the process exists.
        while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(self.dir.join("pgbouncer.pid"));
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("pgbouncer.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Kills the pooler and deletes its directory once this process has exited.
    fn spawn_watchdog(&self) {
        spawn_watchdog(
            "pgbouncer",
            "kill -9 \"$(cat \"$DIR/pgbouncer.pid\" 2>/dev/null)\" 2>/dev/null; rm -rf \"$DIR\"",
            &[("DIR", self.dir.as_os_str())],
        );
    }

    /// The pooler's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The URL of database `postgres` through the pooler.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }
}

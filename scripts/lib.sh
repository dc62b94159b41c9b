# Helpers shared by the scripts in this folder. Source it; do not run it.
# Everything they install goes into project-local, git-ignored places (.venv, .local)
# except the PostgreSQL server, which comes from the system's package manager.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root to run: $*"; fi
}

# The newest PostgreSQL server binaries, installed through apt when absent.
postgres_bin_dir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$dir" ] || [ ! -x "$dir/initdb" ]; then
        log "installing the PostgreSQL server (apt)"
        as_root apt-get update -qq >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        dir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    [ -x "$dir/initdb" ] || die "no PostgreSQL server binaries after installing"
    echo "$dir"
}

# PgBouncer, the pooler Neon runs in front of Postgres, for the tests of that topology.
ensure_pgbouncer() {
    if [ ! -x /usr/sbin/pgbouncer ]; then
        log "installing PgBouncer (apt)"
        as_root apt-get update -qq >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >&2
        # The package starts a system-wide pooler on 6432; the tests start their own. Only
        # the one just installed is stopped: a pooler that was already there is yours.
        as_root systemctl disable --now pgbouncer >/dev/null 2>&1 || true
    fi
}

# PgBouncer with protocol-level prepared statements (>= 1.21, as Neon runs it), for the tests
# of the default DB_PREPARED_STATEMENTS=true through a pooler. Debian 12 ships 1.18, so this
# builds Debian 13's source package, fetched by apt from deb.debian.org with an apt state of
# its own (the system's sources and lists are untouched), into .local/pgbouncer. Exports
# PGBOUNCER_PREPARED, which the Rust harness reads (tests/src/pgbouncer.rs).
PGBOUNCER_SOURCE_SUITE=trixie
ensure_pgbouncer_prepared() {
    local dest="$ROOT/.local/pgbouncer"
    if [ ! -x "$dest/bin/pgbouncer" ]; then
        log "building PgBouncer (prepared statements) from Debian $PGBOUNCER_SOURCE_SUITE's source package"
        local pkg missing=()
        for pkg in gcc make pkg-config libevent-dev libssl-dev; do
            dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
        done
        if [ ${#missing[@]} -gt 0 ]; then
            as_root apt-get update -qq >&2
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
        fi
        local work
        work=$(mktemp -d)
        chmod 755 "$work"
        mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
        echo "deb-src http://deb.debian.org/debian $PGBOUNCER_SOURCE_SUITE main" > "$work/sources.list"
        local apt=(apt-get -qq -o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=-
                   -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
                   -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
        (cd "$work" && "${apt[@]}" update >&2 && "${apt[@]}" --download-only source pgbouncer >&2) ||
            die "could not fetch PgBouncer's source package from Debian $PGBOUNCER_SOURCE_SUITE"
        tar -xf "$work"/pgbouncer_*.orig.tar.* -C "$work"
        (cd "$work"/pgbouncer-*/ && ./configure --prefix="$dest" --without-cares --with-openssl &&
            make -j2 && make install) > "$work/build.log" 2>&1 ||
            { tail -n 40 "$work/build.log" >&2; die "building PgBouncer failed"; }
        rm -rf "$work"
    fi
    local version
    version=$("$dest/bin/pgbouncer" --version | awk 'NR==1{print $2}')
    printf '%s\n1.21\n' "$version" | sort -V -C -r ||
        die "$dest/bin/pgbouncer is $version; the prepared-statement tests need 1.21 or later"
    export PGBOUNCER_PREPARED="$dest/bin/pgbouncer"
}

# A project-local Python virtualenv with the packages of a requirements file from scripts/.
# Reinstalls only when that file changed.
ensure_venv() {
    local requirements="$ROOT/scripts/$1"
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
            log "installing python3-venv (apt)"
            as_root apt-get update -qq >&2
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
        fi
        python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
    fi
    local stamp="$VENV/.installed-$1"
    local want
    want=$(cat "$requirements" "$ROOT/scripts/requirements-dev.txt" | sha256sum | cut -c1-16)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        log "installing scripts/$1 into .venv"
        (cd "$ROOT/scripts" && "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$1") >&2
        echo "$want" > "$stamp"
    fi
    export PATH="$VENV/bin:$PATH"
}

# Runs a PostgreSQL server binary, as the `postgres` user when we are root.
pg_run() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# A TCP port on 127.0.0.1 that is free now, below the ephemeral range (32768-60999), where a
# client socket could already hold it by the time a server binds it; from a random start.
free_port() {
    python3 - <<'PY'
import random, socket
start = random.randrange(12000)
for offset in range(12000):
    port = 20000 + (start + offset) % 12000
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(port)
        break
else:
    raise SystemExit("no free port in 20000-31999")
PY
}

# The one way a PostgreSQL cluster is made and started (scripts/dev, the throwaway clusters
# of scripts/test, bench and schemathesis, and the Python system tests through
# start_throwaway_cluster; the Rust integration tests keep their own in tests/src/cluster.rs,
# since `cargo test` must run without these scripts).
# pg_init DATA [initdb options...]: a new cluster owned by `postgres`, UTF-8, C.UTF-8.
pg_init() {
    local data="$1"; shift
    pg_run "$(postgres_bin_dir)/initdb" -D "$data" -U postgres -E UTF8 --locale=C.UTF-8 "$@" >/dev/null
}

# pg_start DATA PORT SOCKET_DIR LOG [server options...]: starts the cluster on
# 127.0.0.1:PORT, its Unix socket in SOCKET_DIR, and waits until it accepts connections.
# pg_ctl hands the options to a shell: SOCKET_DIR is quoted for a path with spaces.
pg_start() {
    local data="$1" port="$2" socket_dir="$3" logfile="$4"; shift 4
    pg_run "$(postgres_bin_dir)/pg_ctl" -D "$data" -l "$logfile" -w -t 60 \
        -o "-p $port -k '$socket_dir' -c listen_addresses=127.0.0.1 $*" start >/dev/null
}

# Starts a throwaway cluster in a fresh temporary directory; sets THROWAWAY_DIR,
# THROWAWAY_PGDATA, THROWAWAY_PORT, THROWAWAY_URL and THROWAWAY_PG_BIN. Stop it with
# stop_throwaway_cluster. THROWAWAY_PG_OPTIONS adds server options.
start_throwaway_cluster() {
    THROWAWAY_PG_BIN="$(postgres_bin_dir)"
    THROWAWAY_PORT="$(free_port)"
    THROWAWAY_DIR="$(mktemp -d /tmp/todo-throwaway-XXXXXX)"
    chmod 755 "$THROWAWAY_DIR"
    [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$THROWAWAY_DIR"
    THROWAWAY_PGDATA="$THROWAWAY_DIR/data"
    pg_init "$THROWAWAY_PGDATA" -A trust --no-sync
    pg_start "$THROWAWAY_PGDATA" "$THROWAWAY_PORT" "$THROWAWAY_DIR" "$THROWAWAY_DIR/server.log" \
        -c max_connections=300 ${THROWAWAY_PG_OPTIONS:-}
    THROWAWAY_URL="postgres://postgres@127.0.0.1:$THROWAWAY_PORT/postgres?sslmode=disable"
}

stop_throwaway_cluster() {
    [ -n "${THROWAWAY_DIR:-}" ] || return 0
    pg_run "$THROWAWAY_PG_BIN/pg_ctl" -D "$THROWAWAY_PGDATA" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$THROWAWAY_DIR"
    THROWAWAY_DIR=""
}

# Node.js and npm (the TypeScript client and the browser test), through apt when absent.
ensure_node() {
    if ! command -v npm >/dev/null; then
        log "installing Node.js and npm (apt)"
        as_root apt-get update -qq >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >&2
    fi
    command -v npm >/dev/null || die "no npm after installing"
}

# Debian's Chromium for the browser test (never a downloaded browser build).
ensure_chromium() {
    if [ ! -x /usr/bin/chromium ]; then
        log "installing Chromium (apt)"
        as_root apt-get update -qq >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
    fi
    [ -x /usr/bin/chromium ] || die "no /usr/bin/chromium after installing"
}

# `npm ci` in a folder of the repo, skipped when its package-lock.json has not changed.
npm_ci() {
    local dir="$ROOT/$1" stamp want
    stamp="$dir/node_modules/.installed-lock"
    want=$(sha256sum "$dir/package-lock.json" | cut -c1-16)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        log "npm ci in $1"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >&2
        echo "$want" > "$stamp"
    fi
}

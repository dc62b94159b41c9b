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
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >&2
        dir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    [ -x "$dir/initdb" ] || die "no PostgreSQL server binaries after installing"
    echo "$dir"
}

# A project-local Python virtualenv with the packages of a requirements file from scripts/.
# Reinstalls only when that file changed.
ensure_venv() {
    local requirements="$ROOT/scripts/$1"
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
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

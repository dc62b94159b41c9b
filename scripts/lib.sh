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

# A project-local Python virtualenv with the given PyPI packages.
ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
    fi
    local missing=()
    for pkg in "$@"; do
        "$VENV/bin/python" -m pip show -q "${pkg%%[=<>]*}" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]} into .venv"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${missing[@]}" >&2
    fi
    export PATH="$VENV/bin:$PATH"
}

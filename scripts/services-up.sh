#!/usr/bin/env bash
# Start the real servers the tests use, on Debian 12 without systemd (CI, a container, a
# laptop VM), installing them with apt-get first if they are missing.
#
#   scripts/services-up.sh                      # all of them
#   scripts/services-up.sh postgres rabbitmq    # only these
#   scripts/services-up.sh --print-env slurm    # only print the tests' VAR=value lines
#
# Idempotent: a server that already answers is left alone, so this is safe to run again
# (and on a machine where someone else started the servers). Each service is one pair of
# functions, install_<name> and start_<name>; scripts/services-down.sh stops them by pid.
# Every server listens on 127.0.0.1 only; the test database is `citest`, user ci/ci.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

ALL_SERVICES=(postgres mariadb rabbitmq)

# shellcheck source=lib/apt.sh
source "$(dirname "$0")/lib/apt.sh"
log() { echo "[services-up] $*"; }
die() { echo "[services-up] error: $*" >&2; exit 1; }

# Wait until "$@" succeeds, up to $1 seconds (checked every 0.25 s).
wait_for() {
  local seconds=$1
  shift
  for _ in $(seq 1 $((seconds * 4))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  return 1
}

# --- PostgreSQL ----------------------------------------------------------------------
# Over the Unix socket PostgreSQL uses peer authentication, so the tests connect over TCP
# with a password; Debian's pg_hba.conf already allows that for 127.0.0.1.
install_postgres() { apt_install postgresql; }

pg_sql() { as_root runuser -u postgres -- psql -X -q -tA -c "$1"; }

pg_version() { find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1; }

start_postgres() {
  local version
  version=$(pg_version)
  if pg_isready -q -h 127.0.0.1; then
    log "postgres: already running"
  else
    if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$version main"; then
      as_root pg_createcluster "$version" main >/dev/null
    fi
    as_root pg_ctlcluster "$version" main start
    wait_for 30 pg_isready -q -h 127.0.0.1 || die "PostgreSQL $version did not start; see /var/log/postgresql/"
    log "postgres: started PostgreSQL $version"
  fi
  pg_sql "SELECT 1 FROM pg_roles WHERE rolname = 'ci'" | grep -q 1 \
    || pg_sql "CREATE ROLE ci LOGIN SUPERUSER PASSWORD 'ci'"
  pg_sql "SELECT 1 FROM pg_database WHERE datname = 'citest'" | grep -q 1 \
    || as_root runuser -u postgres -- createdb -O ci citest
}

# --- MariaDB -------------------------------------------------------------------------
# mariadbd does not daemonize: start-stop-daemon runs it in the background and keeps its
# pid in MARIADB_PIDFILE, which services-down.sh uses to stop it.
MARIADB_PIDFILE=/run/mysqld/ci-mariadbd.pid

install_mariadb() { apt_install mariadb-server; }

start_mariadb() {
  if as_root mariadb-admin ping >/dev/null 2>&1; then
    log "mariadb: already running"
  else
    as_root install -d -o mysql -g root /run/mysqld
    as_root install -d -o mysql -g adm /var/log/mysql
    if [ ! -d /var/lib/mysql/mysql ]; then
      as_root mariadb-install-db --user=mysql >/dev/null
    fi
    as_root start-stop-daemon --start --background --make-pidfile --pidfile "$MARIADB_PIDFILE" \
      --chuid mysql --exec /usr/sbin/mariadbd -- \
      --bind-address=127.0.0.1 --port=3306 --log-error=/var/log/mysql/error.log
    wait_for 30 as_root mariadb-admin ping || die "MariaDB did not start; see /var/log/mysql/error.log"
    log "mariadb: started $(as_root mariadb -N -e 'SELECT VERSION()')"
  fi
  as_root mariadb <<'SQL'
CREATE DATABASE IF NOT EXISTS citest;
CREATE USER IF NOT EXISTS 'ci'@'127.0.0.1' IDENTIFIED BY 'ci';
CREATE USER IF NOT EXISTS 'ci'@'localhost' IDENTIFIED BY 'ci';
GRANT ALL ON citest.* TO 'ci'@'127.0.0.1';
GRANT ALL ON citest.* TO 'ci'@'localhost';
SQL
}

# --- RabbitMQ ------------------------------------------------------------------------
# AMQP on 5672 (user guest, allowed from 127.0.0.1 only) and STOMP on 61613.
install_rabbitmq() { apt_install rabbitmq-server; }

start_rabbitmq() {
  if as_root rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    log "rabbitmq: already running"
    return 0
  fi
  as_root rabbitmq-plugins enable --offline rabbitmq_stomp >/dev/null
  as_root rabbitmq-server -detached
  local pidfile
  pidfile="/var/lib/rabbitmq/mnesia/rabbit@$(hostname -s).pid"
  as_root rabbitmqctl wait --timeout 60 "$pidfile" >/dev/null \
    || die "RabbitMQ did not start; see /var/log/rabbitmq/"
  log "rabbitmq: started"
}

# Services with a file of their own (scripts/services/NAME.sh) define install_NAME,
# start_NAME, stop_NAME and env_NAME (the test settings to export), and add NAME to
# ALL_SERVICES.
for service_file in "$(dirname "$0")"/services/*.sh; do
  [ -e "$service_file" ] || continue
  # shellcheck source=/dev/null
  source "$service_file"
done

env_postgres() { echo "RUNWATCH_TEST_POSTGRES_URL=postgresql+psycopg://ci:ci@127.0.0.1/citest"; }
env_mariadb() { echo "RUNWATCH_TEST_MARIADB_URL=mysql+pymysql://ci:ci@127.0.0.1/citest"; }
env_rabbitmq() { echo "RUNWATCH_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2F"; }

main() {
  local print_only=false
  if [ "${1:-}" = --print-env ]; then
    print_only=true
    shift
  fi
  local services=("$@") name
  [ ${#services[@]} -eq 0 ] && services=("${ALL_SERVICES[@]}")
  for name in "${services[@]}"; do
    declare -F "start_$name" >/dev/null \
      || die "unknown service '$name' (known: ${ALL_SERVICES[*]})"
  done
  if $print_only; then
    for name in "${services[@]}"; do "env_$name"; done
    return 0
  fi
  for name in "${services[@]}"; do "install_$name"; done
  for name in "${services[@]}"; do "start_$name"; done
  echo "Test servers are up. For the tests, set:"
  for name in "${services[@]}"; do "env_$name" | sed 's/^/  export /'; done
}

main "$@"

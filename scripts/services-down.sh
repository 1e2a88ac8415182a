#!/usr/bin/env bash
# Stop the test servers that scripts/services-up.sh started, each by its pid (never by
# process name: other programs on the machine may have the same name).
#
#   scripts/services-down.sh                    # all of them
#   scripts/services-down.sh rabbitmq           # only these
set -euo pipefail

ALL_SERVICES=(postgres mariadb rabbitmq)

# Root runs the commands itself; anyone else through sudo.
# shellcheck source=lib/apt.sh
source "$(dirname "$0")/lib/apt.sh"

log() { echo "[services-down] $*"; }
die() { echo "[services-down] error: $*" >&2; exit 1; }

# TERM the pid, wait up to 30 s for it to exit, then KILL it.
stop_pid() {
  local pid=$1
  [ -n "$pid" ] || return 0
  as_root kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 120); do
    as_root kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.25
  done
  log "pid $pid did not stop in 30 s; killing it"
  as_root kill -KILL "$pid" 2>/dev/null || true
}

pid_in() { as_root cat "$1" 2>/dev/null || true; }

stop_postgres() {
  local version
  version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
  [ -n "$version" ] || return 0
  as_root pg_ctlcluster "$version" main stop 2>/dev/null || true
  log "postgres: stopped"
}

stop_mariadb() {
  # Our own pid file first; mariadbd's own one if a package script started the server.
  local pid
  pid=$(pid_in /run/mysqld/ci-mariadbd.pid)
  [ -n "$pid" ] || pid=$(pid_in /run/mysqld/mysqld.pid)
  stop_pid "$pid"
  as_root rm -f /run/mysqld/ci-mariadbd.pid
  log "mariadb: stopped"
}

stop_rabbitmq() {
  stop_pid "$(pid_in "/var/lib/rabbitmq/mnesia/rabbit@$(hostname -s).pid")"
  # The Erlang port mapper the broker started outlives it: stop the rabbitmq user's one.
  local pid
  for pid in $(ps -u rabbitmq -o pid=,comm= 2>/dev/null | awk '$2 == "epmd" {print $1}'); do
    stop_pid "$pid"
  done
  log "rabbitmq: stopped"
}

# Services with a file of their own (scripts/services/NAME.sh) define install_NAME,
# start_NAME, stop_NAME and env_NAME (the test settings to export), and add NAME to
# ALL_SERVICES.
for service_file in "$(dirname "$0")"/services/*.sh; do
  [ -e "$service_file" ] || continue
  # shellcheck source=/dev/null
  source "$service_file"
done

main() {
  local services=("$@") name
  [ ${#services[@]} -eq 0 ] && services=("${ALL_SERVICES[@]}")
  for name in "${services[@]}"; do
    declare -F "stop_$name" >/dev/null \
      || die "unknown service '$name' (known: ${ALL_SERVICES[*]})"
  done
  for name in "${services[@]}"; do "stop_$name"; done
}

main "$@"

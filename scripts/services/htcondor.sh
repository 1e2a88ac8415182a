# HTCondor personal pool for the HTCondor executor's tests (sourced by services-up.sh and
# services-down.sh).
#
# Debian 12 has no HTCondor package, so the pool is Debian 13's `minicondor` in a
# debootstrap chroot (about 70 s from nothing, most of it apt). The daemons run as root
# inside the chroot; the tests on the host submit with the `htcondor` wheel (htcondor2),
# authenticating with an IDTOKEN whose identity is an unprivileged job user, because
# HTCondor will not run jobs as root. Jobs run inside the chroot as that user, so every
# host path they need is bind-mounted at the same path: /tmp (the tests' folders), the
# tests' Python (sys.prefix and sys.base_prefix) and this source tree (the editable
# install points into it).
#
# Pitfalls: the chroot must live outside /tmp (it bind-mounts /tmp); never delete it while
# it is mounted (`umount -R` first, as stop_htcondor does); condor_master as root would
# otherwise retune host sysctls (ENABLE_KERNEL_TUNING); the daemons stop by pid only.

ALL_SERVICES+=(htcondor)

CONDOR_ROOT=${RUNWATCH_CONDOR_ROOT:-/opt/runwatch-condor}
CONDOR_CLIENT=${RUNWATCH_CONDOR_CLIENT:-/etc/runwatch-condor}
CONDOR_JOB_USER=${RUNWATCH_CONDOR_JOB_USER:-rwcondor}
CONDOR_PROJECT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# The Debian mirror this machine already uses, for the chroot.
condor_mirror() {
  local url=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    url=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$url" ] && [ -f /etc/apt/sources.list ]; then
    url=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list)
  fi
  echo "${url:-http://deb.debian.org/debian}"
}

condor_in() { as_root env -u CONDOR_CONFIG chroot "$CONDOR_ROOT" "$@"; }

condor_mount() {  # condor_mount OPTIONS... TARGET: unless TARGET is mounted already
  local target=${*: -1}
  as_root mountpoint -q "$target" || as_root mount "$@"
}

# The chroot's own mounts; its root must be a mount point (the starter makes a private
# mount namespace for each job).
condor_system_mounts() {
  condor_mount --bind "$CONDOR_ROOT" "$CONDOR_ROOT"
  condor_mount -t proc proc "$CONDOR_ROOT/proc"
  condor_mount --bind /dev "$CONDOR_ROOT/dev"
  condor_mount --bind /dev/pts "$CONDOR_ROOT/dev/pts"
  condor_mount -t sysfs sys "$CONDOR_ROOT/sys"
}

# Host folders the jobs see at the same path. A folder inside another one listed is left
# out: it is seen through that one already, and a mount of its own would keep it busy (a
# clone under /tmp could not be deleted while the pool runs).
condor_shared_dirs() {
  local python=${PYTHON:-python3}
  {
    echo /tmp
    "$python" -c 'import sys; print(sys.prefix); print(sys.base_prefix)'
    echo "$CONDOR_PROJECT"
  } | sort -u | awk '{ for (i = 1; i <= n; i++) if (index($0 "/", kept[i] "/") == 1) next; kept[++n] = $0; print }'
}

# Mounts in the chroot whose host folder has been deleted since (mountinfo's root field
# ends in //deleted): a clone that CI removed. Each keeps its deleted tree on disk.
condor_stale_mounts() {
  as_root awk -v root="$CONDOR_ROOT/" \
    '$4 ~ /\/\/deleted$/ && index($5, root) == 1 { print $5 }' /proc/self/mountinfo
}

# DIR at the same path in the chroot: the folder there now, not one of the same name that
# an earlier start mounted and that was since deleted and made anew (CI clones each
# commit to the same path; a job would import the old, deleted sources, or none).
condor_share() {
  local dir=$1 target=$CONDOR_ROOT$1
  while as_root mountpoint -q "$target"; do
    [ "$(stat -c %d:%i "$dir")" = "$(as_root stat -c %d:%i "$target")" ] && return 0
    as_root umount -l "$target" || die "htcondor: cannot unmount the stale $target"
  done
  as_root mkdir -p "$target"
  as_root mount --bind "$dir" "$target"
}

condor_shared_mounts() {
  local dir
  while read -r dir; do
    as_root umount -l "$dir" 2>/dev/null || true  # gone with a stale mount above it
  done < <(condor_stale_mounts | sort -r)
  while read -r dir; do
    [ -d "$dir" ] || continue
    case $dir in
      / | /usr | /bin | /lib | /etc | /var)
        # Debian's own Python: mounting its prefix would hide the chroot's system.
        log "htcondor: not sharing $dir with the pool; its jobs need a Python of their own (a venv, pyenv or /usr/local)"
        continue
        ;;
    esac
    condor_share "$dir"
  done < <(condor_shared_dirs)
  # Parents made for the mounts (e.g. /root) must let the job user through.
  as_root chmod 711 "$CONDOR_ROOT/root"
}

# The pool's condor_master, from its pid file (checked: a stale file's pid may be reused).
condor_master_pid() {
  local pid
  pid=$(as_root cat "$CONDOR_ROOT/run/condor/master.pid" 2>/dev/null || true)
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = condor_master ] && echo "$pid"
  return 0
}

condor_pool_answers() { condor_in condor_status -af Name 2>/dev/null | grep -q .; }

install_htcondor() {
  [ -x "$CONDOR_ROOT/usr/sbin/condor_master" ] && return 0
  apt_install debootstrap
  if [ ! -x "$CONDOR_ROOT/usr/bin/apt-get" ]; then
    log "htcondor: debootstrap of Debian 13 into $CONDOR_ROOT"
    as_root debootstrap --variant=minbase trixie "$CONDOR_ROOT" "$(condor_mirror)" >/dev/null
  fi
  # No daemon may start from a package's maintainer script.
  printf '#!/bin/sh\nexit 101\n' | as_root tee "$CONDOR_ROOT/usr/sbin/policy-rc.d" >/dev/null
  as_root chmod +x "$CONDOR_ROOT/usr/sbin/policy-rc.d"
  condor_system_mounts
  log "htcondor: installing minicondor in the chroot"
  condor_in env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends minicondor >/dev/null
}

condor_configure() {
  as_root cp /etc/hosts "$CONDOR_ROOT/etc/hosts"
  as_root tee "$CONDOR_ROOT/etc/condor/config.d/99-runwatch.conf" >/dev/null <<'EOF'
# runwatch's test pool (scripts/services/htcondor.sh)
ENABLE_IPV6 = False
NETWORK_INTERFACE = 127.0.0.1
# Job folders live under /tmp: do not hide /tmp and /var/tmp behind per-job scratch mounts.
MOUNT_UNDER_SCRATCH =
# condor_master as root would otherwise rewrite host sysctls (ip_local_port_range, ...).
ENABLE_KERNEL_TUNING = False
# Four slots on any machine: the test jobs mostly wait (on the database, on sleep).
NUM_CPUS = 4
# Quick turns, so that the tests do not wait on the pool's default minutes.
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_MIN_INTERVAL = 1
SCHEDD_INTERVAL = 5
PERIODIC_EXPR_INTERVAL = 5
STARTER_UPDATE_INTERVAL = 5
SHADOW_QUEUE_UPDATE_INTERVAL = 5
EOF
  # The job user, with the same uid on the host and in the chroot.
  id "$CONDOR_JOB_USER" >/dev/null 2>&1 || as_root useradd -m -s /bin/sh "$CONDOR_JOB_USER"
  local uid
  uid=$(id -u "$CONDOR_JOB_USER")
  condor_in sh -c "id $CONDOR_JOB_USER >/dev/null 2>&1 || useradd -u $uid -m -s /bin/sh $CONDOR_JOB_USER"
  condor_in install -d -o condor -g condor -m 0775 /run/condor /var/lock/condor
}

# The host's client configuration, with a token of the job user (whom the tests hand
# their folders: RUNWATCH_JOB_USER is ours, not HTCondor's).
condor_client_config() {
  local domain
  as_root install -d -m 700 "$CONDOR_CLIENT" "$CONDOR_CLIENT/tokens"
  if [ ! -s "$CONDOR_CLIENT/tokens/runwatch.token" ]; then
    domain=$(condor_in condor_config_val UID_DOMAIN)
    condor_in condor_token_create -identity "$CONDOR_JOB_USER@$domain" \
      | as_root tee "$CONDOR_CLIENT/tokens/runwatch.token" >/dev/null
    as_root chmod 600 "$CONDOR_CLIENT/tokens/runwatch.token"
  fi
  as_root tee "$CONDOR_CLIENT/condor_config" >/dev/null <<EOF
# Client side of runwatch's test pool (scripts/services/htcondor.sh)
CONDOR_HOST = 127.0.0.1
COLLECTOR_HOST = 127.0.0.1:9618
ENABLE_IPV6 = False
NETWORK_INTERFACE = 127.0.0.1
SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS
SEC_TOKEN_DIRECTORY = $CONDOR_CLIENT/tokens
SEC_TOKEN_SYSTEM_DIRECTORY = $CONDOR_CLIENT/tokens
RUNWATCH_JOB_USER = $CONDOR_JOB_USER
EOF
}

start_htcondor() {
  condor_system_mounts
  condor_shared_mounts
  if [ -n "$(condor_master_pid)" ] && condor_pool_answers; then
    log "htcondor: already running"
  else
    condor_configure
    condor_in /usr/sbin/condor_master -pidfile /run/condor/master.pid
    wait_for 90 condor_pool_answers || die "HTCondor did not start; see $CONDOR_ROOT/var/log/condor/"
    log "htcondor: started a personal pool (master pid $(condor_master_pid))"
  fi
  condor_client_config
}

stop_htcondor() {
  local pid
  pid=$(condor_master_pid)
  if [ -n "$pid" ]; then
    as_root kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 240); do
      as_root kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
    as_root kill -0 "$pid" 2>/dev/null && as_root kill -KILL "$pid" 2>/dev/null
  fi
  # Unmount before anything may delete the chroot: it bind-mounts /tmp and the sources.
  if as_root mountpoint -q "$CONDOR_ROOT"; then
    as_root umount -R "$CONDOR_ROOT" || as_root umount -R -l "$CONDOR_ROOT"
  fi
  log "htcondor: stopped"
}

env_htcondor() { echo "RUNWATCH_TEST_CONDOR_CONFIG=$CONDOR_CLIENT/condor_config"; }

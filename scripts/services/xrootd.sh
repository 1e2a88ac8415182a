# XRootD: a standalone xrootd server, as EOS serves files, for the storage tests.
# Sourced by scripts/services-up.sh and scripts/services-down.sh (which define as_root,
# apt_install, log and die). One daemon on port 1094 exports XROOTD_DATA, without
# authentication (the tests only; it answers connections from this machine only), and
# computes adler32 checksums on request, as EOS does.
#
# Debian's package ships systemd units only, so the server is started here as a daemon
# with its own pid file and stopped by that pid.

XROOTD_HOME=/var/lib/runwatch-xrootd
XROOTD_DATA=$XROOTD_HOME/data
XROOTD_CONFIG=$XROOTD_HOME/xrootd.cfg
XROOTD_RUN=/run/runwatch-xrootd
XROOTD_PIDFILE=$XROOTD_RUN/xrootd.pid
XROOTD_LOGS=/var/log/runwatch-xrootd
XROOTD_PORT=1094

ALL_SERVICES+=(xrootd)

# xrootd-client gives xrdfs, used to see whether the server answers.
install_xrootd() { apt_install xrootd-server xrootd-client; }

# One try to connect, not the client's default of five in two-minute windows.
xrootd_ping() {
  XRD_CONNECTIONRETRY=1 XRD_CONNECTIONWINDOW=2 XRD_REQUESTTIMEOUT=5 \
    timeout 10 xrdfs "root://127.0.0.1:$XROOTD_PORT" query config version
}

xrootd_pid() { as_root cat "$XROOTD_PIDFILE" 2>/dev/null || true; }

xrootd_alive() {
  local pid
  pid=$(xrootd_pid)
  [ -n "$pid" ] && as_root kill -0 "$pid" 2>/dev/null
}

start_xrootd() {
  if xrootd_alive && xrootd_ping >/dev/null 2>&1; then
    log "xrootd: already running"
    return 0
  fi
  as_root install -d -o xrootd -g xrootd "$XROOTD_HOME" "$XROOTD_DATA" "$XROOTD_HOME/admin" \
    "$XROOTD_RUN" "$XROOTD_LOGS"
  # xrd.allow: only this machine may connect (xrootd listens on every interface).
  # xrootd.chksum: answer checksum queries (kXR_Qcksum) with adler32, as EOS does.
  as_root tee "$XROOTD_CONFIG" >/dev/null <<EOF
all.export $XROOTD_DATA
all.adminpath $XROOTD_HOME/admin
all.pidpath $XROOTD_RUN
xrd.port $XROOTD_PORT
xrd.allow host localhost
xrootd.chksum adler32
EOF
  # -b: daemon; -s: its pid file; -R: drop root for the xrootd user; -k 3: keep 3 logs.
  as_root /usr/bin/xrootd -b -c "$XROOTD_CONFIG" -l "$XROOTD_LOGS/xrootd.log" -k 3 \
    -s "$XROOTD_PIDFILE" -R xrootd \
    || die "xrootd did not start; see $XROOTD_LOGS/"
  wait_for 30 xrootd_ping || die "xrootd does not answer on port $XROOTD_PORT; see $XROOTD_LOGS/"
  log "xrootd: started on port $XROOTD_PORT, exporting $XROOTD_DATA"
}

stop_xrootd() {
  local pid
  pid=$(xrootd_pid)
  if [ -n "$pid" ] && as_root kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 1 120); do
      as_root kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
    as_root kill -0 "$pid" 2>/dev/null && as_root kill -KILL "$pid" 2>/dev/null
  fi
  as_root rm -f "$XROOTD_PIDFILE"
  log "xrootd: stopped"
}

env_xrootd() { echo "RUNWATCH_TEST_XROOTD_URL=root://127.0.0.1:$XROOTD_PORT/$XROOTD_DATA/"; }

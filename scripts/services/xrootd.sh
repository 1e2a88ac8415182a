# XRootD: a standalone xrootd server, as EOS serves files, for the storage tests.
# Sourced by scripts/services-up.sh and scripts/services-down.sh (which define as_root,
# apt_install, log and die). One daemon exports XROOTD_DATA, without authentication (the
# tests only; it answers connections from this machine only), and computes adler32
# checksums on request, as EOS does: root:// on port 1094, and HTTPS with WebDAV (XrdHttp:
# PUT, MOVE, MKCOL, DELETE, PROPFIND, Want-Digest) on port 8443, as EOS's HTTP interface,
# with a certificate of its own test CA (XROOTD_TLS/ca.pem, made here with openssl).
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
XROOTD_HTTP_PORT=8443
XROOTD_TLS=$XROOTD_HOME/tls

ALL_SERVICES+=(xrootd)

# xrootd-client gives xrdfs, used to see whether the server answers; the server plugins
# give XrdHttp (libXrdHttp-5.so); curl checks that HTTPS answers.
install_xrootd() { apt_install xrootd-server xrootd-server-plugins xrootd-client openssl curl; }

# A CA of its own and a certificate for localhost and 127.0.0.1 signed by it, made once:
# clients check the server against ca.pem ([storage] ca_file).
xrootd_tls() {
  [ -s "$XROOTD_TLS/ca.pem" ] && [ -s "$XROOTD_TLS/host.pem" ] && return 0
  as_root install -d -m 755 "$XROOTD_TLS"
  as_root openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=runwatch test CA" \
    -keyout "$XROOTD_TLS/ca.key" -out "$XROOTD_TLS/ca.pem" 2>/dev/null
  as_root openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$XROOTD_TLS/host.key" -out "$XROOTD_TLS/host.csr" 2>/dev/null
  printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
    "extendedKeyUsage=serverAuth" | as_root tee "$XROOTD_TLS/host.ext" >/dev/null
  as_root openssl x509 -req -days 3650 -in "$XROOTD_TLS/host.csr" -CA "$XROOTD_TLS/ca.pem" \
    -CAkey "$XROOTD_TLS/ca.key" -CAcreateserial -extfile "$XROOTD_TLS/host.ext" \
    -out "$XROOTD_TLS/host.pem" 2>/dev/null
  as_root chown xrootd:xrootd "$XROOTD_TLS/host.key" "$XROOTD_TLS/host.pem"
  as_root chmod 600 "$XROOTD_TLS/host.key" "$XROOTD_TLS/ca.key"
  as_root chmod 644 "$XROOTD_TLS/ca.pem" "$XROOTD_TLS/host.pem"
}

xrootd_http_ping() {
  timeout 10 curl -sS -o /dev/null --cacert "$XROOTD_TLS/ca.pem" -I \
    "https://localhost:$XROOTD_HTTP_PORT$XROOTD_DATA/"
}

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
  if xrootd_alive && xrootd_ping >/dev/null 2>&1 && xrootd_http_ping >/dev/null 2>&1; then
    log "xrootd: already running"
    return 0
  fi
  # One that answers root:// only was started by an older version of this script.
  xrootd_alive && stop_xrootd
  as_root install -d -o xrootd -g xrootd "$XROOTD_HOME" "$XROOTD_DATA" "$XROOTD_HOME/admin" \
    "$XROOTD_RUN" "$XROOTD_LOGS"
  xrootd_tls
  # xrd.allow: only this machine may connect (xrootd listens on every interface).
  # xrootd.chksum: answer checksum queries (kXR_Qcksum, and HTTP's Want-Digest) with
  # adler32, as EOS does. xrd.tls: the certificate of HTTPS (root:// stays plain).
  as_root tee "$XROOTD_CONFIG" >/dev/null <<EOF
all.export $XROOTD_DATA
all.adminpath $XROOTD_HOME/admin
all.pidpath $XROOTD_RUN
xrd.port $XROOTD_PORT
xrd.allow host localhost
xrootd.chksum adler32
xrd.tls $XROOTD_TLS/host.pem $XROOTD_TLS/host.key
xrd.tlsca certfile $XROOTD_TLS/ca.pem
xrd.protocol XrdHttp:$XROOTD_HTTP_PORT libXrdHttp.so
EOF
  # -b: daemon; -s: its pid file; -R: drop root for the xrootd user; -k 3: keep 3 logs.
  as_root /usr/bin/xrootd -b -c "$XROOTD_CONFIG" -l "$XROOTD_LOGS/xrootd.log" -k 3 \
    -s "$XROOTD_PIDFILE" -R xrootd \
    || die "xrootd did not start; see $XROOTD_LOGS/"
  wait_for 30 xrootd_ping || die "xrootd does not answer on port $XROOTD_PORT; see $XROOTD_LOGS/"
  wait_for 30 xrootd_http_ping \
    || die "xrootd does not answer HTTPS on port $XROOTD_HTTP_PORT; see $XROOTD_LOGS/"
  log "xrootd: started on ports $XROOTD_PORT (root://) and $XROOTD_HTTP_PORT (https://), exporting $XROOTD_DATA"
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

env_xrootd() {
  echo "RUNWATCH_TEST_XROOTD_URL=root://127.0.0.1:$XROOTD_PORT/$XROOTD_DATA/"
  echo "RUNWATCH_TEST_XROOTD_HTTP_URL=https://localhost:$XROOTD_HTTP_PORT$XROOTD_DATA/"
  echo "RUNWATCH_TEST_XROOTD_CA_FILE=$XROOTD_TLS/ca.pem"
}

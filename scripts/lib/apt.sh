# Shell helpers the setup scripts share (source this file).

# Root runs the commands itself; anyone else through sudo.
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Install the Debian packages that are not installed yet. The package lists are fetched
# only when apt does not know a package (a fresh image has empty lists); .ci/run runs
# `apt-get update` itself before this.
apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
    as_root apt-get update -q >/dev/null
  fi
  echo "apt-get install ${missing[*]}" >&2
  # Debian's maintainer scripts try to start the servers; without systemd or an init
  # system that fails harmlessly (services-up.sh starts them itself).
  as_root apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

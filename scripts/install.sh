#!/usr/bin/env bash
# Installs edge-agent on a board from its .deb, or removes it. Idempotent: installing the
# version that is already installed, or uninstalling when nothing is installed, does nothing
# and succeeds.
#
#   sudo scripts/install.sh dist/edge-agent_1.4.0_arm64.deb     # a package file
#   sudo scripts/install.sh dist/                               # the package for this board's arch
#   sudo scripts/install.sh https://files.example.net/edge-agent_1.4.0_arm64.deb
#   sudo scripts/install.sh --uninstall                         # purge: user, state, config too
#
# The package (packaging/README.md) holds the agent, edgectl, the TensorFlow Lite library, the
# systemd unit and a default /etc/edge-agent/config.yaml; installing it creates the user
# edge-agent and /var/lib/edge-agent, and enables and starts the service when systemd runs.
set -euo pipefail

pkg=edge-agent
usage() {
  sed -n '2,10s/^# \{0,1\}//p' "$0" >&2
  exit "${1:-2}"
}
die() { echo "install: $*" >&2; exit 1; }

[ $# -eq 1 ] || usage
case "$1" in -h | --help) usage 0 ;; esac
[ "$(id -u)" -eq 0 ] || die "run as root: sudo $0 $*"
command -v dpkg >/dev/null || die "dpkg not found: this script installs the Debian package (Debian, Ubuntu, Raspberry Pi OS)"

# "ii" when installed, "rc" when removed with its config left, another pair when half done;
# empty, "un" or "pn" when not installed at all.
status() {
  local s
  s=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null | tr -d ' ' || true)
  case "$s" in un | pn) s= ;; esac
  echo "$s"
}

if [ "$1" = --uninstall ]; then
  if [ -z "$(status)" ]; then
    echo "install: $pkg is not installed; nothing to do"
    exit 0
  fi
  dpkg --purge "$pkg"
  echo "install: $pkg removed (user, /var/lib/edge-agent and /etc/edge-agent included)"
  exit 0
fi

arch=$(dpkg --print-architecture)
case "$arch" in
  amd64 | arm64) ;;
  *) die "no edge-agent package for $arch: packages are built for amd64 and arm64 (see packaging/README.md)" ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

src=$1
case "$src" in
  http://* | https://*)
    deb=$work/$(basename "${src%%\?*}")
    case "$deb" in *.deb) ;; *) deb=$work/$pkg.deb ;; esac
    if command -v curl >/dev/null; then
      curl -fsSL --retry 3 -o "$deb" "$src" || die "download $src failed"
    elif command -v wget >/dev/null; then
      wget -q -O "$deb" "$src" || die "download $src failed"
    else
      die "neither curl nor wget is installed to download $src: apt-get install curl, or download it and pass the file"
    fi
    ;;
  *)
    if [ -d "$src" ]; then
      shopt -s nullglob
      debs=("$src"/"${pkg}"_*_"$arch".deb)
      shopt -u nullglob
      [ ${#debs[@]} -gt 0 ] || die "no ${pkg}_*_$arch.deb in $src: build it with make deb"
      [ ${#debs[@]} -eq 1 ] || die "several packages for $arch in $src (${debs[*]}); pass the one to install"
      src=${debs[0]}
    fi
    [ -f "$src" ] || die "$src is not a file, a folder or an http(s) URL"
    deb=$(cd "$(dirname "$src")" && pwd)/$(basename "$src")
    ;;
esac

name=$(dpkg-deb --field "$deb" Package 2>/dev/null) || die "$src is not a Debian package"
[ "$name" = "$pkg" ] || die "$src is the package $name, not $pkg"
want_arch=$(dpkg-deb --field "$deb" Architecture)
[ "$want_arch" = "$arch" ] || die "$src is for $want_arch; this board is $arch: use ${pkg}_*_$arch.deb"
version=$(dpkg-deb --field "$deb" Version)

if [ "$(status)" = ii ] && [ "$(dpkg-query -W -f='${Version}' "$pkg")" = "$version" ]; then
  echo "install: $pkg $version is already installed; nothing to do"
  exit 0
fi

if command -v apt-get >/dev/null; then
  # apt-get installs the dependencies (libc6, libstdc++6, libgcc-s1) that dpkg alone would not.
  # It waits for the dpkg lock (unattended upgrades at boot) instead of failing at once.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --allow-downgrades \
    -o DPkg::Lock::Timeout=120 "$deb" ||
    die "apt-get install $deb failed (see above); a missing dependency may need: apt-get update"
else
  dpkg -i "$deb" || die "dpkg -i $deb failed (see above); install the missing dependencies, then run this again"
fi
echo "install: $pkg $version installed; config in /etc/edge-agent/config.yaml, logs: journalctl -u edge-agent"

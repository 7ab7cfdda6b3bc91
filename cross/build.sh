#!/usr/bin/env bash
# Builds edge-agent and edgectl for Linux with cgo and the TensorFlow Lite 2.9 C library, one
# directory per architecture, in the layout the packages consume:
#
#   OUT/linux-ARCH/edge-agent
#   OUT/linux-ARCH/edgectl
#   OUT/linux-ARCH/lib/libtensorflowlite_c.so     (+ libexternal_delegate_obj.so, which the binaries also need)
#
#   cross/build.sh                       # arm64 into dist/
#   cross/build.sh -o /tmp/out arm64 amd64
#
# ARCH is arm64 or amd64. The host's own architecture builds with gcc and the library `make build`
# uses (scripts/tflite-prefix.sh); another one with Debian's cross compiler (aarch64-linux-gnu-gcc,
# x86_64-linux-gnu-gcc) and that architecture's library from scripts/install-tflite.sh, kept in
# .deps/lib/ARCH. The rpath finds the library beside the binary (lib/), in an installed tree
# (bin/../lib) and where the packages put it (/opt/edge-agent/lib).
# Environment: GO (default go), GO_LDFLAGS (the -ldflags `make build` uses, e.g. the version),
# STRIP (default 1: release binaries, built with -trimpath and -ldflags "-s -w", carry no symbol
# table or DWARF; STRIP=0 keeps them for a debugger; panics print stack traces either way).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
out=$here/dist
while getopts "o:" opt; do
  case $opt in
    o) out=$OPTARG ;;
    *) echo "usage: cross/build.sh [-o OUTDIR] [arm64|amd64]..." >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || set -- arm64
mkdir -p "$out"
out=$(cd "$out" && pwd)

GO=${GO:-go}
go_ldflags=${GO_LDFLAGS:-}
case "${STRIP:-1}" in
  1) go_ldflags="-s -w $go_ldflags" ;;
  0) ;;
  *) echo "cross/build.sh: STRIP must be 1 or 0, not ${STRIP}" >&2; exit 2 ;;
esac
# Literal $ORIGIN: the dynamic loader expands it to the binary's directory at run time.
rpath='$ORIGIN/lib:$ORIGIN/../lib:/opt/edge-agent/lib'

case "$(uname -m)" in
  x86_64|amd64) host=amd64 ;;
  aarch64|arm64) host=arm64 ;;
  *) host=$(uname -m) ;;
esac

for arch in "$@"; do
  case "$arch" in
    arm64) triplet=aarch64-linux-gnu; debarch=arm64 ;;
    amd64) triplet=x86_64-linux-gnu; debarch=amd64 ;;
    *) echo "cross/build.sh: no TensorFlow Lite library for $arch in the npm package (arm64 and amd64 only); for 32-bit ARM see cross/README.md" >&2; exit 2 ;;
  esac
  if [ "$arch" = "$host" ]; then
    cc=${CC:-gcc}
    prefix=$("$here/scripts/tflite-prefix.sh")
    inc=$prefix/include lib=$prefix/lib
  else
    cc=$triplet-gcc
    if ! command -v "$cc" >/dev/null || [ ! -e "/usr/$triplet/lib/crt1.o" ]; then
      echo "cross/build.sh: the $arch cross compiler is missing: run scripts/deps.sh as root, or apt-get install gcc-$triplet libc6-dev-$debarch-cross" >&2
      exit 1
    fi
    mkdir -p "$here/.deps"
    # One install at a time: concurrent builds (tests, make -j) share .deps.
    flock "$here/.deps/.install-$arch.lock" env TFLITE_ARCH="$arch" TFLITE_PREFIX="$here/.deps" "$here/scripts/install-tflite.sh"
    inc=$here/.deps/include lib=$here/.deps/lib/$arch
  fi

  dir=$out/linux-$arch
  mkdir -p "$dir/lib"
  for cmd in edge-agent edgectl; do
    # Build beside the target and rename, so a running copy is never overwritten in place.
    (cd "$here" && env CC="$cc" GOOS=linux GOARCH="$arch" CGO_ENABLED=1 \
      CGO_CFLAGS="-I$inc" CGO_LDFLAGS="-L$lib -Wl,-rpath,$rpath" \
      "$GO" build -trimpath -ldflags "$go_ldflags" -o "$dir/.$cmd.tmp" "./cmd/$cmd")
    mv -f "$dir/.$cmd.tmp" "$dir/$cmd"
  done
  for so in libtensorflowlite_c.so libexternal_delegate_obj.so; do
    install -m 0644 "$lib/$so" "$dir/lib/.$so.tmp"
    mv -f "$dir/lib/.$so.tmp" "$dir/lib/$so"
  done
  echo "cross: $dir (linux/$arch, cgo, TensorFlow Lite from $lib)"
done

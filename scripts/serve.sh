#!/usr/bin/env bash
# Set up, migrate the default SQLite database, make a first API key if there is none (printed
# once), and serve on 127.0.0.1:8000. Settings come from SPK_* environment variables.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/speakerid migrate
.venv/bin/speakerid keys ensure --tenant default
exec .venv/bin/speakerid serve --host "${SPK_HOST:-127.0.0.1}" --port "${SPK_PORT:-8000}"

#!/usr/bin/env bash
# Make sure the programs that the browser and scale-out tests drive are on this machine: Debian's
# `chromium` and `chromium-driver` (the console in a real browser) and `nginx` (replicas behind a
# proxy). Installs what is missing with apt-get when root, as scripts/postgres.sh does for
# PostgreSQL. Exits 1, naming what is missing, when something still is.
set -euo pipefail

missing=()
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "tools.sh: missing ${missing[*]} and not root: install Debian's packages" >&2
    exit 1
  fi
  echo "tools.sh: installing ${missing[*]} (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

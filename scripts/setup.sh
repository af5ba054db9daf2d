#!/usr/bin/env bash
# Sets up a machine to run jobhive from this checkout: Debian packages, a venv in .venv, and the
# project with its test tools. Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. Debian packages: ffmpeg (audio and odd image formats), chromium (the browser tests drive
#    it with Playwright; no browser is ever downloaded), firefox-esr (the pages are checked
#    in Firefox too, over WebDriver BiDi), redis-server and redis-sentinel (the shared store of
#    several servers) and nginx (the load balancer example, tested in front of three servers).
#    The tests start their own Redis, Sentinels and nginx on free ports; on a machine with
#    systemd, Debian also starts the packages' services (ports 6379, 26379 and 80), which
#    nothing here uses: `systemctl disable --now redis-server redis-sentinel nginx` if unwanted.
packages=()
command -v ffmpeg >/dev/null 2>&1 || packages+=(ffmpeg)
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || packages+=(redis-sentinel)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || packages+=(nginx)
[ -x /usr/bin/chromium ] || packages+=(chromium)
command -v firefox-esr >/dev/null 2>&1 || packages+=(firefox-esr)
if [ ${#packages[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi

# 2. A virtual environment with the project (editable), the model workers' packages and the
#    dev tools. torch first, pinned: a bare torch requirement would pull gigabytes of CUDA.
#    Skipped when the venv was set up from this very pyproject.toml and script (its stamp).
stamp=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.jobhive-setup 2>/dev/null)" != "$stamp" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[dev,worker]"
  # The checkout on the venv's path too (a .pth line): pip's editable install finds the package
  # through an import hook that Python asks last, so from the folder `git clone` ran in, the
  # clone's own folder (named jobhive, no __init__.py) would be imported instead, empty.
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$PWD" > "$site/jobhive-checkout.pth"
  echo "$stamp" > .venv/.jobhive-setup
fi

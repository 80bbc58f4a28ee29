#!/usr/bin/env bash
# Installs what the browser tests drive: Debian's Chromium and ChromeDriver
# (matched versions) and Selenium from PyPI. Cheap when already there.
set -euo pipefail
if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium chromium-driver >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }
fi
python3 -c 'import selenium' 2>/dev/null ||
  python3 -m pip install -q selenium 2>/dev/null ||
  python3 -m pip install -q --break-system-packages selenium

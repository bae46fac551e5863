#!/usr/bin/env bash
# Make sure a headless browser and its driver are present for the UI page's browser test
# (tests/e2e/test_ui_page.py): Debian's chromium and chromium-driver.
# As root, install them when missing; otherwise print the command and carry on (only that
# test needs them, and it says what is missing).
set -euo pipefail
browser="${CHROME_BIN:-$(command -v chromium || true)}"
driver="${CHROMEDRIVER:-$(command -v chromedriver || true)}"
if [ -n "$browser" ] && [ -x "$browser" ] && [ -n "$driver" ] && [ -x "$driver" ]; then exit 0; fi
line="apt-get install -y --no-install-recommends chromium chromium-driver"
if [ "$(id -u)" -ne 0 ]; then
  echo "chromium and chromedriver were not found; the UI browser test will fail until you run:" >&2
  echo "  sudo apt-get update && sudo $line" >&2
  echo "(or set CHROME_BIN and CHROMEDRIVER to a Chromium and its matching driver)" >&2
  exit 0
fi
echo "installing chromium and chromium-driver from Debian's packages..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
command -v chromium >/dev/null && command -v chromedriver >/dev/null \
  || { echo "install finished but chromium or chromedriver is still missing" >&2; exit 2; }

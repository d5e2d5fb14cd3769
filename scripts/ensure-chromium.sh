#!/usr/bin/env bash
# Make sure Debian's chromium is installed; the reading-station browser test drives it with Playwright.
# Installs it with apt-get when missing and running as root; otherwise says what to do and exits 1.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo /usr/bin/chromium
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "chromium is not installed and this is not root; install it with: sudo apt-get install -y chromium" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium is not installed and there is no apt-get here; install Debian's chromium package" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
echo /usr/bin/chromium

#!/usr/bin/env bash
# The report test opens the HTML report in headless Chromium: install Debian's package when it
# is missing and we may (root, apt available). Otherwise that test says why it is skipped.
set -u
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the report test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "setup: could not install chromium; the report browser test will be skipped"
fi
exit 0

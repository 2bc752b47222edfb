#!/bin/sh
# What bench/run.py needs from Debian, installed once (as root):
#   smtp-sink (package postfix), nginx with its mail module, and the echo
#   module for the fake policy API's added latency; py-spy for --py-spy.
# Postfix is configured as "No configuration", so no Postfix daemon is set up;
# a daemon the packages start (nginx on port 80 where systemd runs) is
# stopped again if it was not running before.  The benchmark starts its own
# servers, on 127.0.0.1 only, and stops them when it ends.
set -e
cd "$(dirname "$0")/.."
running() { pgrep -x "$1" >/dev/null 2>&1; }
nginx_before=no; running nginx && nginx_before=yes
postfix_before=no; running master && postfix_before=yes

echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y \
    postfix nginx libnginx-mod-mail libnginx-mod-http-echo

if [ "$nginx_before" = no ] && running nginx; then
    service nginx stop 2>/dev/null || nginx -s quit 2>/dev/null || true
fi
if [ "$postfix_before" = no ] && running master; then
    postfix stop 2>/dev/null || service postfix stop 2>/dev/null || true
fi
if [ -x .venv/bin/pip ]; then
    .venv/bin/pip install py-spy
fi
echo "smtp-sink: $(command -v smtp-sink || echo /usr/sbin/smtp-sink)"

#!/usr/bin/env bash
# Installs ringmail on this machine: the binary, a system user, its directories,
# a configuration from the annotated example (never overwriting one), the systemd
# unit and the logrotate policy. Run as root from a checkout after `make build`
# (or with RINGMAIL_BIN pointing at a release binary).
#
#   sudo ops/install.sh
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
bin="${RINGMAIL_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/ringmail/target}/release/ringmail}"
[ "$(id -u)" -eq 0 ] || { echo "install: run as root" >&2; exit 1; }
[ -x "$bin" ] || { echo "install: no binary at $bin (cargo build --release -p ringmail, or set RINGMAIL_BIN)" >&2; exit 1; }

install -m 0755 "$bin" /usr/local/bin/ringmail
id ringmail >/dev/null 2>&1 || useradd --system --home-dir /var/spool/ringmail --shell /usr/sbin/nologin ringmail
install -d -o ringmail -g ringmail -m 0750 /var/spool/ringmail /var/log/ringmail /var/backups/ringmail
install -d -m 0755 /etc/ringmail
if [ ! -e /etc/ringmail/ringmail.toml ]; then
    sed -e 's|^# path = "/var/log/ringmail/delivery.jsonl"|path = "/var/log/ringmail/delivery.jsonl"|' \
        "$here/ringmail.toml.example" > /etc/ringmail/ringmail.toml
    chmod 0640 /etc/ringmail/ringmail.toml
    chgrp ringmail /etc/ringmail/ringmail.toml
    echo "install: wrote /etc/ringmail/ringmail.toml from the example: set dns.nameservers, egress and tokens"
fi
install -m 0644 "$here/ringmail.service" /etc/systemd/system/ringmail.service
install -m 0644 "$here/logrotate" /etc/logrotate.d/ringmail
if command -v systemctl >/dev/null; then
    systemctl daemon-reload
    echo "install: done. ringmail check-config --config /etc/ringmail/ringmail.toml && systemctl enable --now ringmail"
fi

#!/usr/bin/env bash
# Consistent backup of a running ringmail's queue: asks the daemon for a RocksDB
# checkpoint (everything acknowledged before the call is in it), then packs it.
#
#   ops/backup.sh [DEST_DIR]        default DEST_DIR: /var/backups/ringmail
#
# The daemon is reached as `ringmail ctl` reaches it: RINGMAIL_URL (default
# http://127.0.0.1:8025) and RINGMAIL_ADMIN_TOKEN. The checkpoint is written on the
# daemon's machine, next to DEST_DIR; run this there. Prints the archive's path.
set -euo pipefail

dest="${1:-/var/backups/ringmail}"
ringmail="${RINGMAIL_BIN:-ringmail}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
snapshot="$dest/queue-$stamp"

"$ringmail" ctl backup --to "$snapshot" >&2
tar -C "$dest" -czf "$snapshot.tar.gz" "queue-$stamp"
rm -rf "$snapshot"
echo "$snapshot.tar.gz"

#!/usr/bin/env bash
# Restores a queue backup (from ops/backup.sh, or a checkpoint directory) into the
# queue directory of a STOPPED ringmail. The current queue is kept aside, never
# deleted. On the next start, recovery checks every record and rebuilds the
# indexes; mail that was delivered after the backup was taken will be sent again
# (at-least-once: a restore can duplicate, never lose).
#
#   ops/restore.sh BACKUP QUEUE_DIR     e.g. ops/restore.sh /var/backups/ringmail/queue-...tar.gz /var/spool/ringmail
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 BACKUP(.tar.gz or directory) QUEUE_DIR" >&2
    exit 2
fi
backup="$1"
queue="$2"

# RocksDB holds a lock on the queue while the daemon runs.
if [ -e "$queue/LOCK" ] && command -v fuser >/dev/null && fuser "$queue/LOCK" >/dev/null 2>&1; then
    echo "restore: $queue is in use: stop ringmail first (systemctl stop ringmail)" >&2
    exit 1
fi
if pgrep -x ringmail >/dev/null 2>&1 && [ -z "${RESTORE_FORCE:-}" ]; then
    echo "restore: a ringmail process is running: stop it first (or RESTORE_FORCE=1 if it uses another queue)" >&2
    exit 1
fi

staging="$(mktemp -d "${queue%/}.restore.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
if [ -d "$backup" ]; then
    cp -a "$backup/." "$staging/"
else
    tar -C "$staging" -xzf "$backup"
    inner="$(find "$staging" -mindepth 1 -maxdepth 1 -type d | head -1)"
    [ -n "$inner" ] || { echo "restore: $backup holds no queue directory" >&2; exit 1; }
    mv "$inner" "$staging.q" && rm -rf "$staging" && mv "$staging.q" "$staging"
fi
[ -e "$staging/CURRENT" ] || { echo "restore: $backup is not a ringmail queue (no CURRENT file)" >&2; exit 1; }

if [ -e "$queue" ]; then
    aside="${queue%/}.before-restore.$(date -u +%Y%m%dT%H%M%SZ)"
    mv "$queue" "$aside"
    echo "restore: the previous queue is kept in $aside" >&2
fi
mv "$staging" "$queue"
trap - EXIT
echo "restore: $queue restored from $backup; start ringmail to recover it" >&2

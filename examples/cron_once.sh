#!/bin/sh
# Run a cron job on one host only: put the same crontab line on every host,
#
#   0 3 * * *  AIOELECT_ENDPOINTS=etcd1:2379,etcd2:2379 /opt/app/examples/cron_once.sh ./report.sh
#
# and `aioelect run` lets exactly one of them run the command at a time:
# every host campaigns in the election "$CRON_JOB_NAME"; the leader runs the
# command while the others wait. The command gets the leader's fencing token
# in AIOELECT_TOKEN. If the leader loses etcd, or its `aioelect run` freezes
# or dies, the command is stopped (SIGTERM, then SIGKILL by the lease's hard
# deadline, by run's watchdog) before another host can start it; when the
# command ends, the leader resigns at once and exits with its code. Only a
# frozen host (a paused VM) escapes this: let the job pass AIOELECT_TOKEN on. The same without this script:
#
#   aioelect --endpoints "$AIOELECT_ENDPOINTS" run nightly-report "$(hostname)" -- ./report.sh
#
# "One at a time" is not "once": a waiting host becomes leader when the first
# one finishes, and would run the job again. So with CRON_STAMP_DIR the
# command runs through a guard that skips it when this period's stamp exists;
# the stamp is written after the command succeeded. Both happen while
# leading, so two hosts cannot race between the check and the stamp.
# CRON_STAMP_DIR must be shared by the hosts (NFS, a bucket mount); without
# one, let the job check its own output ("does today's report exist?").
#
# Usage: cron_once.sh [COMMAND [ARG...]]     (default: ./report.sh)
# Environment:
#   AIOELECT_ENDPOINTS  etcd endpoints (required); AIOELECT_PREFIX, AIOELECT_TTL
#                       and the CLI's other AIOELECT_* settings apply too
#   CRON_JOB_NAME       the election, one per job (default: nightly-report)
#   CRON_PERIOD         what "once" means (default: today, `date +%F`)
#   CRON_STAMP_DIR      shared folder for the stamps (default: none, no guard)
#   AIOELECT            the aioelect command (default: aioelect)
# Exit code: the command's (0 when skipped); 75 if leadership was lost while
# it ran; 69 if etcd was unreachable.
set -eu

if [ "${1:-}" = "--leading" ]; then
    # The guard: `aioelect run` starts this while leading, as
    # cron_once.sh --leading STAMP_FILE COMMAND [ARG...]
    stamp=$2
    shift 2
    if [ -n "$stamp" ] && [ -e "$stamp" ]; then
        echo "cron_once: $stamp exists, skipping" >&2
        exit 0
    fi
    # `aioelect run` stops only its own child (this shell) when leadership is
    # lost: pass SIGTERM on, so the command never outlives the leadership.
    "$@" &
    child=$!
    trap 'kill -TERM "$child" 2>/dev/null' TERM INT HUP
    rc=0
    wait "$child" || rc=$?
    while kill -0 "$child" 2>/dev/null; do # woken by the trap: wait for the exit
        rc=0
        wait "$child" || rc=$?
    done
    if [ "$rc" -eq 0 ] && [ -n "$stamp" ]; then
        : >"$stamp"
    fi
    exit "$rc"
fi

: "${AIOELECT_ENDPOINTS:?set AIOELECT_ENDPOINTS to the etcd endpoints}"
job=${CRON_JOB_NAME:-nightly-report}
period=${CRON_PERIOD:-$(date +%F)}
stamp=""
if [ -n "${CRON_STAMP_DIR:-}" ]; then
    stamp="$CRON_STAMP_DIR/$job.$period.done"
fi
[ "$#" -gt 0 ] || set -- ./report.sh

# The value names this candidate in `aioelect candidates nightly-report`.
exec "${AIOELECT:-aioelect}" --endpoints "$AIOELECT_ENDPOINTS" \
    run "$job" "$(hostname)-$$" -- \
    sh "$0" --leading "$stamp" "$@"

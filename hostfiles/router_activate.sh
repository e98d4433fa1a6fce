#!/bin/sh
# Managed by llm-router-deploy (hostfiles/router_activate.sh): activate staged router files and a venv.
#
# usage: activate VENV PORT CHECK_PORT CHECK_UNIT_FILE TIMEOUT_S
#   1. check: the staged config (YAML, structure, api_base reachable) with the new venv, then a
#      throwaway instance (CHECK_UNIT_FILE: new venv + staged files, loopback port) must become
#      live. A failure here leaves the running router untouched.
#   2. swap: back up the live files and the `current` link, move the staged files in, switch the
#      link, restart, wait for /health/liveliness on 127.0.0.1:PORT; once live, remove the venvs
#      other than the new one and the one it replaced.
#   3. not live within TIMEOUT_S: restore the backup, restart, fail with the router's own log.
#
# The router's layout comes from the deploy, which uploads this file with assignments of the
# variables checked below inserted after its first line (deploys/router.py: activate_script).
# FILES holds one "STAGED_NAME LIVE_PATH" line per file that is staged before it goes live.
set -u
: "${ETC:?}" "${STAGED:?}" "${NEXT:?}" "${CURRENT:?}" "${UNIT:?}" "${CHECK_UNIT:?}" "${CHECK_CONFIG:?}" \
  "${MASTER_KEY:?}" "${FILES:?}"
VENV=$1 PORT=$2 CHECK_PORT=$3 CHECK_UNIT_FILE=$4 TIMEOUT=$5
BACKUP=$ETC/rollback

say() { printf 'llm-router: %s\n' "$*" >&2; }

# The router's log since $2 (epoch), last lines, with the master key masked: it never reaches
# pyinfra's output even if LiteLLM printed it. The key is read by python from its file (whose
# path is the argument), never passed as an argument itself.
router_log() {
    journalctl -u "$1" --since "@$2" --no-pager -o cat 2>/dev/null | tail -n 40 | python3 -c '
import sys
try:
    key = open(sys.argv[1]).read().strip()
except OSError:
    key = ""
for line in sys.stdin:
    sys.stderr.write(line.replace(key, "<master key>") if key else line)
' "$MASTER_KEY"
}

# Wait until 127.0.0.1:$1/health/liveliness answers; give up early when the unit ($2) failed
# or restarted, else after TIMEOUT seconds.
wait_live() {
    end=$(( $(date +%s) + TIMEOUT ))
    while [ "$(date +%s)" -lt "$end" ]; do
        if python3 -c 'import sys, urllib.request
urllib.request.urlopen("http://127.0.0.1:%s/health/liveliness" % sys.argv[1], timeout=2).close()' "$1" \
            2>/dev/null; then
            return 0
        fi
        state=$(systemctl show -p ActiveState --value "$2")
        restarts=$(systemctl show -p NRestarts --value "$2")
        case "$state" in failed|inactive) return 1 ;; esac
        [ "${restarts:-0}" -gt 0 ] && return 1
        sleep 1
    done
    return 1
}

# Blocking (Type=exec returns once the new process runs): with --no-block the old router could
# still answer the first liveliness probe while it is being stopped.
restart_router() {
    systemctl reset-failed "$UNIT" 2>/dev/null
    systemctl restart "$UNIT" || true
}

staged_or_live() { # NAME LIVE -> the file the new set uses
    if [ -e "$STAGED/$1" ]; then echo "$STAGED/$1"; else echo "$2"; fi
}

# Staged files are used once: whatever the outcome, the staging area is empty afterwards, so a
# refused change can never slip in with a later activation.
discard_staged() {
    rm -rf "$NEXT"
    find "$STAGED" -mindepth 1 -maxdepth 1 -type f -delete 2>/dev/null
}

stop_trial() {
    systemctl stop "$CHECK_UNIT" 2>/dev/null
    rm -f "/run/systemd/system/$CHECK_UNIT"
    systemctl daemon-reload
}

# --- 1. check, without touching the running router ------------------------------
[ -f "$VENV/.installed" ] || { say "$VENV is not a complete venv; $CURRENT unchanged"; discard_staged; exit 1; }
rm -rf "$NEXT" && install -d -m 750 -g "$(stat -c %G "$ETC")" "$NEXT" || exit 1
echo "$FILES" | while read -r name live; do
    case "$live" in
        $ETC/*) src=$(staged_or_live "$name" "$live"); [ -e "$src" ] && cp -p "$src" "$NEXT/$name" ;;
    esac
done
if ! "$VENV/bin/python" "$CHECK_CONFIG" "$NEXT/config.yaml"; then
    say "the new config was rejected before use; the running router is unchanged"
    discard_staged; exit 1
fi
started=$(date +%s)
install -m 644 "$CHECK_UNIT_FILE" "/run/systemd/system/$CHECK_UNIT"
systemctl daemon-reload
systemctl reset-failed "$CHECK_UNIT" 2>/dev/null
systemctl start "$CHECK_UNIT"
if ! wait_live "$CHECK_PORT" "$CHECK_UNIT"; then
    say "a trial run of the new router (venv, config, unit) did not become live; the running router is unchanged"
    say "its log:"
    router_log "$CHECK_UNIT" "$started"
    stop_trial; discard_staged; exit 1
fi
stop_trial
rm -f "$CHECK_UNIT_FILE"

# --- 2. swap ---------------------------------------------------------------------
rm -rf "$BACKUP" && install -d -m 700 "$BACKUP" || exit 1
readlink "$CURRENT" > "$BACKUP/current.target" 2>/dev/null || : > "$BACKUP/current.target"
echo "$FILES" | while read -r name live; do
    if [ -e "$live" ]; then cp -p "$live" "$BACKUP/$name"; fi
done
echo "$FILES" | while read -r name live; do
    if [ -e "$STAGED/$name" ]; then mv -f "$STAGED/$name" "$live"; fi
done
ln -sfn "$VENV" "$CURRENT.new" && mv -T "$CURRENT.new" "$CURRENT"
discard_staged
systemctl daemon-reload
started=$(date +%s)
restart_router
if wait_live "$PORT" "$UNIT"; then
    # Serving: venvs other than this one and the one it replaced (kept to switch back by hand) are
    # never used again, and each holds LiteLLM and its dependencies (~0.5 GB).
    replaced=$(cat "$BACKUP/current.target")
    for old in "${VENV%/*}"/venv-*; do
        case "$old" in "$VENV"|"$replaced") ;; *) [ -d "$old" ] && rm -rf "$old" ;; esac
    done
    rm -rf "$BACKUP"
    exit 0
fi

# --- 3. roll back ----------------------------------------------------------------
say "the router did not become live within ${TIMEOUT}s after the change; restoring the previous version"
say "its log:"
router_log "$UNIT" "$started"
echo "$FILES" | while read -r name live; do
    if [ -e "$BACKUP/$name" ]; then mv -f "$BACKUP/$name" "$live"; else rm -f "$live"; fi
done
previous=$(cat "$BACKUP/current.target")
if [ -n "$previous" ]; then ln -sfn "$previous" "$CURRENT.new" && mv -T "$CURRENT.new" "$CURRENT"; fi
systemctl daemon-reload
if [ -n "$previous" ]; then
    started=$(date +%s)
    restart_router
    if wait_live "$PORT" "$UNIT"; then
        say "rolled back: the previous router is serving again"
    else
        say "rolled back, but the previous router is not live either:"
        router_log "$UNIT" "$started"
    fi
else
    # A first install that never came up: back to "not installed", so the next apply starts afresh
    # (no half-activated `current` link left that would make it skip the activation).
    systemctl stop "$UNIT" 2>/dev/null
    rm -f "$CURRENT"
    systemctl daemon-reload
    say "there was no previous version to restore; the router is stopped and not installed"
fi
rm -rf "$BACKUP"
exit 1

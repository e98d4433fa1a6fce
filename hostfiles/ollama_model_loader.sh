#!/bin/bash
# Managed by llm-router-deploy (hostfiles/ollama_model_loader.sh): local edits are overwritten.
#
# ollama-model-loader MODELS_LIST
#
# Pulls the models listed in MODELS_LIST ("<persistent|on-demand> <model>" lines,
# persistent first) into the local Ollama, skipping models already present.
# Each pull is retried with exponential backoff (LOADER_ATTEMPTS tries, delays
# from LOADER_FIRST_DELAY_S doubling up to LOADER_MAX_DELAY_S). With
# LOADER_PRUNE=1, models not listed are deleted afterwards. Progress goes to
# the unit's status line (systemctl status ollama-model-loader) and the journal.
# Exits 1 when a model could not be pulled, so the unit shows failed and the
# next apply starts it again.
set -u

models_list=${1:?usage: ollama-model-loader MODELS_LIST}
attempts=${LOADER_ATTEMPTS:-6}
first_delay=${LOADER_FIRST_DELAY_S:-5}
max_delay=${LOADER_MAX_DELAY_S:-300}
prune=${LOADER_PRUNE:-0}
ollama=${OLLAMA_BIN:-/usr/local/bin/ollama}

status() {
    echo "$*"
    # Status line for systemctl status (NotifyAccess=all); harmless outside systemd.
    if [ -n "${NOTIFY_SOCKET:-}" ]; then
        systemd-notify --status="$*" 2>/dev/null || true
    fi
}

# http://host:port of the local server from OLLAMA_HOST (127.0.0.1:11434, [::1]:11434, http://...).
api_url() {
    local address=${OLLAMA_HOST:-127.0.0.1:11434}
    case "$address" in
        http://*|https://*) echo "${address%/}" ;;
        *) echo "http://$address" ;;
    esac
}

# Pull one model. With curl, stream /api/pull and put the percentage of the
# layer being downloaded into the status line (at most every 2 s); without
# curl, `ollama pull`. Succeeds only when the stream ends with "success".
pull_model() {
    local model=$1 label=$2 line last="" shown=-1 percent total completed
    if ! command -v curl >/dev/null 2>&1; then
        "$ollama" pull "$model"
        return
    fi
    local body
    printf -v body '{"model":"%s","stream":true}' "$model"
    while IFS= read -r line; do
        if [[ $line =~ \"error\":\"([^\"]*)\" ]]; then
            echo "$model: ${BASH_REMATCH[1]}"
            return 1
        fi
        [[ $line =~ \"status\":\"([^\"]*)\" ]] && last=${BASH_REMATCH[1]}
        if [[ $line =~ \"total\":([0-9]+) ]]; then
            total=${BASH_REMATCH[1]}
            completed=0
            [[ $line =~ \"completed\":([0-9]+) ]] && completed=${BASH_REMATCH[1]}
            percent=$(( total > 0 ? completed * 100 / total : 0 ))
            if [ "$percent" -ne "$shown" ] && { [ "$percent" -eq 100 ] || [ $(( SECONDS - ${status_at:-0} )) -ge 2 ]; }; then
                status "$label: $last $percent% of $(( total / 1000000 )) MB"
                status_at=$SECONDS
                shown=$percent
            fi
        fi
    done < <(curl --silent --show-error --no-buffer --fail --max-time 86400 \
                  -H 'Content-Type: application/json' -d "$body" "$(api_url)/api/pull")
    [ "$last" = "success" ] || { echo "$model: pull ended with '${last:-no response}'"; return 1; }
    echo "$model: pulled"
}

# Model names `ollama list` shows, one per line (header skipped).
installed_models() {
    "$ollama" list | awk 'NR > 1 && $1 != "" { print $1 }'
}

# Wait for the server (it may just have been (re)started); bounded.
delay=1
for try in $(seq 1 30); do
    if "$ollama" list >/dev/null 2>&1; then
        break
    fi
    if [ "$try" -eq 30 ]; then
        status "failed: Ollama at ${OLLAMA_HOST:-127.0.0.1:11434} did not answer"
        exit 1
    fi
    status "waiting for Ollama at ${OLLAMA_HOST:-127.0.0.1:11434} (try $try/30)"
    sleep "$delay"
    delay=$(( delay < 10 ? delay * 2 : 10 ))
done

wanted=()
while read -r kind model _; do
    case "$kind" in
        ''|'#'*) continue ;;
        persistent|on-demand) wanted+=("$model") ;;
        *) status "ignoring unknown line in $models_list: $kind $model" ;;
    esac
done < "$models_list"

present=$(installed_models)
total=${#wanted[@]}
pulled=0
skipped=0
failed=()
index=0
for model in "${wanted[@]}"; do
    index=$(( index + 1 ))
    if grep -qxF -- "$model" <<<"$present"; then
        skipped=$(( skipped + 1 ))
        echo "$model: present"
        continue
    fi
    delay=$first_delay
    for try in $(seq 1 "$attempts"); do
        label="pulling $model ($index/$total, attempt $try/$attempts)"
        status "$label"
        if pull_model "$model" "$label"; then
            pulled=$(( pulled + 1 ))
            break
        fi
        if [ "$try" -eq "$attempts" ]; then
            failed+=("$model")
            break
        fi
        status "pull of $model failed ($index/$total, attempt $try/$attempts); retrying in ${delay}s"
        sleep "$delay"
        delay=$(( delay * 2 > max_delay ? max_delay : delay * 2 ))
    done
done

removed=0
if [ "$prune" = "1" ]; then
    for model in $(installed_models); do
        if ! printf '%s\n' "${wanted[@]}" | grep -qxF -- "$model"; then
            status "pruning $model (no longer listed)"
            "$ollama" rm "$model" && removed=$(( removed + 1 ))
        fi
    done
fi

summary="$total listed: $skipped present, $pulled pulled, $removed pruned"
if [ ${#failed[@]} -gt 0 ]; then
    status "failed: $summary; could not pull: ${failed[*]}"
    exit 1
fi
status "done: $summary"

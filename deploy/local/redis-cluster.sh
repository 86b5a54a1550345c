#!/usr/bin/env bash
# A 3-master Redis Cluster on loopback, for store tests that need cluster slots.
#
#   bash deploy/local/redis-cluster.sh up|down|status [--base-port P] [--run-dir DIR]
#
# Nodes listen on P, P+1, P+2 (default P=17000; cluster bus on port+10000),
# each with AOF on, its own dir, log and pidfile under DIR (default
# deploy/local/run/redis-cluster). `up` creates the cluster once
# (redis-cli --cluster create ... --cluster-replicas 0) and waits for
# cluster_state:ok; it prints `export CHURNWATCH_TEST_REDIS_CLUSTER=...` on
# stdout. `down` stops only the PIDs in its pidfiles and removes the node dirs,
# so the next `up` forms a fresh cluster. Environment: CHURNWATCH_CLUSTER_BASE_PORT,
# CHURNWATCH_CLUSTER_RUN_DIR, CHURNWATCH_STACK_START_TIMEOUT, CHURNWATCH_STACK_STOP_TIMEOUT.
set -euo pipefail

SCRIPT_NAME="redis-cluster.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/local/lib.sh
source "${HERE}/lib.sh"

usage() {
    sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

COMMAND="${1:-}"
[[ -n "${COMMAND}" ]] || usage
shift
BASE_PORT="${CHURNWATCH_CLUSTER_BASE_PORT:-17000}"
RUN_DIR="${CHURNWATCH_CLUSTER_RUN_DIR:-${HERE}/run/redis-cluster}"
while [[ $# -gt 0 ]]; do
    case "$1" in
    --base-port) BASE_PORT="${2:?--base-port needs a value}"; shift 2 ;;
    --run-dir) RUN_DIR="${2:?--run-dir needs a value}"; shift 2 ;;
    -h | --help) usage ;;
    *) fail "unknown argument '$1' (expected --base-port or --run-dir)" ;;
    esac
done
require_port_number --base-port "${BASE_PORT}"
((BASE_PORT + 2 + 10000 <= 65535)) ||
    fail "--base-port: expected at most 55533 (the cluster bus uses port+10000), got ${BASE_PORT}"
mkdir -p "${RUN_DIR}"
RUN_DIR="$(cd "${RUN_DIR}" && pwd)"
START_TIMEOUT="${CHURNWATCH_STACK_START_TIMEOUT:-30}"
STOP_TIMEOUT="${CHURNWATCH_STACK_STOP_TIMEOUT:-10}"
PORTS=("${BASE_PORT}" "$((BASE_PORT + 1))" "$((BASE_PORT + 2))")

pidfile() { printf '%s/node-%s.pid' "${RUN_DIR}" "$1"; }
logfile() { printf '%s/node-%s.log' "${RUN_DIR}" "$1"; }
nodedir() { printf '%s/node-%s' "${RUN_DIR}" "$1"; }

running_pid() { # PORT
    local pid
    pid="$(read_pidfile "$(pidfile "$1")")"
    if [[ -n "${pid}" ]] && pid_is "${pid}" "redis-server"; then printf '%s' "${pid}"; fi
}

cluster_field() { # PORT FIELD
    redis-cli -h "${HOST}" -p "$1" cluster info 2>/dev/null | tr -d '\r' |
        sed -n "s/^$2://p"
}

STARTED=()
UP_DONE=0
cleanup_failed_up() {
    if ((UP_DONE == 0 && ${#STARTED[@]} > 0)); then
        say "stopping the nodes this run started: ${STARTED[*]}"
        local port pids=()
        for port in "${STARTED[@]}"; do pids+=("$(read_pidfile "$(pidfile "${port}")")"); done
        stop_pids "${STOP_TIMEOUT}" "${pids[@]}" || true
        for port in "${STARTED[@]}"; do rm -f "$(pidfile "${port}")"; done
    fi
}

cmd_up() {
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        fail "redis-server/redis-cli not found; install them with: bash .ci/install.sh"
    fi
    local port pid to_start=()
    for port in "${PORTS[@]}"; do
        pid="$(running_pid "${port}")"
        if [[ -n "${pid}" ]]; then
            say "redis cluster node ${HOST}:${port}: already running (pid ${pid})"
            continue
        fi
        rm -f "$(pidfile "${port}")"
        port_free "${port}" ||
            fail "redis cluster node: port ${port} on ${HOST} is already taken; choose another --base-port"
        port_free "$((port + 10000))" ||
            fail "redis cluster node: bus port $((port + 10000)) on ${HOST} is already taken; choose another --base-port"
        to_start+=("${port}")
    done
    trap cleanup_failed_up EXIT
    trap 'exit 130' INT TERM
    for port in "${to_start[@]}"; do
        mkdir -p "$(nodedir "${port}")"
        launch "$(nodedir "${port}")" "$(logfile "${port}")" redis-server \
            --bind "${HOST}" --port "${port}" --protected-mode yes --daemonize no \
            --dir "$(nodedir "${port}")" --logfile "" \
            --cluster-enabled yes --cluster-config-file nodes.conf \
            --appendonly yes --appendfsync everysec --save ""
        printf '%s\n' "${LAUNCHED_PID}" >"$(pidfile "${port}")"
        STARTED+=("${port}")
    done
    local deadline=$((SECONDS + START_TIMEOUT))
    for port in "${to_start[@]}"; do
        until redis_ping "${port}"; do
            if ! pid_is "$(read_pidfile "$(pidfile "${port}")")" redis-server; then
                show_log_tail "node ${port}" "$(logfile "${port}")"
                fail "redis cluster node ${port}: exited during start-up"
            fi
            if ((SECONDS >= deadline)); then
                show_log_tail "node ${port}" "$(logfile "${port}")"
                fail "redis cluster node ${port}: no PONG within ${START_TIMEOUT}s"
            fi
            sleep 0.1
        done
    done
    if [[ "$(cluster_field "${BASE_PORT}" cluster_known_nodes)" != "3" ]]; then
        local out
        if ! out="$(redis-cli --cluster create "${PORTS[@]/#/${HOST}:}" \
            --cluster-replicas 0 --cluster-yes 2>&1)"; then
            printf '%s\n' "${out}" >&2
            fail "redis-cli --cluster create failed"
        fi
    fi
    until [[ "$(cluster_field "${BASE_PORT}" cluster_state)" == "ok" ]]; do
        ((SECONDS < deadline)) || fail "cluster on ${HOST}:${BASE_PORT} not ok within ${START_TIMEOUT}s"
        sleep 0.1
    done
    UP_DONE=1
    trap - EXIT INT TERM
    say "redis cluster ok: masters ${PORTS[*]/#/${HOST}:}"
    printf 'export CHURNWATCH_TEST_REDIS_CLUSTER=redis://%s:%s\n' "${HOST}" "${BASE_PORT}"
}

cmd_down() {
    local port pid pids=()
    for port in "${PORTS[@]}"; do
        pid="$(running_pid "${port}")"
        [[ -n "${pid}" ]] && pids+=("${pid}")
    done
    if [[ ${#pids[@]} -eq 0 ]]; then
        say "no redis cluster node running under ${RUN_DIR}"
    else
        say "stopping redis cluster nodes (pids ${pids[*]})"
        stop_pids "${STOP_TIMEOUT}" "${pids[@]}" || fail "could not stop pids ${pids[*]}"
    fi
    for port in "${PORTS[@]}"; do
        rm -f "$(pidfile "${port}")"
        rm -rf "$(nodedir "${port}")"
    done
}

cmd_status() {
    local port pid ok=0
    for port in "${PORTS[@]}"; do
        pid="$(running_pid "${port}")"
        if [[ -z "${pid}" ]]; then
            printf 'node %s:%s down\n' "${HOST}" "${port}"
            ok=1
        else
            printf 'node %s:%s up (pid %s, cluster_state %s)\n' "${HOST}" "${port}" "${pid}" \
                "$(cluster_field "${port}" cluster_state)"
        fi
    done
    return "${ok}"
}

case "${COMMAND}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
-h | --help | help) usage ;;
*) fail "unknown command '${COMMAND}' (expected up, down or status)" ;;
esac

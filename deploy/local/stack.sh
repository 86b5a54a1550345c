#!/usr/bin/env bash
# churnwatch's local service stack on loopback: a Kafka-protocol broker (Tansu),
# Redis (AOF on) and Prometheus, each with its own data dir, log and pidfile
# under the run dir.
#
#   bash deploy/local/stack.sh up|down|status|env [--kafka-port P] [--redis-port P]
#                                                 [--prometheus-port P] [--run-dir DIR]
#
# Defaults: kafka 127.0.0.1:19092, redis 127.0.0.1:16379, prometheus 127.0.0.1:19090,
# run dir deploy/local/run/. The same settings as environment variables:
# CHURNWATCH_STACK_KAFKA_PORT, CHURNWATCH_STACK_REDIS_PORT,
# CHURNWATCH_STACK_PROMETHEUS_PORT, CHURNWATCH_STACK_RUN_DIR; also
# CHURNWATCH_STACK_START_TIMEOUT (s, default 30), CHURNWATCH_STACK_STOP_TIMEOUT
# (s, default 10), CHURNWATCH_STACK_PROMETHEUS_CONFIG, CHURNWATCH_TANSU_BIN.
#
# Human messages go to stderr; `up` and `env` print only `export VAR=value`
# lines on stdout, so `eval "$(bash deploy/local/stack.sh up)"` works.
# `status` exits 0 when every service is running and answering, 1 otherwise.
# Tansu keeps topics in memory: they do not survive `down`.
set -euo pipefail

SCRIPT_NAME="stack.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/local/lib.sh
source "${HERE}/lib.sh"

SERVICES=(kafka redis prometheus)

usage() {
    sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

COMMAND="${1:-}"
[[ -n "${COMMAND}" ]] || usage
shift
KAFKA_PORT="${CHURNWATCH_STACK_KAFKA_PORT:-19092}"
REDIS_PORT="${CHURNWATCH_STACK_REDIS_PORT:-16379}"
PROMETHEUS_PORT="${CHURNWATCH_STACK_PROMETHEUS_PORT:-19090}"
RUN_DIR="${CHURNWATCH_STACK_RUN_DIR:-${HERE}/run}"
while [[ $# -gt 0 ]]; do
    case "$1" in
    --kafka-port) KAFKA_PORT="${2:?--kafka-port needs a value}"; shift 2 ;;
    --redis-port) REDIS_PORT="${2:?--redis-port needs a value}"; shift 2 ;;
    --prometheus-port) PROMETHEUS_PORT="${2:?--prometheus-port needs a value}"; shift 2 ;;
    --run-dir) RUN_DIR="${2:?--run-dir needs a value}"; shift 2 ;;
    -h | --help) usage ;;
    *) fail "unknown argument '$1' (expected --kafka-port, --redis-port, --prometheus-port or --run-dir)" ;;
    esac
done
require_port_number --kafka-port "${KAFKA_PORT}"
require_port_number --redis-port "${REDIS_PORT}"
require_port_number --prometheus-port "${PROMETHEUS_PORT}"
mkdir -p "${RUN_DIR}"
RUN_DIR="$(cd "${RUN_DIR}" && pwd)"
START_TIMEOUT="${CHURNWATCH_STACK_START_TIMEOUT:-30}"
STOP_TIMEOUT="${CHURNWATCH_STACK_STOP_TIMEOUT:-10}"
PROMETHEUS_CONFIG="${CHURNWATCH_STACK_PROMETHEUS_CONFIG:-${REPO_ROOT}/deploy/prometheus/prometheus.yml}"

# ---- per-service facts ------------------------------------------------------

requested_port() {
    case "$1" in
    kafka) printf '%s' "${KAFKA_PORT}" ;;
    redis) printf '%s' "${REDIS_PORT}" ;;
    prometheus) printf '%s' "${PROMETHEUS_PORT}" ;;
    esac
}

# The name that the service's command line contains (guards against PID reuse).
process_name() {
    case "$1" in
    kafka) printf 'tansu' ;;
    redis) printf 'redis-server' ;;
    prometheus) printf 'prometheus' ;;
    esac
}

tansu_bin() {
    if [[ -n "${CHURNWATCH_TANSU_BIN:-}" ]]; then
        printf '%s' "${CHURNWATCH_TANSU_BIN}"
    elif [[ -x "${HERE}/bin/tansu" ]]; then
        printf '%s' "${HERE}/bin/tansu"
    else
        command -v tansu || true
    fi
}

binary_of() {
    case "$1" in
    kafka) tansu_bin ;;
    redis) command -v redis-server || true ;;
    prometheus) command -v prometheus || true ;;
    esac
}

pidfile() { printf '%s/%s.pid' "${RUN_DIR}" "$1"; }
portfile() { printf '%s/%s.port' "${RUN_DIR}" "$1"; }
logfile() { printf '%s/%s.log' "${RUN_DIR}" "$1"; }
datadir() { printf '%s/%s' "${RUN_DIR}" "$1"; }

# The PID from the pidfile when that process is still ours and alive, else "".
running_pid() {
    local pid
    pid="$(read_pidfile "$(pidfile "$1")")"
    if [[ -n "${pid}" ]] && pid_is "${pid}" "$(process_name "$1")"; then
        printf '%s' "${pid}"
    fi
}

# The port a running service was started on (its port file), else the requested one.
port_of() {
    local recorded
    recorded="$(read_pidfile "$(portfile "$1")")"
    if [[ -n "${recorded}" && -n "$(running_pid "$1")" ]]; then
        printf '%s' "${recorded}"
    else
        requested_port "$1"
    fi
}

address_of() {
    case "$1" in
    kafka) printf '%s:%s' "${HOST}" "$(port_of kafka)" ;;
    redis) printf 'redis://%s:%s/0' "${HOST}" "$(port_of redis)" ;;
    prometheus) printf 'http://%s:%s' "${HOST}" "$(port_of prometheus)" ;;
    esac
}

answers() { # SERVICE PORT
    case "$1" in
    kafka) "$(probe_python)" "${HERE}/kafka_probe.py" "${HOST}:$2" --timeout 1 >/dev/null 2>&1 ;;
    redis) redis_ping "$2" ;;
    prometheus)
        "$(probe_python)" - "http://${HOST}:$2/-/ready" >/dev/null 2>&1 <<'EOF'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=1) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
        ;;
    esac
}

start_service() { # SERVICE PORT -> sets LAUNCHED_PID
    local svc="$1" port="$2" bin dir log
    bin="$(binary_of "${svc}")"
    dir="$(datadir "${svc}")"
    log="$(logfile "${svc}")"
    mkdir -p "${dir}"
    case "${svc}" in
    kafka)
        launch "${dir}" "${log}" env -u OTEL_EXPORTER_OTLP_ENDPOINT "${bin}" broker \
            --listener-url "tcp://${HOST}:${port}" \
            --advertised-listener-url "tcp://${HOST}:${port}" \
            --storage-engine "memory://tansu/"
        ;;
    redis)
        # AOF on, fsync every second, no RDB snapshots: DESIGN.md's durability
        # (offsets are committed only after the state is in the AOF) relies on it.
        launch "${dir}" "${log}" "${bin}" \
            --bind "${HOST}" --port "${port}" --protected-mode yes \
            --daemonize no --dir "${dir}" --logfile "" \
            --appendonly yes --appendfsync everysec --save ""
        ;;
    prometheus)
        launch "${dir}" "${log}" "${bin}" \
            --config.file="${PROMETHEUS_CONFIG}" \
            --storage.tsdb.path="${dir}" \
            --storage.tsdb.retention.time=2d \
            --web.listen-address="${HOST}:${port}"
        ;;
    esac
    printf '%s\n' "${LAUNCHED_PID}" >"$(pidfile "${svc}")"
    printf '%s\n' "${port}" >"$(portfile "${svc}")"
}

print_exports() {
    printf 'export CHURNWATCH_TEST_KAFKA=%s\n' "$(address_of kafka)"
    printf 'export CHURNWATCH_TEST_REDIS=%s\n' "$(address_of redis)"
    printf 'export CHURNWATCH_TEST_PROMETHEUS=%s\n' "$(address_of prometheus)"
}

# ---- commands -----------------------------------------------------------------

STARTED=()
UP_DONE=0

# On any failure during `up`, stop exactly what this invocation started.
cleanup_failed_up() {
    if ((UP_DONE == 0 && ${#STARTED[@]} > 0)); then
        say "stopping what this run started: ${STARTED[*]}"
        local svc pids=()
        for svc in "${STARTED[@]}"; do
            pids+=("$(read_pidfile "$(pidfile "${svc}")")")
        done
        stop_pids "${STOP_TIMEOUT}" "${pids[@]}" || true
        for svc in "${STARTED[@]}"; do rm -f "$(pidfile "${svc}")" "$(portfile "${svc}")"; done
    fi
}

cmd_up() {
    local svc pid port bin to_start=()
    for svc in "${SERVICES[@]}"; do
        pid="$(running_pid "${svc}")"
        port="$(requested_port "${svc}")"
        if [[ -n "${pid}" ]]; then
            local recorded
            recorded="$(port_of "${svc}")"
            say "${svc}: already running (pid ${pid}) on ${HOST}:${recorded}"
            [[ "${recorded}" == "${port}" ]] ||
                say "${svc}: note: port ${port} was asked for; run 'down' first to move it"
            continue
        fi
        rm -f "$(pidfile "${svc}")" "$(portfile "${svc}")"
        bin="$(binary_of "${svc}")"
        [[ -n "${bin}" && -x "${bin}" ]] ||
            fail "${svc}: binary $(process_name "${svc}") not found; install it with: bash .ci/install.sh"
        port_free "${port}" ||
            fail "${svc}: port ${port} on ${HOST} is already taken by another process; choose another with --${svc}-port"
        to_start+=("${svc}")
    done
    if [[ ${#to_start[@]} -gt 0 ]]; then
        if [[ " ${to_start[*]} " == *" prometheus "* && ! -f "${PROMETHEUS_CONFIG}" ]]; then
            fail "prometheus: config ${PROMETHEUS_CONFIG} not found"
        fi
        local seen=" "
        for svc in "${to_start[@]}"; do
            port="$(requested_port "${svc}")"
            [[ "${seen}" != *" ${port} "* ]] || fail "${svc}: port ${port} is given to two services"
            seen+="${port} "
        done
        trap cleanup_failed_up EXIT
        trap 'exit 130' INT TERM
        for svc in "${to_start[@]}"; do
            start_service "${svc}" "$(requested_port "${svc}")"
            STARTED+=("${svc}")
        done
        for svc in "${to_start[@]}"; do
            wait_ready "${svc}"
        done
    fi
    UP_DONE=1
    trap - EXIT INT TERM
    for svc in "${SERVICES[@]}"; do
        say "${svc}: up (pid $(running_pid "${svc}")) at $(address_of "${svc}"), log $(logfile "${svc}")"
    done
    say "export these for the integration tests (or eval this command's output):"
    print_exports
}

wait_ready() { # SERVICE
    local svc="$1" port pid deadline
    port="$(requested_port "${svc}")"
    pid="$(read_pidfile "$(pidfile "${svc}")")"
    deadline=$((SECONDS + START_TIMEOUT))
    while true; do
        if ! pid_is "${pid}" "$(process_name "${svc}")"; then
            show_log_tail "${svc}" "$(logfile "${svc}")"
            fail "${svc}: exited during start-up (pid ${pid}, port ${port})"
        fi
        answers "${svc}" "${port}" && return 0
        if ((SECONDS >= deadline)); then
            show_log_tail "${svc}" "$(logfile "${svc}")"
            fail "${svc}: did not answer on ${HOST}:${port} within ${START_TIMEOUT}s"
        fi
        sleep 0.2
    done
}

cmd_down() {
    local svc pid pids=() names=()
    for svc in "${SERVICES[@]}"; do
        pid="$(running_pid "${svc}")"
        if [[ -n "${pid}" ]]; then
            pids+=("${pid}")
            names+=("${svc}(${pid})")
        elif [[ -f "$(pidfile "${svc}")" ]]; then
            say "${svc}: stale pidfile (process gone); removing it"
        fi
    done
    if [[ ${#pids[@]} -eq 0 ]]; then
        say "nothing running under ${RUN_DIR}"
    else
        say "stopping ${names[*]}"
        stop_pids "${STOP_TIMEOUT}" "${pids[@]}" || fail "could not stop all of: ${names[*]}"
    fi
    for svc in "${SERVICES[@]}"; do rm -f "$(pidfile "${svc}")" "$(portfile "${svc}")"; done
}

cmd_status() {
    local svc pid port ok=0
    for svc in "${SERVICES[@]}"; do
        pid="$(running_pid "${svc}")"
        port="$(port_of "${svc}")"
        if [[ -z "${pid}" ]]; then
            printf '%-10s %-28s down\n' "${svc}" "$(address_of "${svc}")"
            ok=1
        elif answers "${svc}" "${port}"; then
            printf '%-10s %-28s up (pid %s, answering)\n' "${svc}" "$(address_of "${svc}")" "${pid}"
        else
            printf '%-10s %-28s running (pid %s) but NOT answering\n' "${svc}" "$(address_of "${svc}")" "${pid}"
            ok=1
        fi
    done
    return "${ok}"
}

case "${COMMAND}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
env) print_exports ;;
-h | --help | help) usage ;;
*) fail "unknown command '${COMMAND}' (expected up, down, status or env)" ;;
esac

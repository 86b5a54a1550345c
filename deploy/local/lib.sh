# shellcheck shell=bash
# Shared helpers for deploy/local/*.sh (sourced, not run).
# Every process these scripts start is remembered by PID in a pidfile; only
# those PIDs are ever signalled, and only while their command line still names
# the program we started (a recycled PID is left alone).

LIB_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${LIB_HERE}/../.." && pwd)"
HOST=127.0.0.1

say() { printf '%s\n' "$*" >&2; }
fail() {
    printf '%s: ERROR: %s\n' "${SCRIPT_NAME:-stack}" "$*" >&2
    exit 1
}

# The python used for probes: the project's venv if present, else python3.
probe_python() {
    if [[ -x "${REPO_ROOT}/.venv/bin/python" ]]; then
        printf '%s' "${REPO_ROOT}/.venv/bin/python"
    else
        printf '%s' python3
    fi
}

require_port_number() { # NAME VALUE
    if ! [[ "$2" =~ ^[0-9]+$ ]] || ((10#$2 < 1 || 10#$2 > 65535)); then
        fail "$1: expected a port number in 1..65535, got '$2'"
    fi
}

# True when nothing listens on (or holds) 127.0.0.1:PORT.
port_free() { # PORT
    "$(probe_python)" - "$1" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
}

# True when PID is alive (a zombie, dead but not yet reaped, is not).
pid_alive() { # PID
    kill -0 "$1" 2>/dev/null || return 1
    # The state follows the parenthesised command name, which may hold spaces.
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ "${stat:0:1}" != "Z" ]]
}

# True when PID is alive and its command line contains NAME.
pid_is() { # PID NAME
    local pid="$1" name="$2" cmdline
    [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
    pid_alive "${pid}" || return 1
    cmdline="$(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null)" || return 1
    [[ "${cmdline}" == *"${name}"* ]]
}

read_pidfile() { # FILE -> prints the PID or nothing
    if [[ -f "$1" ]]; then tr -dc '0-9' <"$1" || true; fi
}

# Starts CMD... in its own session, stdin closed, output to LOG, cwd DIR, and
# sets LAUNCHED_PID to its PID (the service itself: setsid does not fork here,
# because a background job of a non-interactive shell is not a group leader).
launch() { # DIR LOG CMD...
    local dir="$1" log="$2"
    shift 2
    (cd "${dir}" && exec setsid "$@" </dev/null >"${log}" 2>&1) &
    # shellcheck disable=SC2034 # read by the caller
    LAUNCHED_PID="$!"
}

# Sends TERM to each PID, waits up to TIMEOUT seconds for all, then KILLs the rest.
stop_pids() { # TIMEOUT PID...
    local timeout="$1"
    shift
    local pid left deadline
    for pid in "$@"; do kill -TERM "${pid}" 2>/dev/null || true; done
    deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        left=0
        for pid in "$@"; do pid_alive "${pid}" && left=1; done
        ((left == 0)) && return 0
        sleep 0.1
    done
    for pid in "$@"; do
        if pid_alive "${pid}"; then
            say "pid ${pid} still running after ${timeout}s: sending KILL"
            kill -KILL "${pid}" 2>/dev/null || true
        fi
    done
    # Give the kernel a moment to take the KILLed processes away.
    deadline=$((SECONDS + 5))
    while ((SECONDS < deadline)); do
        left=0
        for pid in "$@"; do pid_alive "${pid}" && left=1; done
        ((left == 0)) && return 0
        sleep 0.1
    done
    return 1
}

show_log_tail() { # NAME LOG
    say "---- last 30 lines of $2 ($1) ----"
    if [[ -f "$2" ]]; then tail -n 30 "$2" >&2; else say "(no log file)"; fi
    say "----"
}

redis_ping() { # PORT
    [[ "$(redis-cli -h "${HOST}" -p "$1" ping 2>/dev/null)" == "PONG" ]]
}

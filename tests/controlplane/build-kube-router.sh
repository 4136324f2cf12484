#!/usr/bin/env bash
# Builds kube-router (github.com/cloudnativelabs/kube-router/v2, the version in
# devkit/agentcube_netpol_dev/versions.env) from the Go module proxy, for the dataplane tier: a
# TEST-ONLY component whose network-policy controller enforces the product's NetworkPolicies
# on network namespaces the tests create. Built through the wrapper module in kube-router/,
# whose go.mod raises kube-router's pinned dependencies where it still builds (the release
# is flagged for security reports in them).
#
# Output: ${AGENTCUBE_NETPOL_CACHE:-$HOME/.cache/agentcube-netpol}/bin/kube-router-<version>/
#   kube-router
#   .complete                 (written last)
# A second run returns in well under a second. The last line on stdout is that directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../../devkit/agentcube_netpol_dev/versions.env
source "${here}/../../devkit/agentcube_netpol_dev/versions.env"

module="github.com/cloudnativelabs/kube-router/v2"
binary="kube-router"

log() { echo "build-kube-router.sh: $*" >&2; }

cache_root="${AGENTCUBE_NETPOL_CACHE:-${HOME}/.cache/agentcube-netpol}"
out_dir="${cache_root}/bin/kube-router-${KUBE_ROUTER_VERSION}"

if [[ -f "${out_dir}/.complete" && -x "${out_dir}/${binary}" ]]; then
  log "kube-router ${KUBE_ROUTER_VERSION} already built in ${out_dir}"
  echo "${out_dir}"
  exit 0
fi

if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
  PATH="/usr/local/go/bin:${PATH}"
fi
if ! command -v go >/dev/null; then
  log "go is not installed; install Go $(sed -n 's/^go //p' "${here}/kube-router/go.mod") or newer"
  exit 1
fi

wrapper_version="$(cd "${here}/kube-router" && go list -m -f '{{.Version}}' "${module}")"
if [[ "${wrapper_version}" != "${KUBE_ROUTER_VERSION}" ]]; then
  log "kube-router/go.mod requires ${module} ${wrapper_version}, versions.env says ${KUBE_ROUTER_VERSION}"
  exit 1
fi

started_at_s="$(date +%s)"
mkdir -p "${cache_root}/bin"
staging_dir="$(mktemp -d "${cache_root}/bin/.building-kube-router-XXXXXX")"
trap 'rm -rf "${staging_dir}"' EXIT

export CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false"

log "building ${binary} ${KUBE_ROUTER_VERSION} into ${out_dir}"
(cd "${here}/kube-router" && go build -trimpath \
  -ldflags "-s -w -X ${module}/pkg/version.Version=${KUBE_ROUTER_VERSION}" \
  -o "${staging_dir}/${binary}" "${module}/cmd/${binary}")

rm -rf "${out_dir}"
mv "${staging_dir}" "${out_dir}"
trap - EXIT
chmod 0755 "${out_dir}"
date -u +%Y-%m-%dT%H:%M:%SZ > "${out_dir}/.complete"
log "built in $(( $(date +%s) - started_at_s )) s; $(du -sh "${out_dir}" | cut -f1) in ${out_dir}"
echo "${out_dir}"

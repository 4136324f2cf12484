#!/usr/bin/env bash
# Builds helm (helm.sh/helm/v4, the version in devkit/agentcube_netpol_dev/versions.env)
# from the Go module proxy: `make test` lints and renders charts/agentcube-netpol with it
# and installs the chart on the test control plane.
#
# Output: ${AGENTCUBE_NETPOL_CACHE:-$HOME/.cache/agentcube-netpol}/bin/helm-<version>/
#   helm
#   .complete                 (written last)
# A second run returns in well under a second. The last line on stdout is that directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../../devkit/agentcube_netpol_dev/versions.env
source "${here}/../../devkit/agentcube_netpol_dev/versions.env"

module="helm.sh/helm/v4"

log() { echo "build-helm.sh: $*" >&2; }

cache_root="${AGENTCUBE_NETPOL_CACHE:-${HOME}/.cache/agentcube-netpol}"
out_dir="${cache_root}/bin/helm-${HELM_VERSION}"

if [[ -f "${out_dir}/.complete" && -x "${out_dir}/helm" ]]; then
  log "helm ${HELM_VERSION} already built in ${out_dir}"
  echo "${out_dir}"
  exit 0
fi

if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
  PATH="/usr/local/go/bin:${PATH}"
fi
if ! command -v go >/dev/null; then
  log "go is not installed"
  exit 1
fi

started_at_s="$(date +%s)"
mkdir -p "${cache_root}/bin"
staging_dir="$(mktemp -d "${cache_root}/bin/.building-helm-XXXXXX")"
trap 'rm -rf "${staging_dir}"' EXIT

export CGO_ENABLED=0
export GOFLAGS="-buildvcs=false"

log "building helm ${HELM_VERSION} into ${out_dir}"
# `go install module@version` builds with helm's own go.mod and go.sum, as released.
GOBIN="${staging_dir}" go install -trimpath \
  -ldflags "-s -w -X ${module}/internal/version.version=${HELM_VERSION}" \
  "${module}/cmd/helm@${HELM_VERSION}"
"${staging_dir}/helm" version --short >&2

rm -rf "${out_dir}"
mv "${staging_dir}" "${out_dir}"
trap - EXIT
chmod 0755 "${out_dir}"
date -u +%Y-%m-%dT%H:%M:%SZ > "${out_dir}/.complete"
log "built in $(( $(date +%s) - started_at_s )) s; $(du -sh "${out_dir}" | cut -f1) in ${out_dir}"
echo "${out_dir}"

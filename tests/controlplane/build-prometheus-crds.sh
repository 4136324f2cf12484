#!/usr/bin/env bash
# Generates prometheus-operator's CRDs (ServiceMonitor, PrometheusRule, ...) from its
# monitoring API module at PROMETHEUS_OPERATOR_VERSION with controller-gen at
# CONTROLLER_TOOLS_VERSION (both in devkit/agentcube_netpol_dev/versions.env; upstream
# generates its CRDs with controller-gen from the same types). The repository module that
# holds upstream's YAML is not on the Go module proxy; its API module is.
#
# Output: ${AGENTCUBE_NETPOL_CACHE:-$HOME/.cache/agentcube-netpol}/crds/prometheus-operator-<version>/
#   monitoring.coreos.com_*.yaml
#   .complete                 (written last)
# The last line on stdout is that directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../../devkit/agentcube_netpol_dev/versions.env
source "${here}/../../devkit/agentcube_netpol_dev/versions.env"

module="github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring"
log() { echo "build-prometheus-crds.sh: $*" >&2; }

cache_root="${AGENTCUBE_NETPOL_CACHE:-${HOME}/.cache/agentcube-netpol}"
out_dir="${cache_root}/crds/prometheus-operator-${PROMETHEUS_OPERATOR_VERSION}"
if [[ -f "${out_dir}/.complete" ]]; then
  echo "${out_dir}"
  exit 0
fi
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
  PATH="/usr/local/go/bin:${PATH}"
fi

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
log "generating prometheus-operator ${PROMETHEUS_OPERATOR_VERSION} CRDs"
(
  cd "${work}"
  go mod init crdgen >/dev/null 2>&1
  go get "${module}@${PROMETHEUS_OPERATOR_VERSION}" >/dev/null 2>&1
  GOBIN="${work}/bin" go install "sigs.k8s.io/controller-tools/cmd/controller-gen@${CONTROLLER_TOOLS_VERSION}"
  dir="$(go list -m -f '{{.Dir}}' "${module}")"
  "${work}/bin/controller-gen" crd:crdVersions=v1 paths="${dir}/v1/..." output:crd:dir="${work}/out"
)
mkdir -p "$(dirname "${out_dir}")"
rm -rf "${out_dir}"
mv "${work}/out" "${out_dir}"
date -u +%Y-%m-%dT%H:%M:%SZ > "${out_dir}/.complete"
echo "${out_dir}"

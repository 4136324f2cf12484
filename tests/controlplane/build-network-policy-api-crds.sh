#!/usr/bin/env bash
# Copies the ClusterNetworkPolicy CRD (policy.networking.k8s.io) of sigs.k8s.io/network-policy-api
# at NETWORK_POLICY_API_VERSION (devkit/agentcube_netpol_dev/versions.env) out of its Go module:
# the release ships the generated YAML in config/crd/, so nothing is generated here. The
# experimental channel's CRD, not the standard one: only it has the domainNames (and nodes)
# egress peers. Its kustomization files are left behind (kubectl apply -f <dir> would choke
# on them).
#
# Output: ${AGENTCUBE_NETPOL_CACHE:-$HOME/.cache/agentcube-netpol}/crds/network-policy-api-<version>/
#   policy.networking.k8s.io_clusternetworkpolicies.yaml
#   .complete                 (written last)
# The last line on stdout is that directory. Fails (exit 1) when the module cannot be
# downloaded or does not hold the CRD it should.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../../devkit/agentcube_netpol_dev/versions.env
source "${here}/../../devkit/agentcube_netpol_dev/versions.env"

module="sigs.k8s.io/network-policy-api"
channel="experimental"
crd_file="policy.networking.k8s.io_clusternetworkpolicies.yaml"
log() { echo "build-network-policy-api-crds.sh: $*" >&2; }
die() { log "$*"; exit 1; }

version="${NETWORK_POLICY_API_VERSION:?NETWORK_POLICY_API_VERSION missing from versions.env}"
cache_root="${AGENTCUBE_NETPOL_CACHE:-${HOME}/.cache/agentcube-netpol}"
out_dir="${cache_root}/crds/network-policy-api-${version}"
if [[ -f "${out_dir}/.complete" && -f "${out_dir}/${crd_file}" ]]; then
  echo "${out_dir}"
  exit 0
fi
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
  PATH="/usr/local/go/bin:${PATH}"
fi
command -v go >/dev/null || die "go is not installed"

log "copying network-policy-api ${version} CRDs (${channel} channel) from its Go module"
mkdir -p "${cache_root}/crds"
staging="$(mktemp -d "${cache_root}/crds/.building-network-policy-api-XXXXXX")"
trap 'rm -rf "${staging}"' EXIT
# Outside any module (the staging directory has no go.mod): a plain download by version,
# checked against the checksum database.
info="$(cd "${staging}" && GOFLAGS=-mod=mod go mod download -json "${module}@${version}")" \
  || die "go mod download ${module}@${version} failed: ${info:-no output}"
module_dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"${info}")"
[[ -n "${module_dir}" && -d "${module_dir}" ]] \
  || die "go mod download ${module}@${version} gave no module directory: ${info}"
source_file="${module_dir}/config/crd/${channel}/${crd_file}"
[[ -f "${source_file}" ]] || die "${module}@${version} has no config/crd/${channel}/${crd_file}"
# What the tests rely on: the bundle and channel it says it is, v1beta1 served, domainNames.
grep -q "policy.networking.k8s.io/bundle-version: ${version}$" "${source_file}" \
  || die "${source_file} is not bundle-version ${version}"
grep -q "policy.networking.k8s.io/channel: ${channel}$" "${source_file}" \
  || die "${source_file} is not the ${channel} channel"
grep -q "name: v1beta1$" "${source_file}" || die "${source_file} serves no v1beta1"
grep -q "domainNames:" "${source_file}" || die "${source_file} has no domainNames peer"

mkdir -p "${staging}/out"
cp "${source_file}" "${staging}/out/${crd_file}"
chmod 0644 "${staging}/out/${crd_file}"  # the module cache's copy is read-only
rm -rf "${out_dir}"
mv "${staging}/out" "${out_dir}"
date -u +%Y-%m-%dT%H:%M:%SZ > "${out_dir}/.complete"
echo "${out_dir}"

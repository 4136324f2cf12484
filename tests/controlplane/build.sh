#!/usr/bin/env bash
# Builds the control-plane binaries the end-to-end tests and `python -m webhook dev` run:
# kube-apiserver, kube-controller-manager and kubectl from k8s.io/kubernetes, and etcd from
# go.etcd.io/etcd/server/v3, all from the Go module proxy (versions in devkit/agentcube_netpol_dev/versions.env).
#
# Output: the binaries in ${AGENTCUBE_NETPOL_CACHE:-$HOME/.cache/agentcube-netpol}/bin/<k8s>-<etcd>/.
# The cache lives outside the repository on purpose: CI runs in a fresh clone of the repository
# on the same machine and reuses what an earlier run built. A second run with the binaries
# present returns in well under a second. The last line on stdout is the binaries' directory,
# so `export KUBEBUILDER_ASSETS="$(tests/controlplane/build.sh)"` works.
#
# If KUBEBUILDER_ASSETS is set, nothing is built: the script checks that the four binaries are
# there (the way envtest users already have them) and prints that directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../../devkit/agentcube_netpol_dev/versions.env
source "${here}/../../devkit/agentcube_netpol_dev/versions.env"

binaries=(etcd kube-apiserver kube-controller-manager kubectl)

log() { echo "build.sh: $*" >&2; }

check_binaries() {
  local dir="$1" missing=0 name
  for name in "${binaries[@]}"; do
    if [[ ! -x "${dir}/${name}" ]]; then
      log "missing or not executable: ${dir}/${name}"
      missing=1
    fi
  done
  return "${missing}"
}

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  if ! check_binaries "${KUBEBUILDER_ASSETS}"; then
    log "KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS} does not hold ${binaries[*]}"
    exit 1
  fi
  log "using prebuilt binaries from KUBEBUILDER_ASSETS"
  echo "${KUBEBUILDER_ASSETS}"
  exit 0
fi

cache_root="${AGENTCUBE_NETPOL_CACHE:-${HOME}/.cache/agentcube-netpol}"
out_dir="${cache_root}/bin/${K8S_VERSION}-${ETCD_VERSION}"
stamp="${out_dir}/.complete"

if [[ -f "${stamp}" ]] && check_binaries "${out_dir}" 2>/dev/null; then
  log "binaries already built in ${out_dir}"
  echo "${out_dir}"
  exit 0
fi

if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
  PATH="/usr/local/go/bin:${PATH}"   # the official tarball's place, when not on PATH
fi
if ! command -v go >/dev/null; then
  log "go is not installed; install Go $(sed -n 's/^go //p' "${here}/kubernetes/go.mod") or newer"
  exit 1
fi

started_at_s="$(date +%s)"
staging_dir="$(mktemp -d "${cache_root}/bin/.building-XXXXXX" 2>/dev/null \
  || { mkdir -p "${cache_root}/bin" && mktemp -d "${cache_root}/bin/.building-XXXXXX"; })"
trap 'rm -rf "${staging_dir}"' EXIT

# Version strings as Kubernetes' own hack/lib/version.sh sets them, so that `kubectl version`
# and the API server's /version report the real release. The build date is the release's
# publication time from the module proxy, which keeps the build reproducible.
k8s_minor="${K8S_VERSION#v1.}"
k8s_minor="${k8s_minor%%.*}"
release_time="$(cd "${here}/kubernetes" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)"
k8s_ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  k8s_ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION}"
  k8s_ldflags+=" -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${k8s_minor}"
  k8s_ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${release_time}"
done

# Same build settings as Kubernetes' release builds: static, trimmed, no debug symbols.
export CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false"

log "building kube-apiserver, kube-controller-manager, kubectl ${K8S_VERSION} into ${out_dir}"
(cd "${here}/kubernetes" && go build -trimpath -tags selinux,notest,grpcnotrace \
  -ldflags "${k8s_ldflags}" -o "${staging_dir}/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl)

log "building etcd ${ETCD_VERSION}"
(cd "${here}/etcd" && go build -trimpath -ldflags "-s -w" -o "${staging_dir}/etcd" .)

check_binaries "${staging_dir}"
mkdir -p "${out_dir}"
for name in "${binaries[@]}"; do
  mv -f "${staging_dir}/${name}" "${out_dir}/${name}"
done
date -u +%Y-%m-%dT%H:%M:%SZ > "${stamp}"
log "built in $(( $(date +%s) - started_at_s )) s; $(du -sh "${out_dir}" | cut -f1) in ${out_dir}"
echo "${out_dir}"

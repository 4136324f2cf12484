# agentcube-netpol: the admission webhook server (and reconciler).
#
#   docker build -t agentcube-netpol:0.1.0 .
#
# Two stages: the first builds our wheel and installs it with its dependencies into a
# virtualenv (as tests/wheel/check.sh does in CI, from the same three sources), then runs
# it once, outside the source tree (python -I), so a package that misses a module or its
# package data (webhook/manifests) fails the build, and so does the dev kit
# (agentcube-netpol-dev: control plane, fake kubelet, dataplane) if it got in; the second copies only
# that virtualenv onto a fresh copy of the same base, so neither the source tree nor the
# wheel build's tools ship, and the virtualenv has no pip. It leaves out what the product
# never imports: the kubernetes package's asyncio copy of its client (kubernetes/aio, 68 MB)
# and the aiohttp stack only that copy uses (an import-linter contract forbids aiohttp; the
# image tier runs every command that talks to a cluster). Pinned: the base to an exact
# Python patch release (override with --build-arg PYTHON_IMAGE=...@sha256:... to pin a
# digest), the dependencies to deploy/image/constraints.txt. The runtime needs no shell: ENTRYPOINT and CMD are
# exec form.

ARG PYTHON_IMAGE=python:3.11.15-slim-trixie

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY deploy/image/constraints.txt ./
COPY webhook ./webhook
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --constraint constraints.txt /wheels/*.whl \
 && /opt/venv/bin/python -m pip uninstall --quiet --yes \
      aiohttp aiohttp-retry aiohappyeyeballs aiosignal frozenlist multidict propcache yarl \
 && rm -rf /opt/venv/lib/python3*/site-packages/kubernetes/aio \
 && /opt/venv/bin/python -m pip uninstall --quiet --yes pip setuptools \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib \
 && /opt/venv/bin/agentcube-netpol --version \
 && echo '{"apiVersion": "runtime.agentcube.volcano.sh/v1alpha1", "kind": "CodeInterpreter", "metadata": {"name": "smoke"}, "spec": {"template": {"networkPolicy": {"mode": "Restricted"}}}}' \
  | /opt/venv/bin/agentcube-netpol render - --sandbox smoke-0 >/dev/null \
 && /opt/venv/bin/python -I -c "import importlib.util as u; from webhook.manifests import CRDS_DIR, WEBHOOKS_DIR; assert CRDS_DIR.is_dir() and WEBHOOKS_DIR.is_dir(); assert u.find_spec('agentcube_netpol_dev') is None, 'the dev kit must not ship'" \
 && /opt/venv/bin/python -I -c "import webhook.cli.main, webhook.cli.reconcile, webhook.cli.serve, webhook.runtime.programs, webhook.kube.kubeconfig; from kubernetes.config import kube_config, incluster_config"

FROM ${PYTHON_IMAGE}
# Bytecode was compiled at build time: nothing is written next to the code, so the
# root filesystem can be read-only. HOME points at /tmp (a volume in deploy/) since
# UID 65532 has no home directory.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=build /opt/venv /opt/venv
# The cert dir exists and belongs to the runtime user, so `docker run` without a volume
# still works (the server generates a CA and serving certificate there).
RUN mkdir -m 0700 /certs && chown 65532:65532 /certs
USER 65532:65532
WORKDIR /tmp
EXPOSE 9443
ENTRYPOINT ["agentcube-netpol"]
CMD ["serve", "--cert-dir", "/certs"]

"""The image, built from the Dockerfile as it is, and run as deploy/ runs it.

buildah builds it on a stand-in Python base made from Debian's packages (the official
base cannot be pulled here), podman runs it with runc: read-only root, every capability
dropped, no privilege escalation, the image's own user, listening on loopback only.
The build is cached by what goes into it (``agentcube_netpol_dev.image``).
"""

from __future__ import annotations

import os
import ssl
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from agentcube_netpol_dev.controlplane import free_loopback_ports
from agentcube_netpol_dev.image import (
    Built,
    Container,
    Storage,
    build,
    mounted,
    run_detached,
    storage,
)

from webhook.api.exitcodes import EXIT_FAILED
from webhook.tls.certs import create_ca

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RUNTIME_UID = 65532
STARTUP_SECONDS = 60.0


@pytest.fixture(scope="module")
def store() -> Storage:
    return storage(os.environ)


@pytest.fixture(scope="module")
def image() -> Built:
    # Fails (never skips) when buildah and friends are missing: `make test` installs them.
    return build(os.environ, root=REPO)


@pytest.fixture(scope="module")
def rootfs(store: Storage, image: Built) -> Iterator[Path]:
    with mounted(store, image.tag) as root:
        yield root


def test_it_runs_as_a_numeric_non_root_user_with_no_shell_in_its_commands(
    store: Storage, image: Built
) -> None:
    config = store.inspect(image.tag)["Config"]
    assert isinstance(config, dict)
    assert config["User"] == f"{RUNTIME_UID}:{RUNTIME_UID}"  # runAsNonRoot can check a number
    # Exec form: the kubelet starts the program itself, no /bin/sh -c.
    assert config["Entrypoint"] == ["agentcube-netpol"]
    assert config["Cmd"] == ["serve", "--cert-dir", "/certs"]


def test_it_carries_the_product_but_not_the_dev_kit_nor_pip(rootfs: Path) -> None:
    [site] = (rootfs / "opt/venv/lib").glob("python3*/site-packages")
    assert (site / "webhook/manifests/crds").is_dir()  # package data made it in
    assert not (site / "agentcube_netpol_dev").exists()
    assert not list(site.glob("agentcube_netpol_dev*"))
    assert not (rootfs / "opt/venv/bin/pip").exists()
    assert not list(site.glob("pip*")), "the virtualenv keeps pip"
    assert not (rootfs / "src").exists(), "the build stage's sources shipped"
    # What the product never imports: kubernetes' asyncio client and its aiohttp stack.
    assert not (site / "kubernetes/aio").exists()
    assert not list(site.glob("aiohttp*"))
    assert (site / "kubernetes/config/kube_config.py").is_file()
    # Compiled at build time: nothing needs writing next to the code at run time.
    assert list((site / "webhook/__pycache__").glob("*.pyc"))


def wait_healthy(url: str, ca_file: Path, container_logs: object) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if ca_file.is_file():
            context = ssl.create_default_context(cafile=str(ca_file))
            try:
                with urllib.request.urlopen(url, context=context, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
        time.sleep(0.2)
    pytest.fail(f"{url} never answered:\n{container_logs}")


def free_port() -> int:
    [port] = free_loopback_ports(1)
    return port


def emptydir(directory: Path) -> Path:
    """As a kubelet makes an emptyDir for a pod with fsGroup 65532: a directory it can write."""
    directory.mkdir(mode=0o700)
    os.chown(directory, RUNTIME_UID, RUNTIME_UID)
    return directory


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    return emptydir(tmp_path / "certs")


def test_the_default_command_serves_tls_read_only_as_65532_without_capabilities(
    store: Storage, image: Built, certs: Path
) -> None:
    port = free_port()
    container = run_detached(
        store,
        image.tag,
        ["serve", "--cert-dir", "/certs", "--host", "127.0.0.1", "--port", str(port)],
        mounts=[(certs, "/certs")],
    )
    try:
        wait_healthy(f"https://localhost:{port}/healthz", certs / "ca.crt", container.logs())
        [header, row] = store.run(
            "podman", "top", container.id, "user", "group", "capeff"
        ).stdout.splitlines()[:2]
        assert row.split() == [str(RUNTIME_UID), str(RUNTIME_UID), "none"], (header, row)
        # The certificates it made are where deploy/ mounts its emptyDir, and its own.
        assert {p.name for p in certs.iterdir()} >= {"ca.crt", "ca.key", "tls.crt", "tls.key"}
        assert all(p.stat().st_uid == RUNTIME_UID for p in certs.iterdir())
    finally:
        logs = container.logs()
        container.remove()
    assert "Traceback" not in logs, logs


@pytest.fixture(scope="module", autouse=True)
def deploy_without_api_server(
    store: Storage, image: Built, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Container, int]]:
    """deploy/'s command in a pod whose API server does not answer, started before this
    module's first test (it retries for half a minute while the others run)."""
    work = tmp_path_factory.mktemp("unreachable")
    account = work / "serviceaccount"
    account.mkdir()
    now = datetime.now(UTC)
    ca = create_ca(common_name="test cluster", not_before=now, not_after=now + timedelta(days=1))
    (account / "token").write_text("not-a-real-token")
    (account / "ca.crt").write_bytes(ca.cert_pem)
    (account / "namespace").write_text("agentcube-netpol-system")
    for path in (account, *account.iterdir()):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    closed = free_port()  # nothing listens there
    container = run_detached(
        store,
        image.tag,
        [*DEPLOY_ARGS, f"--port={free_port()}", "--host=127.0.0.1"],
        mounts=[
            (emptydir(work / "certs"), "/certs"),
            (account, "/var/run/secrets/kubernetes.io/serviceaccount:ro"),
        ],
        extra=[
            "--env=KUBERNETES_SERVICE_HOST=127.0.0.1",
            f"--env=KUBERNETES_SERVICE_PORT={closed}",
        ],
    )
    try:
        yield container, closed
    finally:
        container.remove()


def test_deploys_command_without_a_reachable_api_server_fails_in_one_line(
    deploy_without_api_server: tuple[Container, int],
) -> None:
    """The in-cluster config is found (service-account token, CA,
    KUBERNETES_SERVICE_*), the shared CA cannot be set up after its retries, and the
    container exits 5 with one error line the kubelet's log shows, not a traceback (the
    kubelet restarts it with its backoff)."""
    container, closed = deploy_without_api_server
    code = container.wait(timeout=180)
    logs = container.logs()
    assert code == EXIT_FAILED, logs
    assert "Traceback" not in logs, logs
    [line] = [line for line in logs.splitlines() if " ERROR " in line]
    assert "cannot start: shared CA and caBundle sync" in line, logs
    assert f"127.0.0.1', port={closed}" in line or f"127.0.0.1:{closed}" in line, logs


def deploy_args() -> list[str]:
    """The container args of deploy/'s Deployment."""
    deployment = yaml.safe_load((REPO / "deploy/base/deployment.yaml").read_text(encoding="utf-8"))
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return [str(arg) for arg in container["args"] if not str(arg).startswith("--port=")]


DEPLOY_ARGS = deploy_args()

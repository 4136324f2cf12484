"""The product's image, built from the Dockerfile as it is, and run with a real OCI runtime.

Debian's buildah builds it (chroot isolation: root, no daemon) and podman
runs it with runc, both on a storage of their own under the cache directory, so
nothing here touches the host's containers. The official Python base image cannot be
pulled on a machine that reaches only package registries; a stand-in base is made from
Debian's packages with mmdebstrap (bookworm: Python 3.11, like the pinned base) and
passed as ``--build-arg PYTHON_IMAGE``. The host's CA bundle is mounted read-only into
the build so pip reaches the package index as the host's does; it is never baked in.

Both are cached by what goes into them: the base by its recipe, the image by the
files the Dockerfile copies, so only a change to those rebuilds.

    python -m agentcube_netpol_dev.image build     # prints the tag, sizes, what takes space
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agentcube_netpol_dev.controlplane import cache_root

logger = logging.getLogger(__name__)

IMAGE_NAME = "localhost/agentcube-netpol"
BASE_NAME = "localhost/python-standin"
# The stand-in for python:3.11-slim: what the Dockerfile runs in its stages (python with
# venv and pip, CA certificates for pip) and a `python` command.
BASE_SUITE = "bookworm"
BASE_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
BASE_HOOK = 'chroot "$1" ln -sf python3 /usr/bin/python'
# What the Dockerfile copies into the build: a change to any of these rebuilds.
IMAGE_INPUTS = (
    "Dockerfile",
    "pyproject.toml",
    "README.md",
    "deploy/image/constraints.txt",
    "webhook",
)
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# runc as the OCI runtime (crun cannot set up cgroups on every test machine), with explicit
# limits: without them runc fails to raise them inside a sandboxed host.
RUNTIME = "runc"
ULIMITS = ("nofile=4096:4096", "nproc=4096:4096")
TOOLS = ("buildah", "podman", "mmdebstrap", RUNTIME)
# overlay: a container costs no copy of its image (vfs copies all 400 MB, 5-10 s a
# container). Where the kernel refuses overlay mounts, AGENTCUBE_NETPOL_STORAGE_DRIVER=vfs.
STORAGE_DRIVER = os.environ.get("AGENTCUBE_NETPOL_STORAGE_DRIVER", "overlay")


class ImageError(RuntimeError):
    """The image could not be built or run; the message says why, in a line or a few."""


@dataclass(frozen=True)
class Storage:
    """A containers storage of our own (``--root``/``--runroot``), for buildah and
    podman alike."""

    root: Path

    @property
    def flags(self) -> list[str]:
        return [
            "--root", str(self.root / "storage"),
            # Transient state; overlay wants its path under 50 characters.
            "--runroot", f"/tmp/agentcube-netpol-{STORAGE_DRIVER}-run",
            "--storage-driver", STORAGE_DRIVER,
        ]  # fmt: skip

    def run(
        self, tool: str, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        command = [tool, *self.flags, *args]
        result = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise ImageError(
                f"{tool} {args[0]} failed ({result.returncode}):\n{result.stderr[-3000:]}"
            )
        return result

    def exists(self, tag: str) -> bool:
        return self.run("podman", "image", "exists", tag, check=False).returncode == 0

    def inspect(self, tag: str) -> dict[str, object]:
        [image] = json.loads(self.run("podman", "image", "inspect", tag).stdout)
        return dict(image)


def storage(environ: Mapping[str, str]) -> Storage:
    return Storage(cache_root(environ) / f"containers-{STORAGE_DRIVER}")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _digest(parts: Sequence[bytes]) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.hexdigest()[:16]


def base_tag() -> str:
    recipe = [BASE_SUITE, BASE_MIRROR, *BASE_PACKAGES, BASE_HOOK]
    return f"{BASE_NAME}:3.11-{BASE_SUITE}-{_digest([r.encode() for r in recipe])}"


def input_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for name in IMAGE_INPUTS:
        path = root / name
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
            )
        else:
            files.append(path)
    return files


def image_tag(root: Path) -> str:
    """The tag of the image these sources build: the digest of every file the Dockerfile
    copies (path and content) and of the base."""
    parts = [base_tag().encode()]
    for path in input_files(root):
        parts += [str(path.relative_to(root)).encode(), path.read_bytes()]
    return f"{IMAGE_NAME}:test-{_digest(parts)}"


@dataclass(frozen=True)
class Built:
    tag: str
    base: str
    seconds: float  # 0 when cached
    base_seconds: float  # 0 when cached


def build(environ: Mapping[str, str], *, root: Path) -> Built:
    """The image of the checkout at ``root``, built unless cached; the base too."""
    if missing := missing_tools():
        raise ImageError(
            f"missing {', '.join(missing)}: `make image-packages` installs them "
            "(Debian: buildah mmdebstrap podman runc)"
        )
    store = storage(environ)
    with _building(store):
        return _build(store, root)


@contextlib.contextmanager
def _building(store: Storage) -> Iterator[None]:
    """One build at a time per storage: test workers (and a `make image` beside them) that
    all want the image wait for the first to build it, then find it cached."""
    store.root.mkdir(parents=True, exist_ok=True)
    with (store.root.parent / f"{store.root.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build(store: Storage, root: Path) -> Built:
    base, base_seconds = base_tag(), 0.0
    if not store.exists(base):
        base_seconds = _build_base(store, base)
    tag, seconds = image_tag(root), 0.0
    if not store.exists(tag):
        started = time.monotonic()
        build_args = [
            "bud", "--isolation", "chroot", "--layers=false",
            "--build-arg", f"PYTHON_IMAGE={base}",
            "--tag", tag, "--file", str(root / "Dockerfile"),
        ]  # fmt: skip
        if HOST_CA_BUNDLE.is_file():  # pip in the build trusts what the host's pip trusts
            build_args += ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
        store.run("buildah", *build_args, str(root), timeout=1200)
        seconds = time.monotonic() - started
        logger.info("built %s in %.0fs", tag, seconds)
        _remove_older(store, keep=tag)
    return Built(tag=tag, base=base, seconds=seconds, base_seconds=base_seconds)


def _remove_older(store: Storage, *, keep: str) -> None:
    """Earlier builds of the image (400 MB each)."""
    listed = store.run("podman", "images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_NAME)
    for tag in listed.stdout.split():
        if tag != keep and tag.startswith(f"{IMAGE_NAME}:test-"):
            store.run("podman", "rmi", "--force", tag, check=False)


def _build_base(store: Storage, tag: str) -> float:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="agentcube-netpol-base-") as work:
        tarball = Path(work) / "base.tar"
        command = [
            "mmdebstrap", "--quiet", "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            f"--customize-hook={BASE_HOOK}",
            BASE_SUITE, str(tarball), BASE_MIRROR,
        ]  # fmt: skip
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise ImageError(f"mmdebstrap failed ({result.returncode}):\n{result.stderr[-3000:]}")
        store.run("podman", "import", "--change", 'CMD ["python3"]', str(tarball), tag)
    seconds = time.monotonic() - started
    logger.info("made the stand-in base %s in %.0fs", tag, seconds)
    return seconds


# --- what is in it ------------------------------------------------------------------------


@contextlib.contextmanager
def mounted(store: Storage, tag: str) -> Iterator[Path]:
    """The image's root filesystem, to read (no container: nothing is copied)."""
    try:
        yield Path(store.run("podman", "image", "mount", tag).stdout.strip())
    finally:
        store.run("podman", "image", "unmount", tag, check=False)


def size_of(store: Storage, tag: str) -> int:
    size = store.inspect(tag)["Size"]
    assert isinstance(size, int)
    return size


def largest(directory: Path, count: int = 8) -> list[tuple[str, int]]:
    """The ``count`` largest entries of ``directory``, with their sizes in bytes."""
    sizes = []
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            total = sum(p.lstat().st_size for p in entry.rglob("*") if not p.is_symlink())
        else:
            total = entry.lstat().st_size
        sizes.append((entry.name, total))
    return sorted(sizes, key=lambda item: -item[1])[:count]


# --- running it -----------------------------------------------------------------------------


@dataclass
class Container:
    """A container of the image, started detached; removed by its ID."""

    store: Storage
    id: str

    def logs(self) -> str:
        result = self.store.run("podman", "logs", self.id, check=False)
        return result.stdout + result.stderr

    def state(self) -> dict[str, object]:
        [info] = json.loads(self.store.run("podman", "inspect", self.id).stdout)
        return dict(info["State"])

    def wait(self, timeout: float) -> int:
        result = self.store.run("podman", "wait", self.id, timeout=timeout)
        return int(result.stdout.strip().splitlines()[-1])

    def remove(self) -> None:
        self.store.run("podman", "rm", "--force", "--time", "10", self.id, check=False)


def run_detached(
    store: Storage,
    tag: str,
    args: Sequence[str] = (),
    *,
    mounts: Sequence[tuple[Path, str]] = (),
    extra: Sequence[str] = (),
) -> Container:
    """Start ``tag`` as deploy/ runs it: a read-only root, every capability dropped, no
    privilege escalation, the image's own user; on the host's network (it listens on
    loopback only, so no traffic leaves the machine). ``mounts``: host directories, as a
    kubelet mounts an emptyDir."""
    command = [
        "run", "--detach", "--runtime", RUNTIME,
        *(f"--ulimit={limit}" for limit in ULIMITS),
        "--network", "host", "--read-only", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        *(f"--volume={host}:{inside}" for host, inside in mounts),
        *extra, tag, *args,
    ]  # fmt: skip
    return Container(store, store.run("podman", *command).stdout.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentcube_netpol_dev.image")
    parser.add_argument("command", choices=["build"])
    parser.add_argument(
        "--source",
        type=Path,
        default=Path.cwd(),
        help="the checkout (default: the current directory)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(message)s")
    try:
        built = build(os.environ, root=args.source)
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 5
    store = storage(os.environ)
    image, base = size_of(store, built.tag), size_of(store, built.base)
    print(f"image   {built.tag}  {image / 1e6:.0f} MB (stand-in base {base / 1e6:.0f} MB)")
    with mounted(store, built.tag) as rootfs:
        site = next((rootfs / "opt/venv/lib").glob("python3*/site-packages"))
        venv = sum(p.lstat().st_size for p in (rootfs / "opt/venv").rglob("*"))
        print(f"venv    {venv / 1e6:.0f} MB; largest in site-packages:")
        for name, size in largest(site):
            print(f"  {size / 1e6:6.1f} MB  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""AgentCube's CRDs must declare ``networkPolicy``, or the API server prunes it and no sandbox
is isolated: ``run --patch-crds`` keeps our property in them.

AgentCube installs the AgentRuntime and CodeInterpreter CRDs; their structural schemas keep
only what they declare, so a template's ``networkPolicy`` is dropped on the way into storage,
silently, before any webhook sees it. Re-installing AgentCube's CRDs (an upgrade) drops our
property again. The keeper checks both CRDs every ``CHECK_INTERVAL_SECONDS`` and, where our
property is missing or out of date, adds it with a JSON patch.

``plan_schema`` is the decision, pure: which served versions lack the property, with a JSON
patch that adds it there and tests the CRD's resourceVersion first (a CRD changed since it
was read is left for the next check). It never replaces a ``networkPolicy`` property that is
not ours (AgentCube may one day declare its own): that is a conflict, reported, not written.
``audit`` reports the same plan as a finding.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

import yaml

from webhook.api import kinds
from webhook.kube import errors
from webhook.kube.rest import Rest
from webhook.manifests import CRDS_DIR

logger = logging.getLogger(__name__)

CRD = kinds.Kind(
    "apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions"
)
TEMPLATE_KINDS = (kinds.AGENT_RUNTIME, kinds.CODE_INTERPRETER)
# An upgrade of AgentCube that re-installs its CRDs leaves templates written in the next
# interval without networkPolicy (README: "CRD patches"): two GETs every 15 s cost nothing.
CHECK_INTERVAL_SECONDS = 15.0
# Our property says whose it is; a networkPolicy property without it is someone else's.
OWNER_MARK = "(agentcube-netpol)"

State = Literal["in-place", "patch", "missing", "conflict", "unsupported"]


def crd_name(kind: kinds.Kind) -> str:
    return f"{kind.plural}.{kind.group}"


@cache
def our_schema(kind_name: str) -> dict[str, Any]:
    """The networkPolicy property as the package's CRD declares it (one copy: the patches in
    deploy/crds/patches/ are checked against it)."""
    kind = next(kind for kind in TEMPLATE_KINDS if kind.kind == kind_name)
    crd = yaml.safe_load((CRDS_DIR / f"{kind.plural}.yaml").read_text())
    schema = _property_parent(crd["spec"]["versions"][0], kind_name)
    assert schema is not None, f"{kind.plural}.yaml has no {'.'.join(_path(kind_name))}"
    return dict(schema["properties"][_path(kind_name)[-1]])


def _path(kind_name: str) -> tuple[str, ...]:
    return kinds.TEMPLATE_POLICY_PATH[kind_name]


def _property_parent(version: Mapping[str, Any], kind_name: str) -> dict[str, Any] | None:
    """The schema whose ``properties`` should hold networkPolicy (``spec.podTemplate`` or
    ``spec.template``), or None where this version has no such object."""
    node: Any = (version.get("schema") or {}).get("openAPIV3Schema")
    for name in _path(kind_name)[:-1]:
        if not isinstance(node, dict):
            return None
        node = (node.get("properties") or {}).get(name)
    return node if isinstance(node, dict) and isinstance(node.get("properties"), dict) else None


@dataclass(frozen=True)
class SchemaPlan:
    """What to do about one CRD: ``in-place`` (nothing), ``patch`` (``ops``), ``missing``
    (the CRD is not installed), ``conflict`` (a networkPolicy that is not ours), or
    ``unsupported`` (no served version has the object our property belongs in)."""

    crd: str
    state: State
    detail: str
    ops: list[dict[str, Any]] = field(default_factory=list)


def plan_schema(crd: Mapping[str, Any] | None, kind_name: str) -> SchemaPlan:
    kind = next(kind for kind in TEMPLATE_KINDS if kind.kind == kind_name)
    name = crd_name(kind)
    field_path = ".".join(_path(kind_name))
    if crd is None:
        return SchemaPlan(name, "missing", "not installed (AgentCube installs it)")
    wanted = our_schema(kind_name)
    served = [
        (index, version)
        for index, version in enumerate(crd.get("spec", {}).get("versions") or [])
        if isinstance(version, Mapping) and version.get("served")
    ]
    ops: list[dict[str, Any]] = []
    lacking: list[str] = []
    stale: list[str] = []
    without: list[str] = []
    for index, version in served:
        version_name = str(version.get("name", ""))
        parent = _property_parent(version, kind_name)
        if parent is None:
            without.append(version_name)
            continue
        present = parent["properties"].get(_path(kind_name)[-1])
        if present == wanted:
            continue
        if isinstance(present, Mapping) and OWNER_MARK not in str(present.get("description", "")):
            return SchemaPlan(
                name,
                "conflict",
                f"{version_name} declares a {field_path} of its own: left as it is",
            )
        (stale if present is not None else lacking).append(version_name)
        pointer = "/".join(
            ["", "spec", "versions", str(index), "schema", "openAPIV3Schema"]
            + [part for step in _path(kind_name) for part in ("properties", step)]
        )
        ops.append({"op": "add", "path": pointer, "value": wanted})
    if not served or len(without) == len(served):
        parent_path = ".".join(_path(kind_name)[:-1])
        return SchemaPlan(
            name,
            "unsupported",
            f"no served version ({', '.join(without) or 'none'}) has {parent_path}",
        )
    if not ops:
        return SchemaPlan(name, "in-place", f"{field_path} declared")
    resource_version = str((crd.get("metadata") or {}).get("resourceVersion", ""))
    guard = {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version}
    parts = [f"missing in {', '.join(lacking)}"] if lacking else []
    parts += [f"out of date in {', '.join(stale)}"] if stale else []
    return SchemaPlan(
        name,
        "patch",
        f"{field_path} {' and '.join(parts)}: the API server drops it from every template",
        [guard, *ops],
    )


# --- the keeper: I/O around plan_schema ------------------------------------------------


def fetch_crd(rest: Rest, kind: kinds.Kind) -> dict[str, Any] | None:
    """The live CRD of ``kind`` (None: not installed)."""
    try:
        return rest.get(CRD, "", crd_name(kind))
    except errors.NotFound:
        return None


class CrdSchemaKeeper:
    """A leader runnable: checks AgentCube's two CRDs at start and every ``interval_seconds``
    and patches in our property where ``plan_schema`` says so. It never fails the process
    (isolation of existing sandboxes does not depend on it): an API error is logged and the
    next check tries again; each CRD's state is a gauge and a log line when it changes."""

    name = "crd schema patches"

    def __init__(
        self,
        rest: Rest,
        *,
        may_write: Callable[[], bool],
        on_state: Callable[[str, bool], None] = lambda crd, declared: None,
        interval_seconds: float = CHECK_INTERVAL_SECONDS,
    ) -> None:
        self._rest = rest
        self._may_write = may_write
        self._on_state = on_state
        self._interval = interval_seconds
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: dict[str, str] = {}

    def start(self, on_failure: Callable[[str], None]) -> None:
        self._stopping = threading.Event()  # started again when the Lease is won again
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self.check()
            self._stopping.wait(self._interval)

    def check(self) -> list[SchemaPlan]:
        """One pass over both CRDs; the plans as found (before any patch)."""
        plans = []
        for kind in TEMPLATE_KINDS:
            name = crd_name(kind)
            try:
                plan = plan_schema(fetch_crd(self._rest, kind), kind.kind)
                plans.append(plan)
                if plan.state == "patch" and self._may_write():
                    self._rest.patch(CRD, "", name, plan.ops, patch_type="json")
                    logger.info("CRD %s: %s; patched in", name, plan.detail)
                    self._report(name, "in-place", plan.detail, declared=True)
                else:
                    self._report(name, plan.state, plan.detail, declared=plan.state == "in-place")
            except errors.Forbidden as exc:
                self._report(
                    name,
                    "forbidden",
                    f"{exc} (RBAC: get and patch on this CRD, deploy/base/rbac.yaml)",
                    declared=False,
                )
            except errors.ApiError as exc:  # Conflict (changed since read), away, ...
                logger.warning("CRD %s: %s; trying again in %.0fs", name, exc, self._interval)
        return plans

    def _report(self, crd: str, state: str, detail: str, *, declared: bool) -> None:
        self._on_state(crd, declared)
        if self._last.get(crd) == state:
            return
        self._last[crd] = state
        if state == "in-place":
            logger.info("CRD %s declares networkPolicy", crd)
        elif state == "missing":
            logger.info("CRD %s %s; checking again every %.0fs", crd, detail, self._interval)
        else:
            logger.error("CRD %s: %s: templates lose their networkPolicy", crd, detail)

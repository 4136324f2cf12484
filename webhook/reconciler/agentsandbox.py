"""Facts about agent-sandbox that the reconciler relies on, each with its source.

``name_hash``: agent-sandbox labels every warm-pool Sandbox and pod
``agents.x-k8s.io/sandbox-template-ref-hash: NameHash(<SandboxTemplate name>)``
(extensions/controllers/sandboxwarmpool_controller.go), and its claim controller
keeps that label on the adopted Sandbox's pod template
(sandboxclaim_controller.go, completeAdoption); ``NameHash`` is FNV-1a 32 of the
name as 8 lower-case hex digits (controllers/sandbox_controller.go). So the label
selects a template's warm-pool pods from the moment they exist until they are
deleted, claimed or not.
"""

from __future__ import annotations

FNV32_OFFSET_BASIS = 0x811C9DC5
FNV32_PRIME = 0x01000193
UINT32_MASK = 0xFFFFFFFF


def name_hash(name: str) -> str:
    """agent-sandbox's ``NameHash``: FNV-1a (32-bit) of the UTF-8 name, as ``%08x``."""
    value = FNV32_OFFSET_BASIS
    for byte in name.encode():
        value = ((value ^ byte) * FNV32_PRIME) & UINT32_MASK
    return f"{value:08x}"

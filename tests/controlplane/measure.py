"""Start the test control plane a few times and print what it costs: start time and
resident memory of each process (the numbers in tests/controlplane/README.md).

    python tests/controlplane/measure.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from agentcube_netpol_dev.controlplane import ControlPlane, find_binaries

MIB = 1024 * 1024
SETTLE_S = 5.0  # let the API server finish its post-start hooks before reading memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    binaries = find_binaries(os.environ)
    print(f"binaries: {binaries.directory}")
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl"):
        size = binaries.path(name).stat().st_size
        print(f"  {name}: {size / MIB:.0f} MiB")
    for with_kcm in (False, True):
        starts: list[float] = []
        memory: dict[str, list[int]] = {}
        for _ in range(args.runs):
            with ControlPlane(binaries=binaries, with_controller_manager=with_kcm) as cp:
                starts.append(cp.started_in_s)
                time.sleep(SETTLE_S)
                for name, rss in cp.resident_memory_bytes().items():
                    memory.setdefault(name, []).append(rss)
        label = (
            "etcd + kube-apiserver + kube-controller-manager"
            if with_kcm
            else ("etcd + kube-apiserver")
        )
        print(
            f"{label}: start to ready, {args.runs} runs: "
            f"median {statistics.median(starts):.1f} s, max {max(starts):.1f} s"
        )
        for name, values in memory.items():
            print(f"  RSS {name}: median {statistics.median(values) / MIB:.0f} MiB")
        total = sum(statistics.median(values) for values in memory.values())
        print(f"  RSS total: {total / MIB:.0f} MiB")


if __name__ == "__main__":
    main()

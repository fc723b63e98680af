#!/usr/bin/env python3
"""CRI CheckpointContainer of a 64 MiB container: our endpoint on containerd 1.6 vs containerd
2.1.9's own CRI with runc.

Usage (root; hack/install.sh and hack/install-k8s.sh done):
    hack/bench_cri.py [--runs N] [--size MiB] [--json]

Two private CRI-enabled containerd instances are started (the integration tests' starter,
integration/_cri_containerd.py): the system's containerd 1.6.20 behind ``pyrunc cri serve`` with
pods on ``io.containerd.pyrunc.v2``, and containerd 2.1.9 answering CRI itself with
``io.containerd.runc.v2`` (the reference). In each, one hostNetwork pod runs ``memfill SIZE``;
a kubelet stand-in calls CheckpointContainer with kubelet's location and timeout, alternating
between the two setups so that machine noise hits both alike. The time is the wall clock of the
gRPC call (the archive complete at ``location``); each archive is deleted after the run.
Prints medians and the ratio ours/reference (target <= 1.0); ``--json`` prints the numbers.
Everything is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from integration._cri_containerd import CriContainerd, Version  # noqa: E402
from integration._cri_endpoint import Endpoint  # noqa: E402
from integration._cri_kubelet import Kubelet, checkpoint_location  # noqa: E402
from integration.harness import IMAGE_REF, wait_until  # noqa: E402


def _filled(kubelet: Kubelet, cid: str, size: int) -> bool:
    path = Path(kubelet.container_status(cid).log_path)
    return path.exists() and f"filled {size} MiB" in path.read_text(errors="replace")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--size", type=int, default=64, help="memfill size in MiB")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    ours_ctrd = CriContainerd.start(Version.V1_6)
    ref_ctrd = None
    endpoint = None
    try:
        ref_ctrd = CriContainerd.start(Version.V2_1)
        endpoint = Endpoint.start(ours_ctrd.address)
        setups = {"ours (1.6.20 + pyrunc cri serve, pyrunc)": (endpoint.uri, "pyrunc"),
                  "reference (2.1.9 CRI, runc.v2)": (f"unix://{ref_ctrd.address}", "runc")}
        times: dict[str, list[float]] = {name: [] for name in setups}
        with tempfile.TemporaryDirectory(prefix="bench-cri-") as scratch:
            kubelets = {name: Kubelet(grpc.insecure_channel(uri), uri)
                        for name, (uri, _) in setups.items()}
            containers = {}
            for name, (_, handler) in setups.items():
                k = kubelets[name]
                pod = k.run_pod("bench", host_network=True, runtime_handler=handler)
                cid = k.create_container(pod, "memfill", IMAGE_REF,
                                         ["memfill", str(args.size), "1"])
                wait_until(lambda k=k, cid=cid: _filled(k, cid, args.size), 60,
                           message="memfill to fill")
                containers[name] = (pod, cid)
            for run in range(args.runs + 1):  # run 0 warms up and is not counted
                for name in setups:
                    k, (pod, cid) = kubelets[name], containers[name]
                    location = checkpoint_location(Path(scratch), pod.name, pod.namespace,
                                                   f"memfill-{run}")
                    start = time.perf_counter()
                    k.checkpoint(cid, location)
                    elapsed = time.perf_counter() - start
                    location.unlink()
                    if run:
                        times[name].append(elapsed)
            for k in kubelets.values():
                k.remove_everything()
                k.channel.close()
        medians = {name: statistics.median(v) for name, v in times.items()}
        ours, ref = medians.values()
        result = {"size_mib": args.size, "runs": args.runs, "seconds": times,
                  "median": medians, "ratio": ours / ref}
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"CheckpointContainer, {args.size} MiB memfill, median of {args.runs}:")
            for name, value in medians.items():
                print(f"  {name:45s} {value * 1000:8.0f} ms")
            print(f"  ratio ours/reference: {ours / ref:.2f} (target <= 1.0)")
    finally:
        if endpoint is not None:
            endpoint.stop()
        for d in (ours_ctrd, ref_ctrd):
            if d is not None:
                problems = d.stop()
                if problems:
                    print("teardown:", *problems, sep="\n  ", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

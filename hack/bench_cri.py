#!/usr/bin/env python3
"""CRI CheckpointContainer, and restore (CreateContainer + StartContainer from the archive), of a
64 MiB container: our endpoint on containerd 1.6 vs containerd 2.1.9's own CRI with runc.

Usage (root; hack/install.sh and hack/install-k8s.sh done):
    hack/bench_cri.py [--runs N] [--size MiB] [--json] [--keep-logs DIR]

Two private CRI-enabled containerd instances are started (the integration tests' starter,
integration/_cri_containerd.py): the system's containerd 1.6.20 behind ``pyrunc cri serve`` with
pods on ``io.containerd.pyrunc.v2``, and containerd 2.1.9 answering CRI itself with
``io.containerd.runc.v2`` (the reference). In each, one hostNetwork pod runs ``memfill SIZE``;
a kubelet stand-in calls CheckpointContainer with kubelet's location and timeout, alternating
between the two setups so that machine noise hits both alike. The time is the wall clock of the
gRPC call (the archive complete at ``location``); each archive is deleted after the run.
Prints medians and the ratio ours/reference (target <= 1.0); ``--json`` prints the numbers.

Restore: each setup's last archive is restored ``--runs`` times (plus a warm-up) into a new
hostNetwork pod, the setups' order alternating: the time is CreateContainer (image = the
archive's path) + StartContainer, the wall clock of the two gRPC calls (the process restored
and running), also given per call (medians ``median_create``, ``median_start``: the endpoint
unpacks the archive and applies its rootfs diff in CreateContainer, CRIU restores in
StartContainer); the pod is removed between runs, untimed. containerd 2.1.9's own restore
always pulls the base image from a registry, so there the memfill pod runs an image pulled
from a local registry (integration/_cri_registry.py, Debian's docker-registry on 127.0.0.1).
JSON: ``restore`` holds the same fields as the checkpoint numbers. Everything is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import shutil
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
from integration._cri_kubelet import RUNTIME_REQUEST_TIMEOUT, Kubelet, checkpoint_location  # noqa: E402
from integration._cri_registry import Registry  # noqa: E402
from integration.harness import IMAGE_REF, wait_until  # noqa: E402
from shim.api.k8s.cri.runtime.v1 import api_pb2  # noqa: E402


def _filled(kubelet: Kubelet, cid: str, size: int) -> bool:
    path = Path(kubelet.container_status(cid).log_path)
    return path.exists() and f"filled {size} MiB" in path.read_text(errors="replace")


def _restore_once(k: Kubelet, handler: str, archive: Path, run: int) -> tuple[float, float]:
    """A new hostNetwork pod; CreateContainer(image = archive) and StartContainer, each
    timed; then the pod goes (untimed)."""
    pod = k.run_pod(f"restore-{run}", host_network=True, runtime_handler=handler)
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="memfill", attempt=0),
        image=api_pb2.ImageSpec(image=str(archive)),
        labels={"io.kubernetes.container.name": "memfill", "io.kubernetes.pod.name": pod.name,
                "io.kubernetes.pod.namespace": pod.namespace, "io.kubernetes.pod.uid": pod.uid},
        annotations={"io.kubernetes.container.restartCount": "0"},
        log_path="memfill/0.log",
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(
                namespace_options=pod.config.linux.security_context.namespace_options)),
    )
    (pod.log_directory / "memfill").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cid = k.runtime.CreateContainer(
        api_pb2.CreateContainerRequest(pod_sandbox_id=pod.id, config=config,
                                       sandbox_config=pod.config),
        timeout=RUNTIME_REQUEST_TIMEOUT).container_id
    created = time.perf_counter()
    k.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid),
                             timeout=RUNTIME_REQUEST_TIMEOUT)
    started = time.perf_counter()
    state = k.container_status(cid).state
    if state != api_pb2.ContainerState.CONTAINER_RUNNING:
        raise RuntimeError(f"restored container {cid} is {state}, not running")
    k.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0),
                            timeout=RUNTIME_REQUEST_TIMEOUT)
    k.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid),
                              timeout=RUNTIME_REQUEST_TIMEOUT)
    k.remove_pod(pod.id)
    return created - start, started - created


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--size", type=int, default=64, help="memfill size in MiB")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--keep-logs", metavar="DIR",
                        help="copy the endpoint's and both containerds' logs into DIR")
    args = parser.parse_args()

    ours_ctrd = CriContainerd.start(Version.V1_6)
    ref_ctrd = None
    endpoint = None
    registry = None
    try:
        ref_ctrd = CriContainerd.start(Version.V2_1)
        endpoint = Endpoint.start(ours_ctrd.address)
        registry = Registry.start()
        ref_image = f"{registry.host}/pyrunc-test:latest"
        ref_ctrd.ctr("images", "tag", IMAGE_REF, ref_image)
        ref_ctrd.ctr("images", "push", "--plain-http", ref_image)
        ref_ctrd.ctr("images", "rm", ref_image)
        setups = {"ours (1.6.20 + pyrunc cri serve, pyrunc)": (endpoint.uri, "pyrunc"),
                  "reference (2.1.9 CRI, runc.v2)": (f"unix://{ref_ctrd.address}", "runc")}
        times: dict[str, list[float]] = {name: [] for name in setups}
        archives: dict[str, Path] = {}
        with tempfile.TemporaryDirectory(prefix="bench-cri-") as scratch:
            kubelets = {name: Kubelet(grpc.insecure_channel(uri), uri)
                        for name, (uri, _) in setups.items()}
            containers = {}
            images = {name: IMAGE_REF if handler == "pyrunc" else ref_image
                      for name, (_, handler) in setups.items()}
            for name, (_, handler) in setups.items():
                k = kubelets[name]
                if images[name] != IMAGE_REF:  # pulled: config.dump then names a repo digest
                    k.images.PullImage(api_pb2.PullImageRequest(
                        image=api_pb2.ImageSpec(image=images[name])), timeout=120)
                pod = k.run_pod("bench", host_network=True, runtime_handler=handler)
                cid = k.create_container(pod, "memfill", images[name],
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
                    if run:
                        times[name].append(elapsed)
                    if run < args.runs:
                        location.unlink()
                    else:
                        archives[name] = location
            for k in kubelets.values():  # pod A goes; its archive is restored
                k.remove_everything()
            restore_times: dict[str, list[float]] = {name: [] for name in setups}
            parts: dict[str, dict[str, list[float]]] = {
                name: {"create": [], "start": []} for name in setups}
            for run in range(args.runs + 1):
                order = list(setups.items())
                for name, (_, handler) in order if run % 2 else order[::-1]:
                    k = kubelets[name]
                    create, start = _restore_once(k, handler, archives[name], run)
                    if run:
                        restore_times[name].append(create + start)
                        parts[name]["create"].append(create)
                        parts[name]["start"].append(start)
            for k in kubelets.values():
                k.remove_everything()
                k.channel.close()
        medians = {name: statistics.median(v) for name, v in times.items()}
        ours, ref = medians.values()
        restore_medians = {name: statistics.median(v) for name, v in restore_times.items()}
        r_ours, r_ref = restore_medians.values()
        result = {"size_mib": args.size, "runs": args.runs, "seconds": times,
                  "median": medians, "ratio": ours / ref,
                  "restore": {"seconds": restore_times, "median": restore_medians,
                              "ratio": r_ours / r_ref,
                              "median_create": {n: statistics.median(v["create"])
                                                for n, v in parts.items()},
                              "median_start": {n: statistics.median(v["start"])
                                               for n, v in parts.items()}}}
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"CheckpointContainer, {args.size} MiB memfill, median of {args.runs}:")
            for name, value in medians.items():
                print(f"  {name:45s} {value * 1000:8.0f} ms")
            print(f"  ratio ours/reference: {ours / ref:.2f} (target <= 1.0)")
            print(f"Restore (CreateContainer + StartContainer from the archive), {args.size} MiB "
                  f"memfill, median of {args.runs}:")
            for name, value in restore_medians.items():
                create = result["restore"]["median_create"][name]  # type: ignore[index]
                start = result["restore"]["median_start"][name]  # type: ignore[index]
                print(f"  {name:45s} {value * 1000:8.0f} ms  (CreateContainer "
                      f"{create * 1000:.0f} ms, StartContainer {start * 1000:.0f} ms)")
            print(f"  ratio ours/reference: {r_ours / r_ref:.2f} (target <= 1.0)")
    finally:
        if args.keep_logs:
            keep = Path(args.keep_logs)
            keep.mkdir(parents=True, exist_ok=True)
            for name, d in (("endpoint", endpoint), ("ours-containerd", ours_ctrd),
                            ("reference-containerd", ref_ctrd)):
                if d is not None and d.log_path.exists():
                    shutil.copy(d.log_path, keep / f"{name}.log")
        if endpoint is not None:
            endpoint.stop()
        if ref_ctrd is not None and registry is not None:
            for image in ref_ctrd.ctr("images", "ls", "-q").stdout.split():
                if image.startswith(f"{registry.host}/"):
                    ref_ctrd.ctr("images", "rm", image)
        if registry is not None:
            registry.stop()
        for d in (ours_ctrd, ref_ctrd):
            if d is not None:
                problems = d.stop()
                if problems:
                    print("teardown:", *problems, sep="\n  ", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

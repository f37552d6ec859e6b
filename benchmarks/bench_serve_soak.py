"""Soak and fault test of the served app: sustained load with malformed clients, a replica killed.

A real `serve run` (its own local Ray) on 127.0.0.1 serves gleam.serving.app with the local
GLEAM-C architecture (tf_efficientnet_lite0 at 96 px, fresh weights), a flat index of random unit
vectors, API keys on, and two Retriever replicas. ``--clients`` asyncio clients (httpx) send
requests back to back for ``--seconds``; ``--malformed`` of them are bad on purpose, cycling
through: not an image (415), unknown view (422), invalid base64 (422), a body over the cap
(413), no API key (401), an unknown field (422). Meanwhile:

* ``/healthz`` is polled every second (must answer 200 every time);
* the RSS of every Serve replica process (psutil) is sampled every 2 s (flat = no leak);
* halfway through, one Retriever replica is SIGKILLed; the ingress asks another replica for
  the calls it lost (gleam.serving.app._call) and Serve restarts the dead one.

Recorded in benchmarks/results/serve_soak.json: requests/s (all and valid), p50/p99 latency of
valid requests, status counts per request kind, 5xx on valid requests (overall and in the 10 s
after the kill), health-check answers, RSS per replica at start and end, and when the
replacement replica came up.

    python benchmarks/bench_serve_soak.py                       # 120 s, 32 clients, 20 % malformed
    python benchmarks/bench_serve_soak.py --seconds 20 --clients 8 --out /tmp/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_localize import make_checkpoint, make_index  # noqa: E402  (shared fixtures)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "serve_soak.json"
KEY = "soak-test-key"
BAD_KINDS = ["not_image", "bad_view", "bad_base64", "too_large", "no_key", "unknown_field"]
EXPECTED = {"valid": 200, "not_image": 415, "bad_view": 422, "bad_base64": 422, "too_large": 413, "no_key": 401,
            "unknown_field": 422}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--malformed", type=float, default=0.2, help="share of requests that are bad on purpose")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--gallery", type=int, default=10_000)
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of --seconds; <0 = no kill")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def replicas() -> dict[int, str]:
    """{pid: deployment} of this machine's Serve replica processes (Ray titles them
    ``ray::ServeReplica:<app>:<deployment>``)."""
    import psutil

    found = {}
    for process in psutil.process_iter(["pid", "cmdline"]):
        line = " ".join(process.info["cmdline"] or [])
        if "ServeReplica:gleam:" in line:
            # the title may carry the method running (".initialize_and_get_metadata" while starting)
            found[process.info["pid"]] = line.split("ServeReplica:gleam:", 1)[1].split()[0].split(".")[0]
    return found


def serve_config(path: Path, port: int, index: str, checkpoint: str) -> None:
    import yaml

    config = {
        "proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{
            "name": "gleam", "import_path": "serve_apps.gleam:app", "route_prefix": "/",
            "args": {"index": index, "checkpoint": checkpoint, "explainer": "", "device": "cpu",
                     "api_keys": [KEY], "max_image_bytes": 2**19, "max_body_bytes": 2**20,
                     "retriever": {"num_cpus": 0.5, "max_batch_size": 16, "batch_wait_timeout_s": 0.01,
                                   "max_ongoing_requests": 32,
                                   "autoscaling": {"min_replicas": 2, "max_replicas": 2}}}}]}
    path.write_text(yaml.safe_dump(config))


def request_for(kind: str, images: list[bytes], number: int) -> dict:
    """httpx.post keyword arguments of one request of ``kind``."""
    headers = {"X-API-Key": KEY}
    image = images[number % len(images)]
    if kind == "valid":
        if number % 2:
            return {"files": {"image": ("q.jpg", image)}, "data": {"modality": "uav", "top_k": "5"}, "headers": headers}
        return {"json": {"image": base64.b64encode(image).decode(), "modality": "satellite", "top_k": 3},
                "headers": headers}
    if kind == "not_image":
        return {"files": {"image": ("q.jpg", b"this is not a picture" * 10)}, "headers": headers}
    if kind == "bad_view":
        return {"files": {"image": ("q.jpg", image)}, "data": {"modality": "thermal"}, "headers": headers}
    if kind == "bad_base64":
        return {"json": {"image": "%%%not-base64%%%"}, "headers": headers}
    if kind == "too_large":
        return {"content": b"{" + b" " * (2**20 + 10) + b"}", "headers": {**headers, "content-type": "application/json"}}
    if kind == "no_key":
        return {"files": {"image": ("q.jpg", image)}}
    if kind == "unknown_field":
        return {"files": {"image": ("q.jpg", image)}, "data": {"colour": "red"}, "headers": headers}
    raise ValueError(kind)


async def soak(url: str, args: argparse.Namespace, images: list[bytes]) -> dict:
    import httpx

    records: list[tuple[float, str, int, float]] = []  # (t, kind, status, seconds)
    health: list[tuple[float, int, float]] = []
    memory: dict[int, list[tuple[float, float, str]]] = defaultdict(list)
    events: dict[str, object] = {}
    started = time.perf_counter()
    deadline = started + args.seconds
    bad_every = int(round(1 / args.malformed)) if args.malformed > 0 else 0

    async def client(number: int, http: httpx.AsyncClient) -> None:
        count = 0
        while time.perf_counter() < deadline:
            count += 1
            serial = number * 100_000 + count
            kind = BAD_KINDS[(serial // bad_every) % len(BAD_KINDS)] if bad_every and serial % bad_every == 0 \
                else "valid"
            began = time.perf_counter()
            try:
                response = await http.post(url + "/v1/localize", **request_for(kind, images, serial))
                status = response.status_code
                if kind == "valid" and status == 200 and not response.json()["candidates"]:
                    status = -2  # a 200 without candidates would be a silent failure
            except httpx.HTTPError:
                status = -1  # connection error / timeout
            records.append((began - started, kind, status, time.perf_counter() - began))

    async def watch_health(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            try:
                status = (await http.get(url + "/healthz", timeout=10)).status_code
            except httpx.HTTPError:
                status = -1
            health.append((began - started, status, time.perf_counter() - began))
            await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - began)))

    async def watch_memory() -> None:
        import psutil

        while time.perf_counter() < deadline:
            for pid, name in (await asyncio.to_thread(replicas)).items():
                try:
                    memory[pid].append((time.perf_counter() - started, psutil.Process(pid).memory_info().rss / 2**20,
                                        name))
                except psutil.NoSuchProcess:
                    pass
            await asyncio.sleep(2.0)

    async def kill_one() -> None:
        if args.kill_at < 0:
            return
        await asyncio.sleep(args.seconds * args.kill_at)
        before = {pid for pid, name in (await asyncio.to_thread(replicas)).items() if name == "Retriever"}
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        events["killed_at_s"] = round(time.perf_counter() - started, 2)
        events["killed_pid"] = victim
        while time.perf_counter() < deadline:
            now = {pid for pid, name in (await asyncio.to_thread(replicas)).items() if name == "Retriever"}
            if now - before:
                events["replacement_pid_seen_after_s"] = round(time.perf_counter() - started - events["killed_at_s"], 2)
                break
            await asyncio.sleep(0.5)

    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(args.clients)), watch_health(http), watch_memory(),
                             kill_one())
    return {"records": records, "health": health, "memory": memory, "events": events,
            "wall": time.perf_counter() - started}


def summarise(run: dict, args: argparse.Namespace) -> dict:
    records = run["records"]
    valid = [r for r in records if r[1] == "valid"]
    latencies = np.array([r[3] for r in valid if r[2] == 200]) * 1000
    by_kind = {kind: dict(Counter(str(r[2]) for r in records if r[1] == kind)) for kind in EXPECTED}
    unexpected = {kind: {s: n for s, n in counts.items() if s != str(EXPECTED[kind])}
                  for kind, counts in by_kind.items()}
    killed = run["events"].get("killed_at_s")
    after_kill = [r for r in valid if killed is not None and killed <= r[0] < killed + 10]
    server_errors = [r for r in valid if r[2] >= 500 or r[2] < 0]
    windows = defaultdict(lambda: [0, 0])  # 5 s windows: [valid answered 200, valid sent]
    for r in valid:
        windows[int(r[0] // 5) * 5][1] += 1
        windows[int(r[0] // 5) * 5][0] += r[2] == 200
    memory = {}
    for pid, samples in run["memory"].items():
        rss = [s[1] for s in samples]
        third = max(1, len(rss) // 3)
        memory[str(pid)] = {"deployment": samples[0][2], "samples": len(rss), "first_s": round(samples[0][0], 1),
                            "last_s": round(samples[-1][0], 1), "rss_mib_start": round(float(np.median(rss[:third])), 1),
                            "rss_mib_end": round(float(np.median(rss[-third:])), 1),
                            "rss_mib_max": round(max(rss), 1)}
        memory[str(pid)]["growth_mib"] = round(memory[str(pid)]["rss_mib_end"] - memory[str(pid)]["rss_mib_start"], 1)
    health_codes = Counter(str(h[1]) for h in run["health"])
    return {
        "seconds": round(run["wall"], 1), "clients": args.clients, "malformed_share": args.malformed,
        "requests": len(records), "requests_per_second": round(len(records) / run["wall"], 1),
        "valid_requests": len(valid), "valid_per_second": round(len(valid) / run["wall"], 1),
        "valid_latency_ms": {"p50": round(float(np.percentile(latencies, 50)), 1),
                             "p99": round(float(np.percentile(latencies, 99)), 1),
                             "max": round(float(latencies.max()), 1)} if len(latencies) else None,
        "status_by_kind": by_kind, "unexpected_status_by_kind": {k: v for k, v in unexpected.items() if v},
        "valid_5xx_or_failed": len(server_errors),
        "valid_5xx_in_10s_after_kill": sum(1 for r in after_kill if r[2] >= 500 or r[2] < 0),
        "valid_in_10s_after_kill": len(after_kill),
        "valid_ok_per_5s_window": {str(k): v[0] for k, v in sorted(windows.items())},
        "healthz": {"polls": len(run["health"]), "codes": dict(health_codes),
                    "max_latency_ms": round(max(h[2] for h in run["health"]) * 1000, 1) if run["health"] else None},
        "fault": run["events"], "replica_memory": memory,
    }


def stop(process: subprocess.Popen) -> None:
    """SIGINT to `serve run` (it shuts its app and its local Ray down), then SIGTERM / SIGKILL to
    whatever of its process session is left (never `ray stop`: that would stop every Ray here)."""
    for sig, wait in ((signal.SIGINT, 60), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(2)


def main(argv: list[str] | None = None) -> dict:
    import httpx

    from gleam.data.schema import encode_jpeg

    args = parse_args(argv)
    rng = np.random.default_rng(0)
    images = [encode_jpeg(rng.integers(0, 256, (args.image_size, args.image_size, 3), np.uint8)) for _ in range(8)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    with tempfile.TemporaryDirectory(prefix="gleam-soak-") as folder:
        checkpoint = make_checkpoint(folder, args.image_size, 128)
        index = make_index(folder, args.gallery, 128, checkpoint)
        port = free_port()
        config = Path(folder) / "serve.yaml"
        serve_config(config, port, index, checkpoint)
        log = open(Path(folder) / "serve.log", "w")
        process = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "serve"), "run", str(config)],
                                   env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 300
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=5).status_code == 200 and \
                            sum(name == "Retriever" for name in replicas().values()) == 2:
                        break
                except httpx.HTTPError:
                    pass
                failed = "DEPLOY_FAILED" in (Path(folder) / "serve.log").read_text()
                if failed or process.poll() is not None or time.time() > deadline:
                    raise RuntimeError("serve run did not come up:\n" + (Path(folder) / "serve.log").read_text()[-4000:])
                time.sleep(1)
            for image in images:  # warm-up: both replicas' first passes
                httpx.post(url + "/v1/localize", files={"image": ("q.jpg", image)}, headers={"X-API-Key": KEY},
                           timeout=60).raise_for_status()
            run = asyncio.run(soak(url, args, images))
            batching = httpx.get(url + "/healthz", timeout=30).json()["retriever"]["batching"]
        finally:
            stop(process)
    report = {"benchmark": "serve_soak", "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "image_size": args.image_size, "gallery": args.gallery,
              "retriever_replicas": 2, "retriever_batching_after_one_replica": batching, **summarise(run, args)}
    from gleam.provenance import provenance

    report["provenance"] = provenance(seeds={"weights": 0, "gallery": 0})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))

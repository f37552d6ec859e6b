"""Shared fixtures: a real S3 server (moto, on 127.0.0.1) and one Ray runtime per session.

Conventions (../shared/design/RAY_NOTES.md): token auth off and set explicitly, one local
Ray started once for the session and always shut down, S3 settings in the environment before
Ray starts so its workers inherit them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Ray workers unpickle functions defined in test modules: let them import tests/ too.
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_TESTS_DIR, os.environ.get("PYTHONPATH", "")) if p)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def load_script(relative: str, name: str):
    """A repository script that is not a package module (``benchmarks/*.py``, ``jobs/*.py``)
    imported as module ``name``, to test its functions directly."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(_TESTS_DIR), relative))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server in its own process on 127.0.0.1; yields its endpoint URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except Exception:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                raise RuntimeError("moto S3 server did not start")
            time.sleep(0.2)
    os.environ.update({
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-west-2",  # us-east-1 bucket creation fails against moto
    })
    yield endpoint
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket; yields its ``s3://`` URL."""
    import boto3

    name = f"gleam-test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-west-2").create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    yield f"s3://{name}"


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray runtime for the whole test session (2 CPUs, no dashboard)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


_HEAD: dict = {"cluster": None, "done": set()}


@pytest.fixture(scope="module")
def head_cluster(request):
    """One real `ray start --head` cluster (2 CPUs, dashboard and job API) shared by every test
    module whose entry point is a job or `serve run` (tests/ray_cluster.py); a user leaves it as
    found: its jobs finished, its Serve applications shut down.  Started on first use and stopped
    when the last module of this run that uses it ends, so it does not idle beside later tests."""
    from ray_cluster import start_head

    users = {item.module.__name__ for item in request.session.items if "head_cluster" in item.fixturenames}
    if _HEAD["cluster"] is None:
        _HEAD["cluster"] = start_head()
    try:
        yield _HEAD["cluster"]
    finally:
        _HEAD["done"].add(request.module.__name__)
        if users <= _HEAD["done"] and _HEAD["cluster"] is not None:
            _HEAD["cluster"].stop()
            _HEAD["cluster"] = None


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny matrices: one thread avoids OpenMP barrier stalls on a busy 2-core machine."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_sessionfinish(session, exitstatus):
    """A run stopped early (-x, Ctrl-C) still stops the shared head cluster."""
    if _HEAD["cluster"] is not None:
        _HEAD["cluster"].stop()
        _HEAD["cluster"] = None

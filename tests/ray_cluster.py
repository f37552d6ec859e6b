"""A real `ray start --head` cluster for tests whose entry point is a job or `serve run`.

Every port is explicit (the test session's own Ray holds the defaults), the temp dir is short
(AF_UNIX paths are limited to 107 bytes) and the cluster runs in its own process session, so
``stop`` ends exactly this cluster (``ray stop`` would stop every Ray on the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from conftest import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cluster_env(**extra: str) -> dict[str, str]:
    """The environment for `ray`, `serve` and jobs: the venv's bin first, the repo on PYTHONPATH."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": path,
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], **extra}


def tool(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


@dataclass
class Cluster:
    process: subprocess.Popen
    port: int
    dashboard: int
    temp_dir: str
    env: dict[str, str] | None = None  # the environment `ray start` ran with (cluster_env() if None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard}"

    def submit(self, command: list[str], timeout: float = 480,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """`ray job submit` (waits for the job), retrying while the job agent comes up; ``env``:
        the client's environment (default: the cluster's own)."""
        for _ in range(24):
            submit = subprocess.run([tool("ray"), "job", "submit", f"--address={self.dashboard_url}", "--",
                                     *command], capture_output=True, text=True,
                                    env=env or self.env or cluster_env(), timeout=timeout)
            if "No available agent" not in submit.stdout + submit.stderr:
                return submit
            time.sleep(5)
        return submit

    def shutdown_serve(self, process: subprocess.Popen | None) -> None:
        """End a `serve run` of this cluster as Ctrl-C does (its applications shut down with it),
        then `serve shutdown` whatever is left, so the next user finds no replicas holding CPUs."""
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        subprocess.run([tool("serve"), "shutdown", "-y", f"--address={self.dashboard_url}"],
                       capture_output=True, text=True, env=self.env or cluster_env(), timeout=120)

    def stop(self) -> None:
        stop_session(self.process.pid)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_head(num_cpus: int = 2, env: dict[str, str] | None = None) -> Cluster:
    """``env``: the environment of `ray start` (default cluster_env(), token auth off)."""
    env = env or cluster_env()
    port, dashboard = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="gleam-ray-", dir="/tmp")
    head = subprocess.Popen([tool("ray"), "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}",
                             "--dashboard-host=127.0.0.1", f"--num-cpus={num_cpus}", "--include-dashboard=true",
                             f"--dashboard-agent-listen-port={free_port()}",
                             f"--dashboard-agent-grpc-port={free_port()}",
                             f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
                             f"--ray-client-server-port={free_port()}",
                             f"--temp-dir={temp_dir}", "--disable-usage-stats"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    code = head.wait(timeout=120)
    if code != 0:
        output = head.stdout.read()
        stop_session(head.pid)
        raise AssertionError(f"ray start failed ({code}):\n{output}")
    return Cluster(head, port, dashboard, temp_dir, env)


def stop_session(session_id: int) -> None:
    """SIGTERM, then SIGKILL, every process of the session that `ray start` created."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(session_id, sig)
        except ProcessLookupError:
            return
        time.sleep(3)

"""Ray token authentication as the cluster files set it up: a real `ray start --head` with
RAY_AUTH_MODE=token and the token in a file (what ray-cluster.yaml distributes; KubeRay passes
it as RAY_AUTH_TOKEN), then `ray job submit` without the token (refused) and as the README and
the cluster files say (RAY_AUTH_MODE=token plus the token: runs)."""

from __future__ import annotations

import os
import secrets
import sys

import pytest

pytestmark = pytest.mark.slow


def test_job_api_refuses_clients_without_the_token(tmp_path):
    import httpx

    from ray_cluster import cluster_env, start_head

    token = secrets.token_hex(32)
    token_file = tmp_path / "auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    cluster = start_head(num_cpus=1, env=cluster_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file)))
    try:
        job = [sys.executable, "-c", "import ray; ray.init(); print('cluster CPUs', ray.cluster_resources()['CPU'])"]
        # no token: the dashboard's job API answers 401 and nothing runs
        anonymous = cluster_env(RAY_AUTH_MODE="disabled", HOME=str(tmp_path))  # no ~/.ray/auth_token either
        refused = cluster.submit(job, timeout=120, env=anonymous)
        assert refused.returncode != 0
        assert "401" in refused.stdout + refused.stderr or "Authentication required" in refused.stdout + refused.stderr, \
            refused.stdout[-2000:] + refused.stderr[-2000:]
        # a wrong token: 403 Forbidden
        wrong = cluster.submit(job, timeout=120, env=cluster_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64,
                                                                 HOME=str(tmp_path)))
        assert wrong.returncode != 0 and "Forbidden: Invalid authentication token" in wrong.stderr, wrong.stderr[-2000:]
        assert httpx.get(cluster.dashboard_url + "/api/jobs/", timeout=30).status_code == 401
        # the documented way: RAY_AUTH_MODE=token and the token (RAY_AUTH_TOKEN, as from the Secret)
        documented = cluster_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, HOME=str(tmp_path))
        ran = cluster.submit(job, timeout=240, env=documented)
        assert ran.returncode == 0 and "succeeded" in ran.stdout.lower(), ran.stdout[-3000:] + ran.stderr[-2000:]
        assert "cluster CPUs 1.0" in ran.stdout
        listed = httpx.get(cluster.dashboard_url + "/api/jobs/", headers={"Authorization": f"Bearer {token}"},
                           timeout=30)
        assert listed.status_code == 200 and len(listed.json()) == 1  # only the authenticated job exists
    finally:
        cluster.stop()

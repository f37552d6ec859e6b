"""Deployment files are checked, not just written: the cluster launcher config against Ray's own
schema, serve configs against Serve's schema, KubeRay manifests against the ray.io/v1 subset in
tests/schemas/, and the Dockerfile's build steps against the repository."""

from __future__ import annotations

import json
import os
import re
import shlex

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_ROOT = "/home/ray/gleam/"  # WORKDIR of cluster/Dockerfile
KUBERAY = ["cluster/raycluster.yaml", "cluster/rayjob-train-core.yaml", "cluster/rayservice.yaml"]
DEPLOYMENTS = {"Ingress", "Retriever", "Explainer"}


def load_yaml(relative: str):
    with open(os.path.join(ROOT, relative)) as handle:
        return yaml.safe_load(handle)


def ray_version() -> str:
    import ray

    return ray.__version__


# --------------------------------------------------------------------------- cluster launcher


def test_ray_cluster_yaml_validates_against_rays_schema():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load_yaml("ray-cluster.yaml")
    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as handle:
        jsonschema.validate(config, json.load(handle))
    validate_config(prepare_config(config))  # with the provider's defaults filled in, as `ray up` does
    assert config["provider"]["type"] in ("aws", "gcp")
    head = config["available_node_types"][config["head_node_type"]]
    assert "GPU" not in head["resources"]
    gpu_groups = {name: group for name, group in config["available_node_types"].items()
                  if group["resources"].get("GPU", 0) > 0}
    assert gpu_groups and all(g["min_workers"] == 0 and g["max_workers"] >= 1 for g in gpu_groups.values())
    version = ray_version()
    assert all(version in config["docker"][key] for key in ("head_image", "worker_image"))
    installs = " ".join(config["worker_setup_commands"])
    assert "-c constraints.txt" in installs and '".[gpu]"' in installs
    assert '".[cpu]"' in " ".join(config["head_setup_commands"])


# --------------------------------------------------------------------------- serve configs


def check_serve_config(config: dict) -> None:
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    (application,) = schema.applications
    assert application.import_path == "serve_apps.gleam:app"
    module = application.import_path.split(":")[0].replace(".", "/") + ".py"
    assert os.path.exists(os.path.join(ROOT, module)), module
    assert {d.name for d in application.deployments} == DEPLOYMENTS
    for deployment in application.deployments:
        if deployment.name != "Ingress":
            assert deployment.autoscaling_config, deployment.name
            assert deployment.max_ongoing_requests >= 8  # batching needs more than Serve's default 5
    args = application.args
    assert {"index", "checkpoint", "explainer", "device"} <= set(args)
    try:
        from gleam.serving.config import ServeAppConfig
    except ImportError:
        return
    from gleam.config import from_dict

    from_dict(ServeAppConfig, dict(args), "serve args")  # the app accepts every argument


def test_serve_local_config():
    config = load_yaml("configs/serve-local.yaml")
    check_serve_config(config)
    assert config["applications"][0]["args"] == {
        "index": "runs/index-local", "checkpoint": "runs/gleam-c-local/final",
        "explainer": "runs/gleam-x-local/final", "verdict_prompt": "verdict_only", "device": "cpu"}
    assert config["http_options"]["host"] == "127.0.0.1"


# --------------------------------------------------------------------------- KubeRay


@pytest.fixture(scope="module")
def kuberay_schema():
    with open(os.path.join(ROOT, "tests", "schemas", "kuberay-v1-subset.schema.json")) as handle:
        return json.load(handle)


def cluster_spec(manifest: dict) -> dict:
    spec = manifest["spec"]
    return {"RayCluster": lambda: spec, "RayJob": lambda: spec["rayClusterSpec"],
            "RayService": lambda: spec["rayClusterConfig"]}[manifest["kind"]]()


def check_cluster_spec(spec: dict, path: str) -> None:
    assert spec["rayVersion"] == ray_version(), path
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for pod in pods:
        for container in pod["spec"]["containers"]:
            assert container["image"].startswith("gleam:"), container["image"]
            limits, requests = container["resources"]["limits"], container["resources"].get("requests", {})
            assert {"cpu", "memory"} <= set(limits), f"{path}: {container['name']} needs cpu and memory limits"
            assert all(str(requests.get(k, v)) == str(v) for k, v in limits.items() if k == "nvidia.com/gpu")
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "gpu" not in head["image"] and "nvidia.com/gpu" not in head["resources"]["limits"]
    for group in spec["workerGroupSpecs"]:
        assert group.get("minReplicas", 0) <= group.get("replicas", 0) <= group["maxReplicas"], group["groupName"]
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu_groups, f"{path}: no GPU worker group"
    assert all("gpu" in g["template"]["spec"]["containers"][0]["image"] for g in gpu_groups)


@pytest.mark.parametrize("path", KUBERAY)
def test_kuberay_manifest(path, kuberay_schema):
    import jsonschema

    manifest = load_yaml(path)
    jsonschema.Draft202012Validator.check_schema(kuberay_schema)
    jsonschema.Draft202012Validator(kuberay_schema).validate(manifest)
    check_cluster_spec(cluster_spec(manifest), path)
    if manifest["kind"] == "RayCluster":
        assert manifest["spec"]["enableInTreeAutoscaling"] is True
        assert all(g.get("minReplicas", 0) == 0 for g in manifest["spec"]["workerGroupSpecs"])
    if manifest["kind"] == "RayJob":
        words = shlex.split(manifest["spec"]["entrypoint"])
        scripts = [w for w in words if re.search(r"(^|/)jobs/[\w-]+\.py$", w)]
        assert scripts, "the entrypoint runs no jobs/*.py"
        for word in scripts + [words[words.index("--config") + 1]]:
            local = word[len(IMAGE_ROOT):] if word.startswith(IMAGE_ROOT) else word
            assert os.path.exists(os.path.join(ROOT, local)), f"{word} is not in the repository"
        assert yaml.safe_load(manifest["spec"]["runtimeEnvYAML"])["env_vars"]
        assert manifest["spec"]["shutdownAfterJobFinishes"] is True
    if manifest["kind"] == "RayService":
        check_serve_config(yaml.safe_load(manifest["spec"]["serveConfigV2"]))


def test_kuberay_schema_catches_mistakes(kuberay_schema):
    import jsonschema

    validator = jsonschema.Draft202012Validator(kuberay_schema)
    manifest = load_yaml("cluster/raycluster.yaml")
    manifest["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 2  # must be a string
    manifest["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3  # typo
    del manifest["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["image"]
    messages = sorted(error.message for error in validator.iter_errors(manifest))
    assert len(messages) == 3, messages
    assert any("'image' is a required property" in m for m in messages)
    assert any("maxReplica" in m for m in messages)


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(path: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    instructions, pending = [], ""
    with open(path) as handle:
        for raw in handle:
            line = raw.rstrip("\n")
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            text = (pending + line).strip()
            pending = ""
            keyword, _, arguments = text.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def test_dockerfile_builds_from_this_repository():
    instructions = dockerfile_instructions(os.path.join(ROOT, "cluster", "Dockerfile"))
    args = {}
    for keyword, arguments in instructions:
        if keyword == "ARG" and "=" in arguments:
            name, value = arguments.split("=", 1)
            args[name] = value
    base = next(a for k, a in instructions if k == "FROM")
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert re.fullmatch(rf"rayproject/ray(-ml)?:{re.escape(ray_version())}-py3\d+-gpu", base), base
    copied: list[str] = []
    install_step = None
    for position, (keyword, arguments) in enumerate(instructions):
        if keyword == "COPY":
            words = [w for w in shlex.split(arguments) if not w.startswith("--")]
            for source in words[:-1]:
                assert os.path.exists(os.path.join(ROOT, source)), f"COPY source {source} does not exist"
                copied.append(source)
        if keyword == "RUN" and "pip install" in arguments:
            install_step = position
            assert "-c constraints.txt" in arguments
            assert re.search(r'"\.\[\$\{EXTRA\}\]"', arguments) and args.get("EXTRA") == "gpu"
    assert install_step is not None, "no pip install step"
    copied_before = [s for k, a in instructions[:install_step] if k == "COPY"
                     for s in shlex.split(a)[:-1] if not s.startswith("--")]
    assert {"pyproject.toml", "constraints.txt", "platform"} <= set(copied_before)
    assert {"jobs", "serve_apps", "configs"} <= set(copied)


# --------------------------------------------------------------------------- authentication


def container_env(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def kuberay_auth_problems(manifest: dict) -> list[str]:
    """Why this manifest would let someone who reaches the head run code (empty = none): Ray
    token auth must be on, by ``authOptions.mode: token`` or by RAY_AUTH_MODE=token with
    RAY_AUTH_TOKEN from a Secret in every container, and the head (dashboard/job API) must not
    be published outside the cluster."""
    spec = cluster_spec(manifest)
    problems = []
    head = spec["headGroupSpec"]
    containers = [c for pod in [head["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
                  for c in pod["spec"]["containers"]]
    auth = spec.get("authOptions") or {}
    by_env = all(container_env(c).get("RAY_AUTH_MODE", {}).get("value") == "token"
                 and "secretKeyRef" in container_env(c).get("RAY_AUTH_TOKEN", {}).get("valueFrom", {})
                 for c in containers)
    if auth.get("mode") != "token" and not by_env:
        problems.append("token auth is off: set authOptions: {mode: token} (or RAY_AUTH_MODE=token and "
                        "RAY_AUTH_TOKEN from a Secret in every container)")
    if any(container_env(c).get("RAY_AUTH_MODE", {}).get("value") == "disabled" for c in containers):
        problems.append("a container sets RAY_AUTH_MODE=disabled")
    if head.get("serviceType", "ClusterIP") != "ClusterIP":
        problems.append(f"the head Service is {head['serviceType']}: the job API (8265) is published")
    if head.get("enableIngress"):
        problems.append("enableIngress publishes the dashboard and job API")
    serve_type = manifest["spec"].get("serveService", {}).get("spec", {}).get("type", "ClusterIP")
    if manifest["kind"] == "RayService" and serve_type != "ClusterIP":
        problems.append(f"the Serve Service is {serve_type}: publish it through an Ingress with TLS instead")
    return problems


def launcher_auth_problems(config: dict) -> list[str]:
    """The same for the cluster launcher file: token mode on every `ray start`, the token
    distributed to the nodes, the dashboard on the head's loopback."""
    problems = []
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    for name, commands in (("head_start_ray_commands", head), ("worker_start_ray_commands", workers)):
        start = commands.find("ray start")
        if start < 0 or "RAY_AUTH_MODE=token" not in commands[:start]:
            problems.append(f"{name}: `ray start` runs without RAY_AUTH_MODE=token")
    host = re.search(r"--dashboard-host[= ](\S+)", head)
    if host and host.group(1) not in ("127.0.0.1", "localhost"):
        problems.append(f"the dashboard listens on {host.group(1)}: keep it on 127.0.0.1 (`ray dashboard` forwards it)")
    mounts = config.get("file_mounts", {})
    if not any(remote.endswith(".ray/auth_token") for remote in mounts) and "RAY_AUTH_TOKEN" not in head:
        problems.append("no token reaches the nodes: file_mounts ~/.ray/auth_token (ray get-auth-token --generate)")
    return problems


def test_every_cluster_file_requires_a_token_and_stays_internal():
    import glob

    assert sorted(glob.glob("cluster/*.yaml", root_dir=ROOT)) == sorted(KUBERAY), "a new manifest: add it to KUBERAY"
    for path in KUBERAY:
        assert kuberay_auth_problems(load_yaml(path)) == [], path
        spec = cluster_spec(load_yaml(path))
        assert spec["authOptions"]["secretName"] == "gleam-ray-auth", path
        head_comment = open(os.path.join(ROOT, path)).read().split("apiVersion:")[0]
        assert "gleam-ray-auth" in head_comment and "port-forward" in head_comment, path
    assert launcher_auth_problems(load_yaml("ray-cluster.yaml")) == []


def test_auth_checks_catch_open_clusters():
    manifest = load_yaml("cluster/rayservice.yaml")
    del manifest["spec"]["rayClusterConfig"]["authOptions"]
    manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["serviceType"] = "LoadBalancer"
    manifest["spec"]["serveService"] = {"spec": {"type": "NodePort"}}
    problems = kuberay_auth_problems(manifest)
    assert len(problems) == 3 and "token auth is off" in problems[0] and "LoadBalancer" in problems[1], problems

    manifest = load_yaml("cluster/raycluster.yaml")  # the manual form (env from a Secret) also counts
    del manifest["spec"]["authOptions"]
    for pod in [manifest["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in manifest["spec"]["workerGroupSpecs"]]:
        pod["spec"]["containers"][0]["env"] += [
            {"name": "RAY_AUTH_MODE", "value": "token"},
            {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "auth_token"}}}]
    assert kuberay_auth_problems(manifest) == []
    manifest["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["env"].pop()
    assert "token auth is off" in kuberay_auth_problems(manifest)[0]

    config = load_yaml("ray-cluster.yaml")
    config["head_start_ray_commands"] = [c.replace("export RAY_AUTH_MODE=token; ", "").replace(
        "--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0") for c in config["head_start_ray_commands"]]
    del config["file_mounts"]["~/.ray/auth_token"]
    problems = launcher_auth_problems(config)
    assert len(problems) == 3 and "0.0.0.0" in problems[1], problems

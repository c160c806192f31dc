"""cluster.yaml, Dockerfile and .dockerignore: valid for the cluster launcher, in step on versions, free of secrets."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
# Looks like a credential: OpenAI/Anthropic-style keys, AWS access key ids, bearer tokens, private keys.
SECRET_VALUE = re.compile(r"sk-[A-Za-z0-9_-]{8,}|AKIA[0-9A-Z]{16}|Bearer\s+\S{8,}|-----BEGIN [A-Z ]*PRIVATE KEY")
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    lines = (line.strip() for line in joined.splitlines())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in lines if line and not line.startswith("#")]


def _from_ray_version(dockerfile: str) -> str:
    froms = [args for instruction, args in _instructions(dockerfile) if instruction == "FROM"]
    assert len(froms) == 1, f"expected one FROM, got {froms}"
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3\d+(-cpu)?", froms[0].split()[0])
    assert match, f"Dockerfile FROM {froms[0]!r} is not an official CPU image rayproject/ray:<x.y.z>-py3NN[-cpu]"
    return match.group(1)


def _pinned_ray(pyproject: dict) -> Requirement:
    pins = [Requirement(dep) for dep in pyproject["project"]["dependencies"] if Requirement(dep).name == "ray"]
    assert len(pins) == 1, "pyproject.toml must list ray exactly once"
    return pins[0]


def test_cluster_yaml_has_the_launcher_keys(cluster):
    assert cluster["cluster_name"]
    assert cluster["max_workers"] >= 1
    provider = cluster["provider"]
    assert provider["type"] == "aws" and provider["region"]
    assert "cache_stopped_nodes" in provider
    assert cluster["auth"]["ssh_user"]
    assert cluster["file_mounts"] == {}

    node_types = cluster["available_node_types"]
    head_type = cluster["head_node_type"]
    assert head_type in node_types
    workers = {name: spec for name, spec in node_types.items() if name != head_type}
    assert workers, "no worker node type"
    for name, spec in node_types.items():
        assert spec["node_config"]["InstanceType"], name
        profile = spec["node_config"]["IamInstanceProfile"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/\S+", profile["Arn"]), (name, profile)
    for name, spec in workers.items():
        assert 0 <= spec["min_workers"] <= spec["max_workers"] <= cluster["max_workers"], name
        assert spec["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot", name
    assert any(spec["max_workers"] > spec["min_workers"] for spec in workers.values()), "workers do not autoscale"

    docker = cluster["docker"]
    assert docker["image"] and docker["container_name"] and docker["pull_before_run"] is True

    head_start = " ".join(cluster["head_start_ray_commands"])
    worker_start = " ".join(cluster["worker_start_ray_commands"])
    assert "ray start --head" in head_start and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    assert "--dashboard-host=0.0.0.0" in head_start
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker_start
    assert cluster["setup_commands"], "setup_commands should check the image"


def test_cluster_yaml_passes_rays_own_schema(cluster):
    """What `ray up` does before it talks to AWS: fill in the provider's defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    assert prepared["available_node_types"][cluster["head_node_type"]]["max_workers"] == 0


def test_versions_agree(cluster, dockerfile, pyproject):
    import ray

    from_version = _from_ray_version(dockerfile)
    image = cluster["docker"]["image"]
    repository, tag = image.rsplit(":", 1)
    match = re.fullmatch(r"(?P<package>\d+\.\d+\.\d+)-ray(?P<ray>\d+\.\d+\.\d+)-py3\d+", tag)
    assert match, f"cluster.yaml image tag {tag!r} should be <package version>-ray<ray version>-py3NN"
    assert re.fullmatch(r"\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/rae-ray", repository), repository

    pin = _pinned_ray(pyproject)
    assert {"data", "default"} <= pin.extras
    assert match["ray"] == from_version, f"cluster.yaml image is Ray {match['ray']}, the Dockerfile FROM {from_version}"
    assert pin.specifier.contains(from_version), (
        f"Dockerfile Ray {from_version} is outside pyproject's ray{pin.specifier}"
    )
    assert Version(ray.__version__) == Version(from_version), (
        f"installed ray {ray.__version__} differs from the Dockerfile's {from_version}"
    )
    assert match["package"] == pyproject["project"]["version"]
    # The build-time check in the Dockerfile asserts the same version.
    assert f"ray.__version__ == '{from_version}'" in dockerfile


def test_dockerfile_installs_the_package_and_bakes_no_secret(dockerfile):
    instructions = _instructions(dockerfile)
    for instruction, args in instructions:
        if instruction in {"ENV", "ARG"}:
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or args.split()[:1]
            assert not any(SECRET_NAME.search(name) for name in names), f"{instruction} {args}"
    assert not SECRET_VALUE.search(dockerfile)
    runs = " ".join(args for instruction, args in instructions if instruction == "RUN")
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", runs), "the Dockerfile should `pip install .`"
    assert not re.search(r"pip install[^&;]*\s(-e|--editable)\s", runs), "install the package, not an editable link"
    copied = " ".join(args for instruction, args in instructions if instruction in {"COPY", "ADD"})
    assert "pyproject.toml" in copied and "rae_ray" in copied
    assert not re.search(r"(^|\s)\.env(\s|$)|\.pem", copied)


def test_dockerignore_keeps_local_state_out():
    patterns = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", "rae-output"} <= patterns
    assert {"__pycache__", "**/__pycache__"} & patterns


def test_api_key_comes_from_the_nodes_not_the_files(cluster):
    """Every key variable the templates name is exported by the start commands; no key value is in any file."""
    template = yaml.safe_load((ROOT / "jobs/configs/openai-s3.yaml").read_text())
    key_vars = {endpoint["api_key_env"] for endpoint in template["llm"]["endpoints"].values()
                if endpoint.get("api_key_required", True)}
    assert key_vars
    for commands in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(cluster[commands])
        for name in key_vars:
            assert f'export {name}="$(' in start and "secretsmanager" in start, (commands, name)
    text = (ROOT / "cluster.yaml").read_text()
    assert not SECRET_VALUE.search(text)
    assert "env_vars" not in yaml.safe_dump(cluster), "keys must not travel in a runtime_env"

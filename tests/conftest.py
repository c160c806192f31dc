"""Shared fixtures: one local Ray per session, one simulated endpoint per session, the bundled chorus sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Dummy credentials for moto (and so nothing ever probes a cloud metadata address); set before Ray starts.
for _name, _value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                      ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_REGION", "us-east-1")):
    os.environ[_name] = _value

from rae_ray.io import sample_dir  # noqa: E402

CHORUS = sample_dir()


@pytest.fixture(scope="session")
def chorus() -> Path:
    return CHORUS


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server in a child process on 127.0.0.1, over real HTTP; boto3, pyarrow, polars and deltalake all
    talk to it.

    Its endpoint goes into AWS_ENDPOINT_URL_S3 before Ray starts, so Ray workers inherit it.
    """
    from rae_ray.sim.s3 import MotoServer

    with MotoServer() as server:
        os.environ["AWS_ENDPOINT_URL_S3"] = server.endpoint
        yield server.endpoint


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket per test: returns its name."""
    import re
    import uuid

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """A real local Ray (2 CPUs, no dashboard), shared by every integration test; started after the S3 server."""
    import ray

    if not ray.is_initialized():
        # address="local": always a new instance, never one another test or tool left in /tmp/ray.
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sim():
    """The simulated OpenAI-compatible endpoint, a separate process on 127.0.0.1."""
    from rae_ray.sim.process import SimProcess

    with SimProcess(latency_ms=5) as server:
        yield server

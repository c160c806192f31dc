"""Secrets (issue 6, point 4): a planted API key appears in no output, manifest, log, exception or job metadata."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import SecretStr

from rae_ray.cli import main
from rae_ray.config import ConfigError, EndpointConfig, config_from_dict
from rae_ray.llm.batch import BatchRunner
from rae_ray.llm.client import FatalEndpointError, LLMClient, redact
from rae_ray.llm.prompts import guideline_messages
from rae_ray.llm.schemas import GUIDELINE_SCHEMA_NAME, QueryGuideline
from rae_ray.sim.process import SimThread
from tests.faults.conftest import KEY_ENV, PLANTED_KEY, chorus_subset, run_cli
from tests.helpers import base_config, stored_records

PLANTED_MIDDLE = "PLANTED-0123456789"
NEEDLES = (PLANTED_KEY, PLANTED_MIDDLE)
RIGHT_KEY = "sk-rae-test-RIGHT-9876543210"
SCALE = [{"grade": 2, "name": "highly_relevant", "description": "d"}, {"grade": 0, "name": "irrelevant", "description": "d"}]


def leaks(text: str) -> list[str]:
    return [needle for needle in NEEDLES if needle in text]


def file_leaks(path: Path) -> list[str]:
    """The needles in a file's bytes, and for Parquet also in its decoded values (compression could hide them)."""
    data = path.read_bytes()
    found = [n for n in NEEDLES if n.encode() in data]
    if path.suffix == ".parquet":
        found += leaks(json.dumps(pq.read_table(path).to_pylist(), default=str))
    return found


def test_planted_key_is_in_no_output_manifest_or_log(faulted_runs):
    files = [p for p in faulted_runs.out.rglob("*") if p.is_file()]
    names = {p.relative_to(faulted_runs.out).parts[0] for p in files}
    assert {"faulted", "rerun", "_store"} <= names
    assert any(p.name == "manifest.json" for p in files) and any(p.name == "report.html" for p in files)
    assert any("errors" in p.parts for p in files), "the faulted run wrote error reasons: they must be scanned too"
    assert {p.name: file_leaks(p) for p in files if file_leaks(p)} == {}
    for run in (faulted_runs.first, faulted_runs.rerun):
        assert "[rae-ray]" in run.stderr  # the capture worked
        assert leaks(run.stdout) == leaks(run.stderr) == leaks(run.logs) == []
        assert leaks(json.dumps(run.manifest)) == []
        assert run.manifest["config"]["llm"]["endpoints"]["default"]["api_key_env"] == KEY_ENV  # the name, only


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # rotated or removed while scanning
        return b""


def _session_dir() -> Path | None:
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return Path(node.get_session_dir_path()) if node is not None else None


def test_planted_key_is_in_no_ray_log_or_job_metadata(faulted_runs, ray_local):
    from ray._private import state

    session = _session_dir()
    assert session is not None and (session / "logs").is_dir()
    # Everything the session wrote during the runs: worker and raylet logs, Ray Data logs, spilled objects if any.
    recent = [p for p in session.rglob("*") if p.is_file() and p.stat().st_mtime >= faulted_runs.started]
    assert any("logs" in p.parts for p in recent), "the runs wrote no Ray log: nothing was scanned"
    assert {p.name: found for p in recent if (found := [n for n in NEEDLES if n.encode() in _read(p)])} == {}
    # The job table (entrypoints), the actor table (names, death causes) and this job's runtime_env.
    metadata = json.dumps([state.jobs(), state.actors(), ray_local.get_runtime_context().runtime_env], default=str)
    assert "MapWorker" in metadata and leaks(metadata) == []


def test_wrong_key_stops_at_preflight_without_leaking_it(tmp_path, monkeypatch, capsys, caplog):
    """A rejected key (401) stops the run before any completion, with exit code 2 and a message naming the variable."""
    with SimThread(api_key=RIGHT_KEY) as sim:
        monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
        config = base_config(sim.base_url, tmp_path / "out")
        config["llm"]["endpoints"]["default"].update(api_key_env=KEY_ENV, api_key_required=True)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        started = time.monotonic()
        code = main(["run", "--config", str(path)])
        seconds = time.monotonic() - started
        captured = capsys.readouterr()
        with pytest.raises(FatalEndpointError) as raised:
            from rae_ray.job import run

            run(config_from_dict(config))
        stats = sim.stats()
    assert code == 2 and seconds < 20
    assert "refused the API key (401)" in captured.err and KEY_ENV in captured.err
    assert stats["requests_total"] == 0  # not one completion: the job stopped at GET /models
    assert not (tmp_path / "out").exists()
    error = raised.value
    assert error.__cause__ is None and error.__suppress_context__
    assert leaks(captured.out + captured.err + caplog.text + str(error) + repr(error.args)) == []


def test_the_key_is_in_no_actor_argument(monkeypatch, tmp_path):
    """Ray keeps an actor's constructor arguments (for restarts): the stage configs the job hands its actors carry
    the variable's name, never its value (each actor reads its own environment)."""
    from ray import cloudpickle

    from rae_ray.labelstore.cached import LABEL_SPEC, KeyedStage
    from rae_ray.runtime import llm_stages, stage_config
    from rae_ray.stages.annotate import AnnotateStage
    from rae_ray.stages.common import LLMStageConfig

    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    config = base_config("http://127.0.0.1:9/v1", tmp_path / "out", images={"mode": "caption"})
    config["llm"]["endpoints"]["default"].update(api_key_env=KEY_ENV, api_key_required=True)
    config["llm"]["captions"] = {"model": "sim-vision"}
    config["llm"]["annotate"]["batch"] = True
    config = config_from_dict(config)
    for stage in llm_stages(config):
        built = stage_config(config, stage, getattr(config.compute, stage), "rae-ray-budget-x", str(tmp_path / "b"))
        assert built.endpoint.api_key_env == KEY_ENV
        # What `labelstore.cached` passes as fn_constructor_kwargs, pickled as Ray pickles it.
        kwargs = {"stage_cls": AnnotateStage, "key": LABEL_SPEC.key, "output": LABEL_SPEC.output, "config": built,
                  "publish": None}
        assert leaks(cloudpickle.dumps(kwargs).decode("latin-1")) == [], stage
        assert leaks(built.model_dump_json()) == [] and leaks(repr(built)) == []
        keyed = KeyedStage(AnnotateStage, LABEL_SPEC.key, LABEL_SPEC.output, built)  # the actor finds the key itself
    assert "api_key" not in LLMStageConfig.model_fields
    # Batch mode: the runner is built on the stage's client (which read the key itself), never handed the key.
    parameters = inspect.signature(BatchRunner).parameters
    assert "client" in parameters and [p for p in parameters if "key" in p or "secret" in p] == []
    assert keyed.stage.config.model.batch and keyed.stage.client._secret == PLANTED_KEY
    runner = BatchRunner(keyed.stage.client, str(tmp_path / "state"), metadata={"rae_ray_stage": "annotate"})
    assert leaks(repr({name: value for name, value in vars(runner).items() if name != "client"})) == []


def test_workers_without_the_key_stop_the_run_naming_the_variable(ray_local, chorus, tmp_path, monkeypatch):
    """The driver has the key, the Ray workers do not (the variable was set after Ray started, as on a cluster
    whose workers were not given it): no call is made with a key the workers do not have, the run stops with exit
    code 2 naming the variable, and nothing leaks."""
    log, catalog = chorus_subset(chorus, 3)
    log.write_parquet(tmp_path / "log.parquet")
    catalog.write_parquet(tmp_path / "catalog.parquet")
    driver_only = "RAE_DRIVER_ONLY_TEST_KEY"
    monkeypatch.setenv(driver_only, PLANTED_KEY)
    with SimThread(api_key=PLANTED_KEY) as sim:
        config = base_config(sim.base_url, tmp_path / "out", run_id="no-key-on-workers")
        config["input"] = {"log": str(tmp_path / "log.parquet"), "catalog": str(tmp_path / "catalog.parquet")}
        config["llm"]["endpoints"]["default"].update(api_key_env=driver_only, api_key_required=True)
        run = run_cli(config, tmp_path, sim)
    assert run.code == 2, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("rae-ray: error: ") and driver_only in last and "Ray worker" in last
    assert run.stats["requests_total"] == 0  # the preflight (GET /models) ran on the driver; no completion
    assert leaks(run.stdout + run.stderr + run.logs) == []


def test_key_refused_mid_run_stops_at_once_without_leaking_it():
    """A call refused with 401 (a key revoked mid-run) raises at once: one request, no retries, key redacted."""
    with SimThread(api_key=RIGHT_KEY) as sim:
        endpoint = EndpointConfig(base_url=sim.base_url, max_retries=6, backoff_base_s=0.05, backoff_max_s=0.5)

        async def call():
            client = LLMClient(endpoint, SecretStr(PLANTED_KEY), 4)
            try:
                return await client.structured(guideline_messages("red mug", SCALE), QueryGuideline,
                                               GUIDELINE_SCHEMA_NAME, "sim-judge")
            finally:
                await client.close()

        with pytest.raises(FatalEndpointError) as raised:
            asyncio.run(call())
        stats = sim.stats()
    assert stats["requests_total"] == 1 and stats["by_status"] == {"401": 1}
    message = str(raised.value)
    assert "401" in message and "Incorrect API key provided" in message  # the endpoint's own words, redacted
    assert leaks(message) == [] and PLANTED_KEY[:8] not in message and "[REDACTED]" in message


def test_job_whose_key_is_revoked_mid_run_exits_2_and_keeps_what_was_judged(ray_local, chorus, tmp_path, monkeypatch):
    """The whole job: the endpoint accepts the key for 40 completions, then answers 401. The run stops with exit
    code 2 and the endpoint's reason (not Ray's traceback), stops sending, leaks no key, and the judgements made
    before the revocation are in the label store for the next run."""
    log, catalog = chorus_subset(chorus, 12)
    log.write_parquet(tmp_path / "log.parquet")
    catalog.write_parquet(tmp_path / "catalog.parquet")
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    with SimThread(api_key=PLANTED_KEY, revoke_key_after=40, latency_ms=20) as sim:
        config = base_config(sim.base_url, tmp_path / "out", run_id="revoked")
        config["input"] = {"log": str(tmp_path / "log.parquet"), "catalog": str(tmp_path / "catalog.parquet")}
        config["llm"]["endpoints"]["default"].update(api_key_env=KEY_ENV, api_key_required=True, max_retries=6)
        config["compute"]["annotate"] = {"max_actors": 1, "batch_size": 8, "max_concurrent_batches": 2,
                                         "max_concurrent_requests": 4}
        run = run_cli(config, tmp_path, sim)
    assert run.code == 2, run.stderr[-3000:]
    assert "refused the API key (401)" in run.stderr and "mid-run" in run.stderr and KEY_ENV in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("rae-ray: error: endpoint ")
    assert "Traceback" not in run.stderr and "UserCodeException" not in run.stderr
    refused = run.stats["by_status"].get("401", 0)
    # No retries of a refused key: at most the requests already in flight when the first 401 came back.
    assert 1 <= refused <= 2 * 4, run.stats
    assert leaks(run.stdout + run.stderr + run.logs) == []
    assert 0 < stored_records(tmp_path / "out" / "_store" / "labels").height <= 40
    assert not (tmp_path / "out" / "revoked" / "manifest.json").exists()  # not a finished run


def test_redact_removes_whole_partial_and_masked_keys():
    masked = PLANTED_KEY[:8] + "*" * 18 + PLANTED_KEY[-4:]
    openai_401 = (f"Error code: 401 - {{'error': {{'message': 'Incorrect API key provided: {masked}. You can find "
                  "your API key at https://platform.openai.com/account/api-keys.', 'code': 'invalid_api_key'}}")
    for message in (openai_401, f"Authorization: Bearer {PLANTED_KEY}", f"key ending in {PLANTED_MIDDLE} is revoked",
                    f"bad key {PLANTED_KEY}; again {PLANTED_KEY[3:]}"):
        cleaned = redact(message, (PLANTED_KEY,))
        assert leaks(cleaned) == [] and PLANTED_KEY[:8] not in cleaned and "[REDACTED]" in cleaned, cleaned
    azure = "0123456789abcdef0123456789abcdef"  # not shaped like sk-...: only the secret itself tells
    assert redact(f"key ...{azure[5:21]} rejected", (azure,)) == "key ...[REDACTED] rejected"
    assert redact("HTTP 503: overloaded, retry in 1s", (PLANTED_KEY,)) == "HTTP 503: overloaded, retry in 1s"


def test_config_never_echoes_a_key_put_in_the_wrong_place():
    minimal = {"input": {"log": "x"}, "llm": {"endpoints": {"default": {"base_url": "http://127.0.0.1:9/v1"}},
                                              "guidelines": {"model": "g"}, "annotate": {"model": "a"}}}
    attempts = [
        [f"llm.endpoints.default.api_key_env={PLANTED_KEY}"],  # the key instead of the variable's name
        [f"llm.endpoints.default.api_key={PLANTED_KEY}"],  # an unknown key
        [f"llm.endpoints.default.base_url=https://user:{PLANTED_KEY}@api.example.com/v1"],  # credentials in the URL
    ]
    for overrides in attempts:
        with pytest.raises(ConfigError) as raised:
            config_from_dict(minimal, overrides)
        assert "llm.endpoints.default" in str(raised.value) and leaks(str(raised.value)) == [], str(raised.value)

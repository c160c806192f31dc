"""The endpoint as its own process: `python -m rae_ray.sim` through `SimProcess`, and `main()`."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest

from rae_ray.llm import prompts, schemas
from rae_ray.sim import SimProcess, SimStartError
from rae_ray.sim.__main__ import config_from_args, main
from rae_ray.sim.server import LISTENING_LINE


def _guideline_request(base_url: str, scale: list, api_key: str) -> dict:
    body = {
        "model": "rae-sim-judge",
        "messages": prompts.guideline_messages("usb c cable", scale),
        "response_format": schemas.response_format(schemas.QueryGuideline, schemas.GUIDELINE_SCHEMA_NAME),
    }
    request = urllib.request.Request(
        base_url + "/chat/completions", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["x-rae-simulated"] == "true"
        return json.loads(response.read())


def test_sim_process_serves_and_stops(scale) -> None:
    with SimProcess(api_key="process-key-42", latency_ms=1) as sim:
        assert sim.base_url.startswith("http://127.0.0.1:") and sim.base_url.endswith("/v1")
        assert sim._first_line() == LISTENING_LINE.format(base_url=sim.base_url)
        if Path(f"/proc/{sim.pid}/cmdline").exists():  # the key travels in the environment, not argv
            assert b"process-key-42" not in Path(f"/proc/{sim.pid}/cmdline").read_bytes()
        reply = _guideline_request(sim.base_url, scale, "process-key-42")
        schemas.QueryGuideline.model_validate_json(reply["choices"][0]["message"]["content"])
        assert sim.stats()["by_status"] == {"200": 1}
        assert sim.reset_stats()["requests_total"] == 0
        port = int(sim.base_url.rsplit(":", 1)[1].split("/")[0])
        process = sim._process
    assert process is not None and process.returncode == 0  # SIGTERM is a clean shutdown
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_sim_process_reports_a_failed_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SimStartError, match="cannot listen") as caught:
            SimProcess(port=port).start()
    assert "exited with code 1" in str(caught.value)


def test_main_validates_flags(capsys) -> None:
    assert main(["--error-rate-5xx", "0.7", "--error-rate-timeout", "0.7"]) == 2
    assert "error rates add up to" in capsys.readouterr().err
    assert main(["--no-such-flag"]) == 2
    assert main(["--help"]) == 0
    assert "--max-in-flight" in capsys.readouterr().out


def test_flags_map_onto_the_config(monkeypatch) -> None:
    monkeypatch.setenv("RAE_SIM_API_KEY", "from-env")
    config = config_from_args(["--port", "0", "--models", "a, b", "--rpm", "60", "--latency-ms", "5",
                               "--latency-distribution", "lognormal", "--error-rate-reset", "0.1", "--access-log"])
    assert config.models == ["a", "b"] and config.rpm == 60 and config.latency_ms == 5
    assert config.latency_distribution == "lognormal" and config.error_rate_reset == 0.1 and config.access_log
    assert config.api_key is not None and config.api_key.get_secret_value() == "from-env"
    assert "from-env" not in repr(config)
    assert config_from_args(config.to_argv()).model_dump(exclude={"api_key"}) == config.model_dump(exclude={"api_key"})


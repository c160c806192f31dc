"""A sweep's variants side by side: who waits for whom, how many fit, and the threads that run them (no Ray: the
runs are plain functions here)."""

from __future__ import annotations

import threading
import time

import pytest
import yaml

from rae_ray.config import ConfigError, config_from_dict
from rae_ray.sweep_runs import fitting, run_variants, variant_cpus, waits

BASE = {
    "input": {"log": "sample:search_log.parquet"},
    "llm": {
        "endpoints": {"default": {"base_url": "http://127.0.0.1:9/v1"},
                      "limited": {"base_url": "http://127.0.0.1:9/v1", "rpm": 60}},
        "guidelines": {"model": "g"},
        "annotate": {"model": "a"},
    },
    "output": {"uri": "/tmp/rae-out"},
}


def variants(**overrides: list[str]) -> dict:
    return {name: config_from_dict(BASE, changes) for name, changes in overrides.items()}


def reasons(configs) -> dict[str, list[tuple[str, str]]]:
    return {name: [(w.after, w.reason) for w in ws] for name, ws in waits(configs).items()}


def test_variants_sharing_store_keys_wait_for_the_earlier_one():
    configs = variants(
        base=[],
        k5=["k=5"],  # the same judge: its pairs are keys the first variant stores
        rankers=["rankers=[bm25-v1]"],  # the same keys too, although it shares only some pairs
        judge_b=["llm.annotate.model=b"],  # another judge, the same guidelines
        no_guidelines=["llm.guidelines.enabled=false"],  # its own prompt version: no key in common
        other=["llm.guidelines.model=g2", "llm.annotate.model=a2"],
    )
    assert reasons(configs) == {
        "base": [], "k5": [("base", "same guideline keys, same label keys")],
        "rankers": [("base", "same guideline keys, same label keys"), ("k5", "same guideline keys, same label keys")],
        "judge_b": [("base", "same guideline keys"), ("k5", "same guideline keys"), ("rankers", "same guideline keys")],
        "no_guidelines": [], "other": [],
    }


def test_another_store_or_no_store_shares_nothing_and_rate_limited_models_wait():
    configs = variants(base=[], elsewhere=["store.uri=/tmp/other-store"], off=["store.enabled=false"],
                       limited_a=["llm.guidelines.enabled=false", "llm.annotate.endpoint=limited", "store.enabled=false"],
                       limited_b=["llm.guidelines.enabled=false", "llm.annotate.endpoint=limited", "store.enabled=false"],
                       limited_c=["llm.guidelines.enabled=false", "llm.annotate.endpoint=limited", "store.enabled=false",
                                  "llm.annotate.model=c"])
    assert reasons(configs) == {"base": [], "elsewhere": [], "off": [], "limited_a": [],
                                "limited_b": [("limited_a", "same rate-limited model a")], "limited_c": []}


def test_as_many_variants_as_the_cpus_hold_beside_one_for_tasks():
    configs = variants(a=[], b=[], c=[])
    assert variant_cpus(configs["a"]) == 2 * 0.25  # the default pool: 2 actors of a quarter CPU
    assert fitting(configs, 2.0) == 2  # (2 - 1) / 0.5
    assert fitting(configs, 8.0) == 3  # never more than the variants
    assert fitting(configs, 1.0) == 1  # never fewer than one
    big = variants(a=["compute.annotate.max_actors=4", "compute.annotate.num_cpus=1"], b=[])
    assert variant_cpus(big["a"]) == 4 and fitting(big, 8.0) == 1  # (8 - 1) / 4


def test_the_sweep_file_says_how_many_at_once(tmp_path):
    from rae_ray.sweep import load_sweep, sweep_options

    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "parallel": 3, "variants": {"a": {}}}))
    assert sweep_options(tmp_path / "s.yaml").parallel == 3
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "variants": {"a": {}}}))
    assert sweep_options(tmp_path / "d.yaml").parallel == "auto"
    for bad in (0, True, "two"):
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "parallel": bad, "variants": {"a": {}}}))
        with pytest.raises(ConfigError, match="parallel"):
            load_sweep(tmp_path / "bad.yaml")


class Recorder:
    """A stand-in for the job: sleeps, records when each variant ran, prints a progress line."""

    def __init__(self, seconds: dict[str, float], fail: str | None = None):
        self.seconds, self.fail = seconds, fail
        self.spans: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def __call__(self, name, config):
        from rae_ray.runtime import progress

        start = time.monotonic()
        progress(f"working on k={config.k}")
        time.sleep(self.seconds[name])
        if name == self.fail:
            raise ValueError(f"{name} broke")
        with self.lock:
            self.spans[name] = (start, time.monotonic())
        return f"result of {name}"


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@pytest.mark.parametrize("parallel", [2, 3])
def test_variants_run_at_once_unless_they_wait(capsys, parallel):
    configs = variants(a=[], a_k5=["k=5"], b=["llm.guidelines.model=g2", "llm.annotate.model=b"])
    run = Recorder({"a": 0.4, "a_k5": 0.1, "b": 0.4})
    # With two slots, a_k5 (waiting for a) does not hold the second one: b runs beside a.
    results = run_variants(configs, run, parallel=parallel)
    assert results == {"a": "result of a", "a_k5": "result of a_k5", "b": "result of b"}
    assert list(results) == ["a", "a_k5", "b"]  # file order
    assert overlap(run.spans["a"], run.spans["b"])
    assert run.spans["a_k5"][0] >= run.spans["a"][1]  # after a: its keys are a's
    err = capsys.readouterr().err
    assert "[rae-ray] [b] working on k=10" in err and "[rae-ray] [a_k5] working on k=5" in err
    assert "[rae-ray] [a_k5] variant started; after a (same guideline keys, same label keys)" in err


def test_one_at_a_time_when_parallel_is_one(capsys):
    configs = variants(a=[], b=["llm.guidelines.model=g2", "llm.annotate.model=b"])
    run = Recorder({"a": 0.2, "b": 0.2})
    run_variants(configs, run, parallel=1)
    assert not overlap(run.spans["a"], run.spans["b"])
    err = capsys.readouterr().err
    assert "[rae-ray] sweep: variant b (2/2)" in err and "[rae-ray] working on k=10" in err  # no prefix


def test_a_failed_variant_stops_the_sweep_after_the_running_ones():
    configs = variants(a=[], a_k5=["k=5"], b=["llm.guidelines.model=g2", "llm.annotate.model=b"],
                       c=["llm.guidelines.model=g3", "llm.annotate.model=c"])
    run = Recorder({"a": 0.1, "a_k5": 0.1, "b": 0.5, "c": 0.1}, fail="a")
    with pytest.raises(ValueError, match="a broke"):
        run_variants(configs, run, parallel=2)
    assert "b" in run.spans  # running when a failed: it finished
    assert "a_k5" not in run.spans and "c" not in run.spans  # waited for a, or not started: never run

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


def stages(configs) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    return {name: [(w.after, w.stages) for w in ws] for name, ws in waits(configs).items()}


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
        # k5's queries and pairs are base's (same log, rankers, sampling; smaller k): waiting for base is enough.
        "rankers": [("base", "same guideline keys, same label keys")],
        # Another ranker list may bring queries base does not have: judge_b waits for rankers' guidelines too.
        "judge_b": [("base", "same guideline keys"), ("rankers", "same guideline keys")],
        "no_guidelines": [], "other": [],
    }
    # What each waits for: a's guidelines only, when the judge differs; the stored labels too when it is the same.
    assert stages(configs)["judge_b"] == [("base", ("guidelines",)), ("rankers", ("guidelines",))]
    assert stages(configs)["k5"] == [("base", ("guidelines", "annotate"))]
    assert waits(configs)["judge_b"][0].describe() == "after base's guidelines (same guideline keys)"


def test_another_store_or_no_store_shares_nothing_and_rate_limited_models_wait():
    configs = variants(base=[], elsewhere=["store.uri=/tmp/other-store"], off=["store.enabled=false"],
                       limited_a=["llm.guidelines.enabled=false", "llm.annotate.endpoint=limited", "store.enabled=false"],
                       limited_b=["llm.guidelines.enabled=false", "llm.annotate.endpoint=limited", "store.enabled=false"],
                       limited_c=["llm.guidelines.enabled=false", "llm.annotate.endpoint=limited", "store.enabled=false",
                                  "llm.annotate.model=c"])
    assert reasons(configs) == {"base": [], "elsewhere": [], "off": [], "limited_a": [],
                                "limited_b": [("limited_a", "same rate-limited model a")], "limited_c": []}
    assert waits(configs)["limited_b"][0].stages == ("run",)  # the endpoint is busy until the run ends
    assert waits(configs)["limited_b"][0].describe() == "after limited_a (same rate-limited model a)"


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
    """A stand-in for the job: prints a progress line, "writes guidelines" for half its time, then "judges"; records
    when each variant ran and when its guidelines were done."""

    def __init__(self, seconds: dict[str, float], fail: str | None = None):
        self.seconds, self.fail = seconds, fail
        self.spans: dict[str, tuple[float, float]] = {}
        self.guidelines_done: dict[str, float] = {}
        self.lock = threading.Lock()

    def __call__(self, name, config):
        from rae_ray.runtime import progress, stage_done

        start = time.monotonic()
        progress(f"working on k={config.k}")
        time.sleep(self.seconds[name] / 2)
        with self.lock:
            self.guidelines_done[name] = time.monotonic()
        stage_done("captions")
        stage_done("guidelines")
        time.sleep(self.seconds[name] / 2)
        if name == self.fail:
            raise ValueError(f"{name} broke")
        stage_done("annotate")
        with self.lock:
            self.spans[name] = (start, time.monotonic())
        return f"result of {name}"


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@pytest.mark.parametrize("parallel", [2, 3])
def test_variants_run_at_once_unless_they_wait(capsys, parallel):
    configs = variants(a=[], a_k5=["k=5"], judge_b=["llm.annotate.model=b"],
                       c=["llm.guidelines.model=g2", "llm.annotate.model=c"])
    run = Recorder({"a": 0.6, "a_k5": 0.1, "judge_b": 0.4, "c": 0.3})
    results = run_variants(configs, run, parallel=parallel)
    assert results == {name: f"result of {name}" for name in ("a", "a_k5", "judge_b", "c")}
    assert list(results) == ["a", "a_k5", "judge_b", "c"]  # file order
    # judge_b (a's guidelines, its own judge) starts once a's guidelines are stored, and judges beside a.
    assert run.spans["judge_b"][0] >= run.guidelines_done["a"]
    assert overlap(run.spans["a"], run.spans["judge_b"])
    # a_k5 (a's guidelines and judge) starts once a's labels are stored.
    assert run.spans["a_k5"][0] >= run.spans["a"][1]
    # c shares nothing: with three slots it starts with a; with two, in the slot a waiting variant does not hold.
    assert run.spans["c"][0] < run.guidelines_done["a"] if parallel == 3 else overlap(run.spans["a"], run.spans["c"])
    err = capsys.readouterr().err
    assert "[rae-ray] [c] working on k=10" in err and "[rae-ray] [a_k5] working on k=5" in err
    assert "[rae-ray] [judge_b] variant started; after a's guidelines (same guideline keys)" in err


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
    run = Recorder({"a": 0.2, "a_k5": 0.1, "b": 0.6, "c": 0.1}, fail="a")
    with pytest.raises(ValueError, match="a broke"):
        run_variants(configs, run, parallel=2)
    assert "b" in run.spans  # running when a failed: it finished
    assert "a_k5" not in run.spans and "c" not in run.spans  # waited for a, or not started: never run

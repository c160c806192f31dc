import pytest

from rae_ray.config import ConfigError, config_from_dict, load_config, redacted

MINIMAL = {
    "input": {"log": "sample:search_log.parquet"},
    "llm": {
        "endpoints": {"default": {"base_url": "http://127.0.0.1:9/v1"}},
        "guidelines": {"model": "g"},
        "annotate": {"model": "a"},
    },
}


def test_defaults_are_the_papers():
    config = config_from_dict(MINIMAL)
    assert config.k == 10
    assert [g.grade for g in config.scale.grades] == [2, 1, 0]
    assert config.scale.top_grade == 2
    assert config.sampling.mode == "all"


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="input.logg"):
        config_from_dict({**MINIMAL, "input": {"log": "x", "logg": "y"}})


def test_set_overrides_nested_keys_with_yaml_values():
    config = config_from_dict(MINIMAL, ["k=5", "sampling.mode=stratified", "sampling.n_queries=7", "rankers=[a, b]"])
    assert config.k == 5 and config.sampling.n_queries == 7 and config.rankers == ["a", "b"]


def test_bad_values_fail_with_their_path():
    with pytest.raises(ConfigError, match="k"):
        config_from_dict(MINIMAL, ["k=0"])
    with pytest.raises(ConfigError, match="n_queries is required"):
        config_from_dict(MINIMAL, ["sampling.mode=stratified"])
    with pytest.raises(ConfigError, match="not in llm.endpoints"):
        config_from_dict(MINIMAL, ["llm.annotate.endpoint=other"])
    with pytest.raises(ConfigError, match="key=value"):
        config_from_dict(MINIMAL, ["k"])


def test_scale_must_be_distinct():
    with pytest.raises(ConfigError, match="distinct"):
        config_from_dict({**MINIMAL, "scale": {"grades": [
            {"grade": 1, "name": "a", "description": ""}, {"grade": 1, "name": "b", "description": ""}]}})


def test_api_key_comes_from_the_environment_and_never_into_the_dump(monkeypatch):
    config = config_from_dict(MINIMAL)
    endpoint = config.llm.endpoint_for("annotate")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set"):
        endpoint.api_key()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-very-secret-123456")
    assert endpoint.api_key().get_secret_value() == "sk-test-very-secret-123456"
    assert "very-secret" not in str(redacted(config))
    assert "very-secret" not in repr(endpoint.api_key())


def test_load_config_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(top)


def test_shipped_configs_load(monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    from rae_ray.sweep import load_sweep

    configs = sorted((Path(__file__).parents[2] / "jobs" / "configs").glob("*.yaml"))
    assert configs, "jobs/configs holds no config"
    for path in configs:
        if path.name.startswith("sweep"):
            sweep_id, variants = load_sweep(path)
            assert len(variants) >= 2
            assert all(c.run_id == f"{sweep_id}-{name}" for name, c in variants.items())
            if "judge-b" in variants:
                assert variants["judge-b"].llm.annotate.model == "sim-judge-b"
            if path.name == "sweep-demo.yaml":
                assert variants["k5"].k == 5
            if path.name == "sweep-judges.yaml":  # people in every variant; the ablation turns guidelines off
                assert all(c.input.human_labels.grade_map == {3: 2, 2: 1, 1: 1, 0: 0} for c in variants.values())
                assert [c.llm.guidelines.enabled for c in variants.values()] == [True, True, False]
            if path.name == "sweep-examples.yaml":  # one judge, with and without people's examples
                assert [c.llm.annotate.examples is not None for c in variants.values()] == [False, True]
                assert all(c.input.human_labels is not None for c in variants.values())
        else:
            config = load_config(path)
            assert config.llm.annotate.model


def test_batch_mode_is_for_annotation_only():
    from rae_ray.config import ConfigError, config_from_dict

    minimal = {"input": {"log": "x"}, "llm": {"endpoints": {"default": {"base_url": "http://127.0.0.1:9/v1"}},
                                              "guidelines": {"model": "g"}, "annotate": {"model": "a"}}}
    assert config_from_dict(minimal, ["llm.annotate.batch=true"]).llm.annotate.batch is True
    # The batch keys exist on llm.annotate alone (AnnotateModelConfig): elsewhere they are unknown keys.
    for key in ("llm.guidelines.batch=true", "llm.guidelines.batch_poll_s=5", "llm.captions.batch_completion_window=1h"):
        with pytest.raises(ConfigError, match=key.split("=")[0].replace(".", r"\.") + ": Extra inputs are not permitted"):
            config_from_dict(minimal, [key, "llm.captions.model=v"])


def test_metric_cutoffs_are_within_k():
    # Explicit cut-offs above k are refused: a list cut at rank 10 has no 20th item (P@20 would score 10 items).
    with pytest.raises(ConfigError, match=r"metrics.ks \[20\] has cut-offs above k=10"):
        config_from_dict(MINIMAL, ["metrics.ks=[20]"])
    with pytest.raises(ConfigError, match="above k=5"):
        config_from_dict(MINIMAL, ["k=5", "metrics.ks=[5, 10]"])
    assert config_from_dict(MINIMAL, ["k=20", "metrics.ks=[20]"]).metrics.ks == [20]
    # The default cut-offs (5 and 10) follow k: those not above it, else k itself.
    assert config_from_dict(MINIMAL).metrics.ks == [5, 10]
    assert config_from_dict(MINIMAL, ["k=7"]).metrics.ks == [5]
    assert config_from_dict(MINIMAL, ["k=3", "metrics.bootstrap=10"]).metrics.ks == [3]
    assert config_from_dict(MINIMAL, ["k=50"]).metrics.ks == [5, 10]


def test_endpoint_and_actor_concurrency_say_how_they_combine():
    from rae_ray.config import EndpointConfig, StageComputeConfig

    cluster = EndpointConfig.model_fields["max_in_flight"].description
    per_actor = StageComputeConfig.model_fields["max_concurrent_requests"].description
    assert "whole cluster" in cluster and "max_concurrent_requests" in cluster
    assert "one actor" in per_actor and "max_in_flight" in per_actor


def test_guidelines_are_on_unless_turned_off():
    assert config_from_dict(MINIMAL).llm.guidelines.enabled is True
    off = config_from_dict(MINIMAL, ["llm.guidelines.enabled=false"])
    assert off.llm.guidelines.enabled is False and off.llm.guidelines.model == "g"
    with pytest.raises(ConfigError, match="llm.annotate.enabled"):  # the switch belongs to the guideline stage only
        config_from_dict(MINIMAL, ["llm.annotate.enabled=false"])


def test_sweep_set_applies_to_every_variant_before_its_own(tmp_path):
    import yaml

    from rae_ray.sweep import load_sweep

    (tmp_path / "base.yaml").write_text(yaml.safe_dump(MINIMAL))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "base": "base.yaml", "sweep_id": "s", "set": {"k": 7, "input.human_labels": {"uri": "h.csv", "rater_columns": ["r1", "r2"]}},
        "variants": {"a": {}, "b": {"k": 3}}}))
    _, variants = load_sweep(tmp_path / "sweep.yaml")
    assert variants["a"].k == 7 and variants["b"].k == 3
    assert all(v.input.human_labels.rater_columns == ["r1", "r2"] for v in variants.values())
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "set": ["k=7"], "variants": {"a": {}}}))
    with pytest.raises(ConfigError, match="'set' must map"):
        load_sweep(tmp_path / "bad.yaml")

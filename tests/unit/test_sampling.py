import polars as pl

from rae_ray.config import SamplingConfig
from rae_ray.sampling import allocate, assign_strata, sample_queries

COUNTS = pl.DataFrame({"query": [f"q{i:02d}" for i in range(20)], "query_count": [100 - i for i in range(20)]})


def test_strata_follow_query_count_shares():
    strata = assign_strata(COUNTS, head_share=0.2, torso_share=0.3)
    by = dict(strata.group_by("stratum").len().iter_rows())
    assert by == {"head": round(20 * 0.2), "torso": round(20 * 0.5) - round(20 * 0.2), "tail": 20 - round(20 * 0.5)}
    head = strata.filter(pl.col("stratum") == "head")["query_count"].min()
    tail = strata.filter(pl.col("stratum") == "tail")["query_count"].max()
    assert head > tail


def test_allocate_is_proportional_and_exact():
    assert allocate({"head": 4, "torso": 6, "tail": 10}, 10) == {"head": 2, "torso": 3, "tail": 5}
    assert sum(allocate({"head": 3, "torso": 3, "tail": 3}, 7).values()) == 7
    assert allocate({"head": 1, "torso": 1, "tail": 1}, 10) == {"head": 1, "torso": 1, "tail": 1}


def test_stratified_sample_is_seeded_and_sized():
    config = SamplingConfig(mode="stratified", n_queries=10, seed=3)
    first = sample_queries(COUNTS, config)
    again = sample_queries(COUNTS, config)
    other = sample_queries(COUNTS, SamplingConfig(mode="stratified", n_queries=10, seed=4))
    assert first.height == 10 and first["query"].n_unique() == 10
    assert first["query"].to_list() == again["query"].to_list()
    assert first["query"].to_list() != other["query"].to_list()
    assert dict(first.group_by("stratum").len().iter_rows()) == {"head": 2, "torso": 3, "tail": 5}


def test_all_mode_keeps_every_query():
    assert sample_queries(COUNTS, SamplingConfig()).height == 20

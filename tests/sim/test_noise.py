"""The simulated judge's per-sample noise: moves by one grade, more on hard pairs, drawn from the request and seed."""

from __future__ import annotations

import json

import pytest

from rae_ray.config import PAPER_SCALE
from rae_ray.llm import prompts, schemas
from rae_ray.sim.judge import judge, make_guideline
from rae_ray.sim.noise import draw, move_chance, with_noise

JUDGEMENT = schemas.JUDGEMENT_SCHEMA_NAME
SCALE = [g.model_dump() for g in PAPER_SCALE]
PRODUCTS = [
    {"title": "JBL Go 3 portable Bluetooth speaker", "brand": "JBL"},
    {"title": "Brother TN-2110 toner cartridge Original Black", "brand": "Brother"},
    {"title": "Sony wireless headphones WH-1000XM4 black", "brand": "Sony"},
    {"title": "Bluetooth speaker stand for desks", "brand": "Generic"},
    {"title": "Red Bluetooth headset with microphone", "brand": "Plantronics"},
]


def test_hard_pairs_move_more_often_and_across_the_nearest_boundary():
    # 3 grades: boundaries at 0.35 and 0.7, bands 0.35 wide.
    assert move_chance(0.35, 3, 0.1) == (pytest.approx(0.2), -1)
    assert move_chance(0.34, 3, 0.1)[1] == 1  # below the boundary: moves up
    assert move_chance(0.175, 3, 0.1) == (pytest.approx(0.1), 1)
    assert move_chance(0.35, 3, 0.3)[0] == pytest.approx(0.35)  # never half: the majority keeps the judge's grade
    assert move_chance(0.0, 3, 0.3)[0] == 0.0  # clearly irrelevant: never moves
    assert move_chance(0.0, 3, 0.0) == (0.0, 0)
    chances = [move_chance(s / 100, 3, 0.1)[0] for s in range(101)]
    assert 0.07 < sum(chances) / len(chances) < 0.13  # about the noise asked for, over evenly spread scores


def test_the_draw_is_fixed_by_request_and_seed():
    blocks = {"query": "speaker", "product": PRODUCTS[0]}
    assert draw(blocks, "m", 1) == draw(blocks, "m", 1)
    assert len({draw(blocks, "m", s) for s in range(20)}) == 20
    assert draw(blocks, "m", 1) != draw(blocks, "n", 1)


def test_noise_moves_a_judgement_by_one_grade_and_says_so():
    query = "bluetooth speaker"
    guideline = make_guideline(query)
    moved = 0
    for product in PRODUCTS:
        reply = judge(query, guideline, None, product)
        blocks = {"query": query, "guideline": guideline, "product": product}
        for seed in range(40):
            noisy = with_noise(JUDGEMENT, reply, blocks, "m", seed, 0.5)
            assert abs(noisy["grade"] - reply["grade"]) <= 1
            if noisy["grade"] != reply["grade"]:
                moved += 1
                assert "simulated noise" in noisy["reasoning"]
                assert noisy["label"] != reply["label"]
            assert with_noise(JUDGEMENT, reply, blocks, "m", seed, 0.5) == noisy  # deterministic
        assert with_noise(JUDGEMENT, reply, blocks, "m", 1, 0.0) == reply
    assert moved > 0
    assert with_noise(schemas.GUIDELINE_SCHEMA_NAME, {"x": 1}, {}, "m", 1, 0.5) == {"x": 1}


def test_samples_disagree_over_http(start_sim):
    from openai import OpenAI

    sim = start_sim(judge_noise=0.5)
    client = OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
    query = "bluetooth speaker"
    fmt = schemas.response_format(schemas.RelevanceJudgement, JUDGEMENT)
    varied = 0
    try:
        for product in PRODUCTS:
            messages = prompts.annotation_messages(query, make_guideline(query), SCALE, product)

            def grade(seed):
                extra = {} if seed is None else {"seed": seed}
                reply = client.chat.completions.create(model="m", messages=messages, response_format=fmt,
                                                       temperature=0.7, **extra)
                return json.loads(reply.choices[0].message.content)["grade"]

            grades = [grade(seed) for seed in (None, 1, 2, 3, 4, 5, 6, 7)]
            assert grade(3) == grades[3]  # the same request, the same answer
            varied += len(set(grades)) > 1
    finally:
        client.close()
    assert varied > 0

"""The simulated judge's per-sample noise (`--judge-noise P`): a judgement's grade moved by one, more often on
hard pairs, so repeated samples of a pair disagree the way a sampling LLM's do.

A pair is hard when the judge's match score lies near a grade boundary: the chance of a move is
2 * P * (1 - distance / band), at most 0.35 (band: the width of one grade's score band; 0 at a band's middle
and at the ends of the scale), which averages about P over evenly spread scores for P up to about 0.15. The move
goes across the nearest boundary (up when the score lies below it), or inward at the ends of the scale.
Deterministic: the draw is a hash of the request's data blocks, model and `seed`, so a repeated request gets the
same answer and each sample (seed i) its own.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from rae_ray.llm.schemas import JUDGEMENT_SCHEMA_NAME
from rae_ray.sim.judge import _scale

# The judge's reasoning states its score (`sim.judge.judge`): "Match score 0.43 of 1 gives grade ...".
_SCORE = re.compile(r"Match score (\d+(?:\.\d+)?) of 1")
TOP_BAND_START = 0.7  # `sim.judge._grade_index`: the top grade starts at this score, equal bands below it
# Below one half: a pair's majority of samples keeps the judge's own grade more often than not (as sampling an
# LLM more often helps), however hard the pair.
MAX_CHANCE = 0.35


def move_chance(score: float, n_grades: int, noise: float) -> tuple[float, int]:
    """(chance that the grade moves, direction +1 or -1) for a judge's score on a scale of n_grades."""
    if n_grades < 2 or noise <= 0:
        return 0.0, 0
    top = n_grades - 1
    band = TOP_BAND_START / top
    boundaries = [band * i for i in range(1, top + 1)]
    nearest = min(boundaries, key=lambda b: abs(score - b))
    distance = abs(score - nearest)
    return min(MAX_CHANCE, 2 * noise * max(0.0, 1 - distance / band)), (1 if score < nearest else -1)


def draw(blocks: dict[str, Any], model: str, seed: Any) -> float:
    """A uniform number in [0, 1) fixed by the request's content (its data blocks, model and seed)."""
    text = json.dumps([blocks, model, seed], sort_keys=True, default=str)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2**64


def with_noise(task: str, reply: dict[str, Any], blocks: dict[str, Any], model: str, seed: Any,
               noise: float) -> dict[str, Any]:
    """`reply`, or for a judgement drawn to move, the same judgement one grade up or down (its reasoning says so)."""
    if noise <= 0 or task != JUDGEMENT_SCHEMA_NAME:
        return reply
    match = _SCORE.search(str(reply.get("reasoning", "")))
    grades = _scale(blocks.get("scale") or None)
    chance, direction = move_chance(float(match.group(1)) if match else 0.5, len(grades), noise)
    if draw(blocks, model, seed) >= chance:
        return reply
    values = [int(g["grade"]) for g in grades]
    index = values.index(int(reply["grade"]))
    moved = index + direction if 0 <= index + direction < len(values) else index - direction
    grade = grades[moved]
    return {**reply, "grade": int(grade["grade"]), "label": str(grade["name"]),
            "reasoning": f"{reply['reasoning']} [simulated noise: grade {reply['grade']} moved to {grade['grade']}]"}

"""A judge panel in one actor: the vote rows of a batch go to their judge's `AnnotateStage` (its own endpoint,
client, rate limit and price), all judges at once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from rae_ray.stages.annotate import AnnotateStage
from rae_ray.stages.common import LLMStageConfig


class PanelStage:
    """Actor for `map_batches` (behind `labelstore.cached.KeyedStage`): vote rows with `vote_judge` (an index into
    `configs`) and `label_key` -> each judge's label rows with their `label_key` (rows grouped by judge)."""

    def __init__(self, configs: Sequence[LLMStageConfig]):
        self.judges = [AnnotateStage(config) for config in configs]

    async def __call__(self, batch: pa.Table) -> pa.Table:
        judge_of = batch.column("vote_judge").to_numpy(zero_copy_only=False)
        parts = [(stage, batch.filter(pa.array(judge_of == index)))
                 for index, stage in enumerate(self.judges) if (judge_of == index).any()]
        unknown = ~np.isin(judge_of, np.arange(len(self.judges)))
        if unknown.any():
            raise ValueError(f"PanelStage: vote_judge {sorted(set(judge_of[unknown].tolist()))} names no judge "
                             f"(the panel has {len(self.judges)})")
        outputs = await asyncio.gather(*(stage(rows) for stage, rows in parts))
        # Rows come back grouped by judge: each keeps its own store key (KeyedStage would append them by position).
        return pa.concat_tables([out.append_column("label_key", rows.column("label_key"))
                                 for out, (_, rows) in zip(outputs, parts)], promote_options="permissive")

"""The label store (Repeat): every guideline, caption and label already paid for, keyed by everything that decided it.

One Delta Lake table per kind under the store URI (default `<output.uri>/_store`), partitioned by `bucket`:
    guidelines/   key guideline_id
    labels/       key label_key
    captions/     key caption_id
    human/        key human_key: people's grades from `rae-ray review import` (source `human`)

`keys` makes every key, `delta` reads and writes the tables, `store` looks keys up and publishes batches,
`maintenance` compacts, counts and migrates (`rae-ray store`), `cached` runs an LLM stage on the store's misses
(imported from there: it starts actor pools, so this package does not load it).
"""

from rae_ray.labelstore.keys import (
    add_caption_ids, add_guideline_ids, add_label_keys, caption_id, guideline_id, label_key, normalize_query,
)
from rae_ray.labelstore.store import LabelStore, publish_shard

__all__ = [
    "LabelStore", "add_caption_ids", "add_guideline_ids", "add_label_keys", "caption_id", "guideline_id",
    "label_key", "normalize_query", "publish_shard",
]

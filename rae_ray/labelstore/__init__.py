"""The label store (Repeat): every guideline, caption and label already paid for, keyed by everything that decided it.

Layout under the store URI (default `<output.uri>/_store`):
    guidelines/<run_id>-<uuid>.parquet   key guideline_id
    labels/<run_id>-<uuid>.parquet       key label_key
    captions/<run_id>-<uuid>.parquet     key caption_id
    human/review-<time>-<uuid>.parquet   key human_key: people's grades from `rae-ray review import` (`human`)

`keys` makes every key, `store` reads and publishes shards, `cached` runs an LLM stage on the store's misses
(imported from there: it starts actor pools, so this package does not load it).
"""

from rae_ray.labelstore.keys import (
    add_caption_ids, add_guideline_ids, add_label_keys, caption_id, guideline_id, label_key, normalize_query,
)
from rae_ray.labelstore.store import LabelStore, pack_records, publish_shard, unpack_records

__all__ = [
    "LabelStore", "add_caption_ids", "add_guideline_ids", "add_label_keys", "caption_id", "guideline_id",
    "label_key", "normalize_query", "pack_records", "publish_shard", "unpack_records",
]

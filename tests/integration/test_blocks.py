"""Stage outputs are merged into few blocks, bounded by rows and by bytes, keeping every row."""

from __future__ import annotations

import pytest

from rae_ray import runtime

pytestmark = pytest.mark.integration


def test_batch_sized_blocks_are_merged_by_rows_and_bytes(ray_local, monkeypatch):
    # What an actor pool hands back: one small block per batch (1,762 image rows came in 111 blocks).
    tiny = ray_local.data.range(1762, override_num_blocks=111).materialize()
    assert tiny.num_blocks() > 100

    merged = runtime.compact(tiny)
    assert merged.num_blocks() == 1
    assert sorted(row["id"] for row in merged.take_all()) == list(range(1762))

    # Blocks of heavy rows (image data URLs) stop at BYTES_PER_BLOCK, whatever the row count.
    monkeypatch.setattr(runtime, "BYTES_PER_BLOCK", tiny.size_bytes() // 4)
    by_bytes = runtime.compact(tiny)
    assert 4 <= by_bytes.num_blocks() <= 5 and by_bytes.count() == 1762

    already = runtime.compact(merged)
    assert already is merged  # nothing to merge: no extra pass


def test_small_blocks_are_merged_as_they_stream(ray_local):
    # An actor pool's output, not materialized: 111 blocks of ~16 rows become blocks of `rows` rows on the way.
    tiny = ray_local.data.range(1762, override_num_blocks=111).map_batches(lambda b: b, batch_format="pyarrow")
    merged = runtime.merged(tiny, rows=1000).materialize()
    assert merged.num_blocks() == 2
    assert sorted(row["id"] for row in merged.take_all()) == list(range(1762))

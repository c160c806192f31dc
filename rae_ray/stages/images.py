"""Image stage: one safe fetch per unique image URL -> a checked, resized JPEG data URL, or why not."""

from __future__ import annotations

import asyncio

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from rae_ray.config import ImageConfig
from rae_ray.images import FetchedImage, ImageFetcher
from rae_ray.stages.common import missing_columns

IMAGE_SCHEMA = pa.schema([
    ("image_url", pa.string()), ("image_id", pa.string()), ("image_status", pa.string()), ("image_error", pa.string()),
    ("image_data_url", pa.string()), ("image_width", pa.int32()), ("image_height", pa.int32()),
])
IMAGE_COLUMNS = IMAGE_SCHEMA.names
NO_IMAGE = "none"


class ImageStageConfig(BaseModel):
    """Everything an image actor needs, built once by the job (`steps.images`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    images: ImageConfig
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    max_concurrent_requests: int = 16


class ImageStage:
    """Actor for `map_batches`: batch of unique `image_url` -> one row per URL with the image or its failure.

    A null or empty URL gets status "none" and no fetch; a URL repeated inside a batch is fetched once.
    """

    required_columns = ("image_url",)

    def __init__(self, config: ImageStageConfig):
        self.config = config
        self.fetcher = ImageFetcher(config.images, config.s3_endpoint_url, config.s3_region)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._active_batches = 0

    def _slots(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._loop is not loop:
            self._loop, self._semaphore = loop, asyncio.Semaphore(self.config.max_concurrent_requests)
        return self._semaphore

    async def _fetch(self, url: str) -> FetchedImage:
        async with self._slots():
            return await self.fetcher.fetch(url)

    async def __call__(self, batch: pa.Table) -> pa.Table:
        missing_columns(batch, self.required_columns, "ImageStage")
        urls = batch.column("image_url").to_pylist()
        unique = list(dict.fromkeys(u for u in urls if u))
        # Ray Data gives an actor no shutdown hook: the HTTP session is closed whenever no batch is in flight,
        # so an actor that is scaled down or ends holds no open connections (the next batch opens a new one).
        self._active_batches += 1
        try:
            fetched = dict(zip(unique, await asyncio.gather(*(self._fetch(u) for u in unique))))
        finally:
            self._active_batches -= 1
            if self._active_batches == 0:
                await self.fetcher.close()
        results = [fetched.get(u) if u else None for u in urls]
        return pa.table(
            {
                "image_url": pa.array(urls, pa.string()),
                "image_id": pa.array([r.image_id if r else None for r in results], pa.string()),
                "image_status": pa.array([r.status if r else NO_IMAGE for r in results], pa.string()),
                "image_error": pa.array([r.error if r else None for r in results], pa.string()),
                "image_data_url": pa.array([r.data_url if r else None for r in results], pa.string()),
                "image_width": pa.array([r.width if r else None for r in results], pa.int32()),
                "image_height": pa.array([r.height if r else None for r in results], pa.int32()),
            }
        )

    async def close(self) -> None:
        await self.fetcher.close()

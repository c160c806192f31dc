"""Product photos for `rae-ray demo --images caption|direct`: the sample's Icecat image server is not reachable
from everywhere, so the demo serves SYNTHETIC photos on 127.0.0.1, one per product, painted in the colour its
attributes give (`product_colour`), grey where they give none. Clearly not the real product images: they let
the image path (fetch, caption, judge) run end to end anywhere.
"""

from __future__ import annotations

import functools
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl

PALETTE = {
    "black": (25, 25, 25), "white": (245, 245, 245), "silver": (192, 192, 192), "grey": (128, 128, 128),
    "gray": (128, 128, 128), "blue": (30, 60, 200), "red": (200, 30, 30), "green": (30, 150, 50),
    "yellow": (230, 210, 30), "orange": (240, 140, 20), "pink": (240, 130, 180), "purple": (120, 40, 160),
    "brown": (120, 70, 30), "gold": (212, 175, 55),
}


def product_colour(attributes: str | None) -> tuple[int, int, int]:
    """The first colour named by the product's `product_colour` attribute, else grey."""
    try:
        value = json.loads(attributes or "{}").get("product_colour")
    except (json.JSONDecodeError, AttributeError):
        value = None
    for word in str(value or "").lower().replace(",", " ").split():
        if word in PALETTE:
            return PALETTE[word]
    return PALETTE["grey"]


@functools.lru_cache(maxsize=None)
def photo(colour: tuple[int, int, int]) -> bytes:
    """The PNG of a product in `colour` (one per colour: the server runs in the driver, beside the job)."""
    from PIL import Image

    image = Image.new("RGB", (160, 160), "white")
    image.paste(Image.new("RGB", (100, 110), colour), (30, 25))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


class DemoImageServer:
    """A local HTTP server for the synthetic photos; `catalog_with_local_images` points a catalog at it."""

    def __init__(self, catalog: Path):
        products = pl.read_parquet(catalog, columns=["product_id", "attributes"])
        self.colours = dict(zip(products["product_id"].to_list(), map(product_colour, products["attributes"].to_list())))
        colours = self.colours

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                product = self.path.removeprefix("/img/").removesuffix(".png")
                if product not in colours:
                    self.send_error(404)
                    return
                body = photo(colours[product])
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> DemoImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()

    def catalog_with_local_images(self, catalog: Path, out: Path) -> Path:
        """A copy of the catalog whose image_url points at this server."""
        frame = pl.read_parquet(catalog).with_columns(
            (pl.lit(self.base_url + "/img/") + pl.col("product_id") + pl.lit(".png")).alias("image_url"))
        frame.write_parquet(out)
        return out

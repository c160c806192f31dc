"""The image fetcher against a local HTTP server and the moto S3 server: limits, bad bytes, safety."""

from __future__ import annotations

import asyncio
import base64
import io
import random
import socket
import time
from contextlib import contextmanager

import boto3
import pytest
from PIL import Image

from rae_ray.images import FetchedImage, ImageFetcher, address_problem, numeric_host
from tests.images.conftest import product_photo, png_header_only


def fetch(fetcher: ImageFetcher, url: str) -> FetchedImage:
    async def go() -> FetchedImage:
        try:
            return await fetcher.fetch(url)
        finally:
            await fetcher.close()

    return asyncio.run(go())


def decoded(result: FetchedImage) -> Image.Image:
    header, data = result.data_url.split(",", 1)
    assert header == "data:image/jpeg;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


@contextmanager
def connections_recorded():
    """Every address a socket of this process connects to during the block."""
    seen: list[str] = []
    original = socket.socket.connect

    def spy(self, address):
        seen.append(address[0])
        return original(self, address)

    socket.socket.connect = spy
    try:
        yield seen
    finally:
        socket.socket.connect = original


# ---------------------------------------------------------------------------------------------- good images


def test_png_is_converted_to_a_resized_jpeg(image_server, image_config) -> None:
    url = image_server.add("/wide-red.png", product_photo("red", size=(1600, 800)))
    result = fetch(ImageFetcher(image_config(max_side=400)), url)
    assert result.status == "ok" and result.error is None
    assert (result.width, result.height) == (400, 200)
    image = decoded(result)
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == (400, 200)
    r, g, b = image.getpixel((200, 100))
    assert r > 150 and g < 80 and b < 80
    assert result.image_id and len(result.image_id) == 20


def test_transparency_becomes_white_not_black(image_server, image_config) -> None:
    url = image_server.add("/cutout.png", product_photo("blue", transparent=True))
    image = decoded(fetch(ImageFetcher(image_config()), url))
    assert min(image.getpixel((2, 2))) > 240


def test_redirect_within_the_allowed_host_is_followed(image_server, image_config) -> None:
    image_server.add("/target.png", product_photo("green"))
    result = fetch(ImageFetcher(image_config()), image_server.url("/redirect?to=/target.png"))
    assert result.status == "ok"


def test_too_many_redirects(image_server, image_config) -> None:
    loop_url = image_server.url("/redirect?to=/redirect%3Fto%3D/redirect")
    result = fetch(ImageFetcher(image_config(max_redirects=1)), loop_url)
    assert result.status == "error" and "redirects" in result.error


# ---------------------------------------------------------------------------------------------- limits


def test_byte_limit_from_content_length(image_server, image_config) -> None:
    url = image_server.add("/big.png", product_photo("red") + b"\x00" * 200_000)
    result = fetch(ImageFetcher(image_config(max_bytes=50_000)), url)
    assert result.status == "too_large" and "Content-Length" in result.error


def test_byte_limit_while_streaming(image_server, image_config) -> None:
    result = fetch(ImageFetcher(image_config(max_bytes=50_000)), image_server.url("/stream?chunks=40"))
    assert result.status == "too_large" and "more than 50000 bytes" in result.error


def test_pixel_limit_is_checked_before_decoding(image_server, image_config) -> None:
    # The header claims 6000x6000 and the pixel data is a few bytes: decoding would fail as truncated,
    # so "too_large" proves the size was refused before any pixel was decoded.
    url = image_server.add("/claims-36mp.png", png_header_only(6000, 6000))
    result = fetch(ImageFetcher(image_config(max_pixels=1_000_000)), url)
    assert result.status == "too_large" and "6000x6000" in result.error


def test_real_image_over_the_pixel_limit(image_server, image_config) -> None:
    buffer = io.BytesIO()
    Image.new("L", (2000, 2000), 255).save(buffer, "PNG")  # 4 MP, a few kB: highly compressible
    url = image_server.add("/white-4mp.png", buffer.getvalue())
    assert len(buffer.getvalue()) < 50_000
    result = fetch(ImageFetcher(image_config(max_pixels=1_000_000)), url)
    assert result.status == "too_large"


def test_decompression_bomb(image_server, image_config) -> None:
    # 10^10 pixels: Pillow's own guard fires inside Image.open, even with a permissive max_pixels.
    url = image_server.add("/bomb.png", png_header_only(100_000, 100_000))
    for config in (image_config(), image_config(max_pixels=10**12)):
        result = fetch(ImageFetcher(config), url)
        assert result.status == "too_large", result


# ---------------------------------------------------------------------------------------------- bad bytes


def test_corrupt_bytes(image_server, image_config) -> None:
    url = image_server.add("/noise.jpg", random.Random(0).randbytes(5000), "image/jpeg")
    result = fetch(ImageFetcher(image_config()), url)
    assert result.status == "not_image" and result.data_url is None


def test_truncated_jpeg(image_server, image_config) -> None:
    whole = product_photo("red", size=(400, 400), image_format="JPEG")
    url = image_server.add("/cut.jpg", whole[: len(whole) // 2], "image/jpeg")
    result = fetch(ImageFetcher(image_config()), url)
    assert result.status == "not_image" and "truncated" in result.error


def test_html_is_not_an_image(image_server, image_config) -> None:
    url = image_server.add("/page.png", b"<!DOCTYPE html><html><body>Sorry</body></html>", "image/png")
    result = fetch(ImageFetcher(image_config()), url)
    assert result.status == "not_image" and "HTML" in result.error


def test_404_is_missing(image_server, image_config) -> None:
    result = fetch(ImageFetcher(image_config()), image_server.url("/nowhere.png"))
    assert result.status == "missing" and "404" in result.error


def test_timeout(image_server, image_config) -> None:
    started = time.monotonic()
    result = fetch(ImageFetcher(image_config(timeout_s=0.3)), image_server.url("/slow?s=2"))
    assert result.status == "timeout"
    assert time.monotonic() - started < 1.5


# ---------------------------------------------------------------------------------------------- safety


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "loopback"), ("127.0.0.2", "loopback"), ("10.0.0.1", "private"), ("172.16.5.4", "private"),
        ("192.168.1.1", "private"), ("169.254.169.254", "cloud metadata"), ("169.254.1.1", "link-local"),
        ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"), ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not a globally routable"), ("::1", "loopback"), ("::", "unspecified"),
        ("fe80::1", "link-local"), ("fc00::1", "private"), ("fd00:ec2::254", "cloud metadata"),
        ("::ffff:10.0.0.1", "private"), ("::ffff:169.254.169.254", "cloud metadata"), ("2002:7f00:1::", "loopback"),
        ("64:ff9b::a00:1", "private"), ("ff02::1", "multicast"),
    ],
)
def test_address_rules(address: str, problem: str) -> None:
    assert problem in (address_problem(address) or "")


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(address) is None


def test_legacy_numeric_hosts_are_read_as_addresses() -> None:
    assert numeric_host("127.1") == numeric_host("2130706433") == numeric_host("0x7f000001") == "127.0.0.1"
    assert numeric_host("images.example.com") is None


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://10.0.0.1/image.png",
        "http://127.0.0.2/image.png",
        "http://2130706433/image.png",
        "http://127.1/image.png",
        "http://[::1]/image.png",
        "http://[::ffff:10.0.0.1]/image.png",
        "http://0.0.0.0/image.png",
    ],
)
def test_private_and_metadata_addresses_are_refused_before_any_connection(url: str, image_config) -> None:
    fetcher = ImageFetcher(image_config())
    with connections_recorded() as seen:
        result = fetch(fetcher, url)
    assert result.status == "refused", result
    assert seen == [] and fetcher._session is None  # no session was even opened


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://images.example.com/a.png", "gopher://x/1",
                                 "data:image/png;base64,AAAA", "/relative/path.png", "http:///no-host.png"])
def test_other_schemes_are_refused(url: str, image_config) -> None:
    result = fetch(ImageFetcher(image_config()), url)
    assert result.status == "refused", result


def test_loopback_is_refused_without_the_allow_list(image_server, image_config) -> None:
    url = image_server.add("/allowed-only.png", product_photo("red"))
    before = image_server.hits("/allowed-only.png")
    assert fetch(ImageFetcher(image_config(allow_hosts=[])), url).status == "refused"
    assert fetch(ImageFetcher(image_config()), url).status == "ok"
    assert image_server.hits("/allowed-only.png") == before + 1


@pytest.mark.parametrize("target", ["http://10.0.0.1/x.png", "http://127.0.0.2/x.png",
                                    "http://169.254.169.254/latest/meta-data/", "file:///etc/passwd"])
def test_redirect_to_a_private_address_is_refused_before_connecting(target: str, image_server, image_config) -> None:
    with connections_recorded() as seen:
        result = fetch(ImageFetcher(image_config()), image_server.url(f"/redirect?to={target}"))
    assert result.status == "refused", result
    assert set(seen) == {"127.0.0.1"}  # only the allowed test server was ever connected to


def test_redirect_to_a_name_that_resolves_to_loopback_is_refused(image_server, image_config) -> None:
    # "localhost" is not on the allow list: the guarded resolver refuses it, so the image is never requested.
    image_server.add("/behind-localhost.png", product_photo("red"))
    target = f"http://localhost:{image_server.port}/behind-localhost.png"
    with connections_recorded() as seen:
        result = fetch(ImageFetcher(image_config()), image_server.url(f"/redirect?to={target}"))
    assert result.status == "refused" and "localhost" in result.error and "loopback" in result.error
    assert image_server.hits("/behind-localhost.png") == 0
    assert len(seen) == 1


# ---------------------------------------------------------------------------------------------- s3


def test_s3_images(s3_server, s3_bucket, image_config) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.put_object(Bucket=s3_bucket, Key="products/red.png", Body=product_photo("red", size=(900, 300)))
    s3.put_object(Bucket=s3_bucket, Key="products/big.png", Body=product_photo("red") + b"\x00" * 100_000)
    s3.put_object(Bucket=s3_bucket, Key="products/page.png", Body=b"<html>not here</html>")
    s3.put_object(Bucket=s3_bucket, Key="products/bomb.png", Body=png_header_only(100_000, 100_000))
    config = image_config(max_bytes=60_000, max_side=300, allow_buckets=[s3_bucket, f"no-such-bucket-{s3_bucket}"])
    fetcher = ImageFetcher(config, s3_endpoint_url=s3_server)

    async def go() -> list[FetchedImage]:
        keys = ("red.png", "missing.png", "big.png", "page.png", "bomb.png")
        return await asyncio.gather(*(fetcher.fetch(f"s3://{s3_bucket}/products/{key}") for key in keys))

    ok, missing, big, page, bomb = asyncio.run(go())
    assert ok.status == "ok" and (ok.width, ok.height) == (300, 100)
    assert decoded(ok).getpixel((150, 50))[0] > 150
    assert missing.status == "missing" and "NoSuchKey" in missing.error
    assert big.status == "too_large"
    assert page.status == "not_image"
    assert bomb.status == "too_large"
    assert fetch(fetcher, f"s3://no-such-bucket-{s3_bucket}/a.png").status == "missing"


def test_s3_endpoint_from_the_environment(s3_server, s3_bucket, image_config) -> None:
    # conftest's s3_server exported AWS_ENDPOINT_URL_S3; no explicit endpoint here.
    boto3.client("s3", endpoint_url=s3_server).put_object(Bucket=s3_bucket, Key="blue.jpg",
                                                          Body=product_photo("blue", image_format="JPEG"))
    assert fetch(ImageFetcher(image_config(allow_buckets=[s3_bucket])), f"s3://{s3_bucket}/blue.jpg").status == "ok"


def test_s3_buckets_not_allowed_are_refused_before_any_request(s3_server, s3_bucket, image_config) -> None:
    """The workers' credentials may read much more than product photos: only buckets named in
    images.allow_buckets are read, an object of any other bucket (readable or not) is refused unread."""
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.put_object(Bucket=s3_bucket, Key="photo.png", Body=product_photo("red"))
    s3.put_object(Bucket=s3_bucket, Key="secrets/db.png", Body=product_photo("blue"))
    for fields in ({}, {"allow_buckets": [f"other-{s3_bucket}"]}):
        fetcher = ImageFetcher(image_config(**fields), s3_endpoint_url=s3_server)
        for url in (f"s3://{s3_bucket}/photo.png", f"s3://{s3_bucket}/secrets/db.png", f"S3://{s3_bucket}/photo.png",
                    f"s3://user@{s3_bucket}/photo.png"):
            result = fetch(fetcher, url)
            assert result.status == "refused" and "images.allow_buckets" in result.error, (url, result)
        assert fetcher._s3 is None  # no S3 client was even made: nothing was read
    allowed = ImageFetcher(image_config(allow_buckets=[s3_bucket]), s3_endpoint_url=s3_server)
    assert fetch(allowed, f"s3://{s3_bucket}/photo.png").status == "ok"
    assert fetch(allowed, f"s3://{s3_bucket}.evil/photo.png").status == "refused"

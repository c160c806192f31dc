"""Safe image fetching: http(s) and s3:// bytes -> a checked, resized JPEG as a base64 data URL.

Every outcome is a `FetchedImage` with a status; `fetch` never raises for one bad URL.

Safety, by default (a host named in `ImageConfig.allow_hosts` skips the address checks):
- only http, https and s3 URLs; redirects are followed by hand, at most `max_redirects`, only to http(s), and
  every hop is checked again;
- a host must resolve only to public addresses: loopback, private, link-local (169.254.0.0/16, the cloud metadata
  address), multicast, reserved, unspecified, shared (100.64/10) and their IPv6 forms (IPv4-mapped, 6to4, NAT64
  included) are refused, before any connection;
- DNS rebinding: names are resolved once, by the connector's resolver (`_GuardedResolver`), which refuses
  the whole name when any address is not public; aiohttp then connects only to the addresses that resolver
  returned, so a second, different answer cannot slip in between the check and the connection. IP literals
  never reach a resolver in aiohttp, so they are checked before the request (legacy forms like `127.1` too);
- no proxies from the environment (`trust_env=False`), no cookies kept between hosts;
- at most `max_bytes` are read (Content-Length first, then counted while streaming, after decompression);
- the declared size is checked against `max_pixels` before any pixel is decoded (decompression bombs), and
  Pillow's own bomb guard is caught; only common raster formats are decoded (no EPS/PostScript, no plugins).
s3:// objects are read with boto3 from the configured endpoint (an operator's choice, not checked against the
address rules), only from buckets named in `ImageConfig.allow_buckets` (none by default: the workers' credentials
may reach much more than product photos, and a fetched image is sent to the LLM endpoint), with the same byte,
pixel and time limits.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import ipaddress
import os
import re
import socket
import threading
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from rae_ray.config import ImageConfig

FetchStatus = Literal["ok", "missing", "refused", "too_large", "not_image", "timeout", "error"]
FETCH_STATUSES: tuple[str, ...] = ("ok", "missing", "refused", "too_large", "not_image", "timeout", "error")
SCHEMES = ("http", "https", "s3")
# Raster formats worth decoding for a product photo; everything else (EPS, PDF, plugins, ...) is not an image here.
DECODE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "AVIF", "BMP", "TIFF")
METADATA_ADDRESSES = frozenset({"169.254.169.254", "fd00:ec2::254"})
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$")
USER_AGENT = "rae-ray-image-fetcher/1"


@dataclass(frozen=True)
class FetchedImage:
    """One URL's outcome. `width`/`height` are those of the JPEG sent on (after resizing)."""

    url: str
    status: FetchStatus
    data_url: str | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None

    @property
    def image_id(self) -> str | None:
        """Hash of the JPEG bytes sent on: identical images share it, whatever their URL."""
        return image_id(self.data_url) if self.data_url else None


class FetchError(Exception):
    """A fetch that ended with a non-ok status; carries the status and a reason."""

    def __init__(self, status: FetchStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RefusedAddress(OSError):
    """A host resolves to an address that images are never fetched from."""


def image_id(data_url: str) -> str:
    """Hash of a data URL's bytes (stable key of an image's content)."""
    return hashlib.sha256(data_url.encode()).hexdigest()[:20]


# ---------------------------------------------------------------------------------------------- address rules


def address_problem(address: str) -> str | None:
    """Why images must not be fetched from this IP address (None: it is public)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"not an IP address: {address!r}"
    if str(ip) in METADATA_ADDRESSES:
        return "cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            problem = address_problem(str(embedded))
            return f"{problem} (embedded in {ip})" if problem else None
    for name, flag in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
    ):
        if flag:
            return f"{name} address"
    if not ip.is_global:
        return "not a globally routable address"
    return None


def numeric_host(host: str) -> str | None:
    """The canonical IP of a host written as an address, legacy IPv4 forms included (`127.1`, `0x7f000001`)."""
    bare = host.strip("[]").rstrip(".")
    try:
        return str(ipaddress.ip_address(bare.split("%", 1)[0]))
    except ValueError:
        pass
    try:
        return socket.inet_ntoa(socket.inet_aton(bare))  # what getaddrinfo would read as a number
    except OSError:
        return None


def _host_key(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


class _GuardedResolver(AbstractResolver):
    """The connector's resolver: one lookup per connection, refused unless every address is public."""

    def __init__(self, allow_hosts: frozenset[str]) -> None:
        self._inner = ThreadedResolver()
        self._allow = allow_hosts

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list:
        results = await self._inner.resolve(host, port, family)
        if _host_key(host) in self._allow:
            return results
        for result in results:
            problem = address_problem(result["host"])
            if problem is not None:
                raise RefusedAddress(f"host {host.rstrip('.')} resolves to {result['host']} ({problem})")
        return results

    async def close(self) -> None:
        await self._inner.close()


# ---------------------------------------------------------------------------------------------- decoding


def encode_image(data: bytes, config: ImageConfig) -> tuple[str, int, int]:
    """Checked bytes -> (JPEG data URL, width, height): pixel limit before decoding, RGB on white, resized."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    Image.init()
    try:
        image = Image.open(io.BytesIO(data), formats=[f for f in DECODE_FORMATS if f in Image.OPEN])
    except Image.DecompressionBombError as error:
        raise FetchError("too_large", f"decompression bomb guard: {error}") from None
    except UnidentifiedImageError:
        raise FetchError("not_image", f"not a decodable image ({_sniff(data)})") from None
    except Exception as error:  # Pillow raises many types for malformed headers
        raise FetchError("not_image", f"corrupt image header: {type(error).__name__}: {error}") from None
    with image:
        width, height = image.size
        if width < 1 or height < 1:
            raise FetchError("not_image", f"image has no pixels ({width}x{height})")
        if width * height > config.max_pixels:
            raise FetchError("too_large", f"{width}x{height} = {width * height} pixels, limit {config.max_pixels}")
        try:
            image.draft("RGB", (config.max_side, config.max_side))  # JPEG: decode at a reduced scale
            image.load()
            rgb = _to_rgb(ImageOps.exif_transpose(image))
        except Image.DecompressionBombError as error:
            raise FetchError("too_large", f"decompression bomb guard: {error}") from None
        except Exception as error:
            reason = f"corrupt or truncated {image.format} image: {type(error).__name__}: {error}"
            raise FetchError("not_image", reason) from None
    rgb.thumbnail((config.max_side, config.max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=config.jpeg_quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode(), rgb.width, rgb.height


def _to_rgb(image: Any) -> Any:
    """RGB; transparent parts become white (product photos are cut out on white, not black)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, "white")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB") if image.mode != "RGB" else image.copy()


def _sniff(data: bytes) -> str:
    head = data[:256].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "looks like HTML"
    if head.startswith((b"{", b"[")):
        return "looks like JSON"
    return f"{len(data)} bytes starting {data[:8].hex()}"


# ---------------------------------------------------------------------------------------------- the fetcher


class ImageFetcher:
    """Fetches images safely; one per actor. `fetch` is a coroutine and never raises for one URL."""

    def __init__(self, config: ImageConfig, s3_endpoint_url: str | None = None, s3_region: str | None = None,
                 decode_concurrency: int = 2) -> None:
        self.config = config
        self.allow_hosts = frozenset(_host_key(h) for h in config.allow_hosts)
        self.allow_buckets = frozenset(config.allow_buckets)
        self.s3_endpoint_url = s3_endpoint_url
        self.s3_region = s3_region
        self.decode_concurrency = decode_concurrency
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._decode_slots: asyncio.Semaphore | None = None
        self._s3: Any = None
        self._s3_lock = threading.Lock()

    # -- public

    async def fetch(self, url: str) -> FetchedImage:
        """One URL -> its outcome: the JPEG data URL when `status == "ok"`, else a status and a reason."""
        try:
            data = await self._download(url)
            async with self._slots():
                data_url, width, height = await asyncio.to_thread(encode_image, data, self.config)
        except FetchError as error:
            return FetchedImage(url=url, status=error.status, error=error.message[:500])
        except Exception as error:  # never fail a batch for one image
            return FetchedImage(url=url, status="error", error=f"{type(error).__name__}: {error}"[:500])
        return FetchedImage(url=url, status="ok", data_url=data_url, width=width, height=height)

    def check_url(self, url: str, redirect: bool = False) -> URL:
        """Scheme, host and (for IP literals) address checks that need no lookup; raises FetchError("refused")."""
        try:
            parsed = URL(url)
        except (ValueError, TypeError) as error:
            raise FetchError("refused", f"not a valid URL: {error}") from None
        schemes = ("http", "https") if redirect else SCHEMES
        if parsed.scheme.lower() not in schemes:
            where = "redirect to" if redirect else "URL with"
            raise FetchError("refused", f"{where} scheme {parsed.scheme or '(none)'!r}: only {', '.join(schemes)}")
        if not parsed.raw_host:
            raise FetchError("refused", "URL has no host")
        if parsed.scheme.lower() == "s3":
            bucket = url[len("s3://"):].partition("/")[0]  # as `_get_s3` reads it: the bucket checked is the one read
            if bucket not in self.allow_buckets:
                raise FetchError("refused", f"s3 bucket {bucket[:100]!r} is not in images.allow_buckets")
            return parsed
        if _host_key(parsed.raw_host) in self.allow_hosts:
            return parsed
        if parsed.user is not None or parsed.password is not None:
            raise FetchError("refused", "URL carries credentials")
        address = numeric_host(parsed.raw_host)
        if address is not None:
            if _host_key(address) in self.allow_hosts:
                return parsed
            problem = address_problem(address)
            if problem is not None:
                raise FetchError("refused", f"host {parsed.raw_host} is a {problem}")
        return parsed

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    # -- internals

    def _bind_loop(self) -> None:
        """The session and semaphore belong to one event loop; a new loop (tests, new actor) gets new ones."""
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._session is not None and not self._session.closed:
            return
        self._loop = loop
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.config.timeout_s, sock_read=self.config.timeout_s)
        connector = aiohttp.TCPConnector(resolver=_GuardedResolver(self.allow_hosts), limit=64, ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT, "Accept": "image/*"},
        )
        self._decode_slots = asyncio.Semaphore(self.decode_concurrency)

    def _slots(self) -> asyncio.Semaphore:
        self._bind_loop()
        assert self._decode_slots is not None
        return self._decode_slots

    async def _download(self, url: str) -> bytes:
        parsed = self.check_url(url)
        try:
            async with asyncio.timeout(self.config.timeout_s):
                if parsed.scheme.lower() == "s3":
                    return await asyncio.to_thread(self._get_s3, url)
                return await self._get_http(parsed)
        except TimeoutError:
            raise FetchError("timeout", f"no complete image within {self.config.timeout_s:g}s") from None

    async def _get_http(self, url: URL) -> bytes:
        self._bind_loop()
        assert self._session is not None
        for _ in range(self.config.max_redirects + 1):
            try:
                async with self._session.get(url, allow_redirects=False) as response:
                    if response.status in _REDIRECTS:
                        location = response.headers.get("Location")
                        if not location:
                            raise FetchError("error", f"HTTP {response.status} redirect without a Location")
                        url = self.check_url(str(response.url.join(URL(location))), redirect=True)
                        continue
                    if response.status in (404, 410):
                        raise FetchError("missing", f"HTTP {response.status} from {url.host}")
                    if response.status != 200:
                        raise FetchError("error", f"HTTP {response.status} from {url.host}")
                    return await self._read_limited(response)
            except aiohttp.ClientConnectorError as error:
                if isinstance(error.os_error, RefusedAddress):
                    raise FetchError("refused", str(error.os_error)) from None
                if isinstance(error, aiohttp.ClientConnectorDNSError):
                    raise FetchError("error", f"cannot resolve host {url.host}: {error.os_error}") from None
                raise FetchError("error", f"cannot connect to {url.host}: {error.os_error}") from None
            except aiohttp.InvalidURL as error:
                raise FetchError("refused", f"invalid URL: {error}") from None
            except aiohttp.ServerTimeoutError:
                raise FetchError("timeout", f"{url.host} did not answer within {self.config.timeout_s:g}s") from None
            except aiohttp.ClientError as error:
                raise FetchError("error", f"{type(error).__name__}: {error}") from None
        raise FetchError("error", f"more than {self.config.max_redirects} redirects")

    async def _read_limited(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self.config.max_bytes
        if response.content_length is not None and response.content_length > limit:
            raise FetchError("too_large", f"Content-Length {response.content_length} bytes, limit {limit}")
        data = bytearray()
        async for chunk in response.content.iter_chunked(_CHUNK):
            data += chunk
            if len(data) > limit:
                raise FetchError("too_large", f"more than {limit} bytes")
        return bytes(data)

    def _s3_client(self) -> Any:
        with self._s3_lock:
            if self._s3 is None:
                import boto3
                from botocore.config import Config

                endpoint = (self.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                            or os.environ.get("AWS_ENDPOINT_URL"))
                timeout = self.config.timeout_s
                self._s3 = boto3.session.Session().client(
                    "s3", endpoint_url=endpoint, region_name=self.s3_region or os.environ.get("AWS_REGION") or None,
                    config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 2}),
                )
            return self._s3

    def _get_s3(self, url: str) -> bytes:
        """Blocking (run in a thread): the object's bytes, within the byte limit."""
        from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError

        bucket, _, key = url[len("s3://"):].partition("/")
        if not _S3_BUCKET.match(bucket) or not key:
            raise FetchError("refused", f"not an s3://bucket/key URL: {url[:200]!r}")
        limit = self.config.max_bytes
        try:
            obj = self._s3_client().get_object(Bucket=bucket, Key=key)
            body = obj["Body"]
            try:
                length = obj.get("ContentLength")
                if length is not None and length > limit:
                    raise FetchError("too_large", f"object is {length} bytes, limit {limit}")
                data = body.read(limit + 1)
            finally:
                body.close()
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "NoSuchBucket", "NotFound", "404") or status == 404:
                raise FetchError("missing", f"s3: {code or status} for {bucket}/{key}"[:500]) from None
            raise FetchError("error", f"s3: {code or status}: {error}"[:500]) from None
        except (ConnectTimeoutError, ReadTimeoutError) as error:
            raise FetchError("timeout", f"s3: {error}") from None
        except BotoCoreError as error:
            raise FetchError("error", f"s3: {type(error).__name__}: {error}") from None
        if len(data) > limit:
            raise FetchError("too_large", f"more than {limit} bytes")
        return data

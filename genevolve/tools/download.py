"""Download images found on the web without letting a URL reach into our own network.

Image URLs come from search results, that is, from strangers. `SafeDownloader.fetch(url)`:

1. accepts http/https URLs without user info only;
2. resolves the host and refuses when any of its addresses is loopback, private, link-local,
   multicast, reserved, unspecified, otherwise not globally routable, or a cloud metadata
   endpoint; then connects to the vetted address itself (Host header and TLS SNI keep the name,
   so certificates are still checked against it), which closes the DNS-rebinding gap between
   the check and the connection;
3. follows redirects by hand (at most `max_redirects`), vetting every hop the same way;
4. refuses a declared Content-Length over `max_bytes` before reading, and stops reading once
   the body passes `max_bytes`;
5. sniffs the first bytes (JPEG, PNG, WebP, GIF, BMP) and stops at once on anything else;
6. reads the pixel size from the image header and refuses more than `max_pixels` before any
   decoding, then verifies the file with Pillow and decodes it fully;
7. keeps the original bytes (no re-encoding: no quality loss, and the hash names the bytes the
   host served) in `cache_dir()/downloads/<sha256>.<ext>`, written atomically, and remembers
   the URL (`downloads/by-url/`) so a rerun reuses the file without touching the network;
   refusals decided by the content (too large, not an image, corrupt, too many pixels) are
   remembered too, while refusals by address policy or by chance (timeouts) are not.

Every refusal raises `DownloadRejected` with a `reason` code, a message, and the number of body
bytes read before the refusal.

Politeness without serialising a batch: at most `max_concurrency` downloads run at once, at most
`per_host_concurrency` of them to one host (by name), and with `per_host_rate` (requests per
second) set, the requests to one host are given start times 1/rate apart and none starts before
its time. No lock is held while a request waits for its turn, so a batch of many agents fetching
from one host runs that host's downloads side by side instead of one after another; a request
waiting for its host holds no global slot, so other hosts go ahead meanwhile.

`allow_hosts` exempts named hosts ("mirror.lan" or "127.0.0.1:8080") from the address rules,
for local mirrors and tests; `allow_private=True` exempts every private and loopback address
(metadata endpoints stay refused unless named in `allow_hosts`). Environment proxies are not
used: through a proxy the address checks would vet the proxy, not the image host.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import ipaddress
import json
import logging
import socket
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterable

import httpx

from ..config import cache_dir
from ..httpretry import LoopLocalClient
from ..jsonio import atomic_write_bytes, atomic_write_json
from ..limits import MAX_DOWNLOAD_BYTES, MAX_DOWNLOAD_PIXELS

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = MAX_DOWNLOAD_BYTES
DEFAULT_MAX_PIXELS = MAX_DOWNLOAD_PIXELS
# Downloads at once in all, and to one host. Four per host stays under the six connections a browser
# opens to one host; in benchmarks/batch_vs_ideal.py (a batch of agents on one loopback host) 1, 4
# and 16 per host gave the same times, so the limit is politeness, not the bottleneck.
DEFAULT_MAX_CONCURRENCY = 16
DEFAULT_PER_HOST_CONCURRENCY = 4
USER_AGENT = "genevolve-image-fetcher/0.1 (+reference images for an image-generation agent)"

# Cloud metadata services: refused by name and by address, even with allow_private=True.
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata",
                            "instance-data", "instance-data.ec2.internal", "metadata.azure.com"})
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",   # AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean
    "169.254.170.2",     # AWS ECS task metadata
    "fd00:ec2::254",     # AWS IPv6
    "100.100.100.200",   # Alibaba Cloud
    "168.63.129.16",     # Azure wire server (a public-looking address)
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

# Magic bytes -> (our format name, Pillow's format name, file extension).
_FORMATS = {"jpeg": ("JPEG", ".jpg"), "png": ("PNG", ".png"), "webp": ("WEBP", ".webp"),
            "gif": ("GIF", ".gif"), "bmp": ("BMP", ".bmp")}
_SNIFF_BYTES = 12


class Reason(StrEnum):
    """Why a download was refused; stable codes for records and counts."""

    INVALID_URL = "invalid_url"
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    BLOCKED_HOST = "blocked_host"            # a metadata host name
    BLOCKED_ADDRESS = "blocked_address"      # the host resolves to a non-public address
    DNS_ERROR = "dns_error"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    BAD_REDIRECT = "bad_redirect"
    HTTP_ERROR = "http_error"
    TOO_LARGE = "too_large"
    NOT_AN_IMAGE = "not_an_image"
    CORRUPT_IMAGE = "corrupt_image"
    TOO_MANY_PIXELS = "too_many_pixels"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"


# Refusals decided by the bytes the host served: remembered per URL, so a rerun does not fetch
# them again. Refusals by policy (addresses) or by chance (timeouts, errors) are not remembered.
_CONTENT_REASONS = frozenset({Reason.TOO_LARGE, Reason.NOT_AN_IMAGE, Reason.CORRUPT_IMAGE,
                              Reason.TOO_MANY_PIXELS})


class DownloadRejected(Exception):
    """A URL that did not yield a safe, valid image. `bytes_read` counts body bytes received."""

    def __init__(self, reason: Reason, message: str, *, url: str = "", bytes_read: int = 0):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.url = url
        self.bytes_read = bytes_read

    def to_dict(self) -> dict[str, object]:
        return {"url": self.url, "reason": str(self.reason), "message": self.message,
                "bytes_read": self.bytes_read}


@dataclass
class Download:
    url: str              # the URL asked for
    final_url: str        # where the image was found after redirects
    path: str             # local file, named by the sha256 of its bytes
    sha256: str
    format: str           # jpeg, png, webp, gif, bmp
    width: int
    height: int
    size_bytes: int
    reused: bool = False  # served from an earlier download of the same URL, without the network


def sniff_image_format(head: bytes) -> str | None:
    """The image format announced by the first bytes, or None when they are not an image's."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head.startswith(b"BM"):
        return "bmp"
    return None


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a connection to `ip` is refused ("loopback", "private", ...), or None if it is public."""
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address reach that address: judge the IPv4 one.
        embedded = ip.ipv4_mapped or ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if embedded is not None:
            return address_problem(embedded)
    for problem, flag in (("loopback", ip.is_loopback), ("unspecified", ip.is_unspecified),
                          ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                          ("reserved", ip.is_reserved), ("private", ip.is_private)):
        if flag:
            return problem
    return None if ip.is_global else "not globally routable"


def inspect_image(data: bytes, fmt: str, max_pixels: int) -> tuple[int, int]:
    """Check the header's pixel count, then verify and fully decode; returns (width, height).

    Pillow only reads the header in `Image.open`, so an oversized image is refused before any
    pixel is decoded. Only the sniffed format's decoder may run. Untrusted bytes can make a
    decoder raise almost anything, hence the broad catch below.
    """
    from PIL import Image

    pil_format = _FORMATS[fmt][0]
    try:
        with Image.open(io.BytesIO(data), formats=[pil_format]) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise DownloadRejected(Reason.TOO_MANY_PIXELS, f"{width}x{height} = {width * height:,} "
                                       f"pixels, over the limit of {max_pixels:,}")
            if width <= 0 or height <= 0:
                raise DownloadRejected(Reason.CORRUPT_IMAGE, f"{pil_format} header declares {width}x{height}")
            im.verify()
        with Image.open(io.BytesIO(data), formats=[pil_format]) as im:
            im.load()
    except DownloadRejected:
        raise
    except Image.DecompressionBombError as exc:   # Pillow's own, higher limit tripped first
        raise DownloadRejected(Reason.TOO_MANY_PIXELS, f"header declares more than {max_pixels:,} "
                               f"pixels ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "not a usable image"
        raise DownloadRejected(Reason.CORRUPT_IMAGE,
                               f"{pil_format} does not decode: {type(exc).__name__}: {exc}") from None
    return width, height


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """All addresses the system resolver gives for host:port, in its order, without repeats."""
    try:
        return [str(ipaddress.ip_address(host))]     # an address literal: no lookup (and no thread)
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


@dataclass
class _Target:
    url: httpx.URL
    host: str     # ASCII (IDNA) host name or address literal, lower case
    port: int


class _LoopState:
    """The parts of a downloader tied to one event loop."""

    def __init__(self, max_concurrency: int):
        self.slots = asyncio.Semaphore(max_concurrency)
        self.host_slots: dict[str, asyncio.Semaphore] = {}
        self.next_start: dict[str, float] = {}     # host -> the earliest start not yet handed out


class SafeDownloader:
    def __init__(self, *, out_dir: str | Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_redirects: int = 5, timeout: float = 30.0,
                 max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
                 per_host_concurrency: int = DEFAULT_PER_HOST_CONCURRENCY, per_host_rate: float | None = None,
                 allow_hosts: Iterable[str] = (), allow_private: bool = False, reuse: bool = True,
                 verify: bool | str = True, resolver: Resolver | None = None, user_agent: str = USER_AGENT):
        """`verify` is passed to httpx (True, a CA bundle path, or an ssl.SSLContext);
        `resolver(host, port) -> [address, ...]` replaces the system resolver (tests, custom DNS);
        `per_host_rate` None or 0 sets no rate."""
        if max_bytes <= 0 or max_pixels <= 0 or max_concurrency <= 0 or max_redirects < 0:
            raise ValueError("max_bytes, max_pixels and max_concurrency must be positive; "
                             "max_redirects must be >= 0")
        if int(per_host_concurrency) < 1:
            raise ValueError(f"per_host_concurrency must be at least 1, got {per_host_concurrency}")
        if per_host_rate is not None and per_host_rate < 0:
            raise ValueError(f"per_host_rate must be positive (requests per second) or unset, "
                             f"got {per_host_rate}")
        self.out_dir = Path(out_dir) if out_dir else cache_dir() / "downloads"
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.max_redirects = max_redirects
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.per_host_concurrency = int(per_host_concurrency)
        self.per_host_rate = float(per_host_rate) if per_host_rate else None
        self.allow_hosts = frozenset(h.strip().lower() for h in allow_hosts if h.strip())
        self.allow_private = allow_private
        self.reuse = reuse
        self.resolver = resolver or system_resolver
        self._client = LoopLocalClient(lambda: httpx.AsyncClient(
            trust_env=False, verify=verify, follow_redirects=False,
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            # No connection reuse: a pooled connection is keyed by address, and one opened with
            # another host's SNI must not carry this host's request.
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"User-Agent": user_agent, "Accept": "image/*",
                     "Accept-Encoding": "identity"}))   # compressed bodies would dodge the size cap
        self._states: dict[asyncio.AbstractEventLoop, _LoopState] = {}

    # ---------------------------------------------------------------- public API

    async def fetch(self, url: str) -> Download:
        """Download and vet one image; raises DownloadRejected with the reason."""
        if self.reuse and (known := self._reuse(url)) is not None:
            return known
        read = [0]   # body bytes received over all hops, for the rejection record
        try:
            data, fmt, final_url = await self._fetch_bytes(url, read)
            width, height = await asyncio.to_thread(inspect_image, data, fmt, self.max_pixels)
        except DownloadRejected as exc:
            exc.url, exc.bytes_read = url, read[0]
            log.info("download refused (%s): %s: %s", exc.reason, url, exc.message)
            if self.reuse and exc.reason in _CONTENT_REASONS:
                await asyncio.to_thread(atomic_write_json, self._index_path(url),
                                        {"rejected": exc.to_dict(), "limits": self._limits()})
            raise
        # Off the event loop: the atomic writes wait for the disk (fsync), and every agent of a
        # batch shares this loop.
        return await asyncio.to_thread(self._store, url, final_url, data, fmt, width, height)

    async def fetch_many(self, urls: Iterable[str]) -> list[Download | DownloadRejected]:
        """Fetch several URLs concurrently (within the bounds); results keep the input order."""
        async def one(u: str) -> Download | DownloadRejected:
            try:
                return await self.fetch(u)
            except DownloadRejected as exc:
                return exc
        return list(await asyncio.gather(*(one(u) for u in urls)))

    async def aclose(self) -> None:
        await self._client.aclose()

    # ---------------------------------------------------------------- vetting

    def _check_url(self, url: str) -> _Target:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise DownloadRejected(Reason.INVALID_URL, f"not a valid URL ({exc})") from None
        if parsed.scheme not in ("http", "https"):
            raise DownloadRejected(Reason.UNSUPPORTED_SCHEME,
                                   f"only http and https are fetched, not '{parsed.scheme or '(none)'}'")
        if parsed.userinfo:
            raise DownloadRejected(Reason.INVALID_URL, "URLs with user names or passwords are not fetched")
        host = parsed.raw_host.decode("ascii").lower().rstrip(".")
        if not host:
            raise DownloadRejected(Reason.INVALID_URL, "the URL has no host")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        return _Target(parsed, host, port)

    def _allowed(self, t: _Target) -> bool:
        return bool(self.allow_hosts & {t.host, f"{t.host}:{t.port}", f"[{t.host}]:{t.port}"})

    async def _vetted_addresses(self, t: _Target) -> list[str]:
        allowed = self._allowed(t)
        if t.host in METADATA_HOSTS and not allowed:
            raise DownloadRejected(Reason.BLOCKED_HOST, f"{t.host} is a cloud metadata service")
        try:
            addresses = await self.resolver(t.host, t.port)
        except (OSError, UnicodeError) as exc:
            raise DownloadRejected(Reason.DNS_ERROR, f"cannot resolve {t.host}: {exc}") from None
        if not addresses:
            raise DownloadRejected(Reason.DNS_ERROR, f"{t.host} has no address")
        if allowed:
            return addresses
        for text in addresses:
            ip = ipaddress.ip_address(text.split("%", 1)[0])   # drop an IPv6 zone id
            problem = address_problem(ip)
            if problem is None or (self.allow_private and problem != "cloud metadata"):
                continue
            named = t.host if t.host == text else f"{t.host} resolves to {text}, which"
            hint = "" if problem == "cloud metadata" else (
                f"; add '{t.host}:{t.port}' to allow_hosts to fetch from it on purpose")
            raise DownloadRejected(Reason.BLOCKED_ADDRESS, f"{named} is a {problem} address{hint}")
        return addresses

    # ---------------------------------------------------------------- network

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            self._states = {l: s for l, s in self._states.items() if not l.is_closed()}
            state = self._states[loop] = _LoopState(self.max_concurrency)
        return state

    @contextlib.asynccontextmanager
    async def _slot(self, host: str) -> AsyncIterator[None]:
        """Wait for one of this host's slots, then its start time (with a rate), then a global slot.

        The global slot comes last so that a request held back by its host's limit or rate never
        keeps a request to another host waiting.
        """
        state, loop = self._state(), asyncio.get_running_loop()
        host_slots = state.host_slots.setdefault(host, asyncio.Semaphore(self.per_host_concurrency))
        async with host_slots:
            if self.per_host_rate:
                # Hand out the next start time and move the mark at once; the sleep holds no lock.
                start = max(loop.time(), state.next_start.get(host, 0.0))
                state.next_start[host] = start + 1.0 / self.per_host_rate
                if start > loop.time():
                    await asyncio.sleep(start - loop.time())
            async with state.slots:
                yield

    async def _fetch_bytes(self, url: str, read: list[int]) -> tuple[bytes, str, str]:
        loop = asyncio.get_running_loop()
        budget = self.timeout
        for _hop in range(self.max_redirects + 1):
            target = self._check_url(url)
            started = loop.time()
            try:
                # Vet first: a refused host costs no slot and no polite wait.
                async with asyncio.timeout(budget):
                    addresses = await self._vetted_addresses(target)
                budget -= loop.time() - started
                async with self._slot(target.host):
                    started = loop.time()
                    async with asyncio.timeout(budget):
                        outcome = await self._request(target, addresses, read)
                    budget -= loop.time() - started
            except TimeoutError:
                raise DownloadRejected(Reason.TIMEOUT, f"no complete answer within {self.timeout:g}s") from None
            if isinstance(outcome, str):        # a redirect: vet and follow the next hop
                url = outcome
                continue
            data, fmt = outcome
            return data, fmt, url
        raise DownloadRejected(Reason.TOO_MANY_REDIRECTS, f"more than {self.max_redirects} redirects")

    async def _request(self, t: _Target, addresses: list[str], read: list[int]) -> str | tuple[bytes, str]:
        """One GET to the vetted address: the redirect target URL, or (body, format)."""
        client = self._client.get()
        headers = {"Host": t.url.netloc.decode("ascii")}
        extensions = {"sni_hostname": t.host} if t.url.scheme == "https" else {}
        last_error: Exception | None = None
        for address in addresses:           # the next address only if this one cannot connect
            pinned = t.url.copy_with(host=address.split("%", 1)[0])
            request = client.build_request("GET", pinned, headers=headers, extensions=extensions)
            try:
                response = await client.send(request, stream=True)
            except httpx.ConnectError as exc:
                last_error = exc
                continue
            except httpx.TimeoutException:
                raise DownloadRejected(Reason.TIMEOUT, f"{t.host} did not answer in time") from None
            except httpx.InvalidURL as exc:
                # httpx works out the next hop of any redirect even when not following it, and some
                # malformed Location values ("http:host:port/x") fail there, outside its HTTPError family.
                raise DownloadRejected(Reason.BAD_REDIRECT, f"{t.host} sent an unusable Location: {exc}") from None
            except httpx.HTTPError as exc:
                raise DownloadRejected(Reason.CONNECTION_ERROR, f"{t.host}: {type(exc).__name__}: {exc}") from None
            try:
                return await self._read_response(t, response, read)
            finally:
                await response.aclose()
        raise DownloadRejected(Reason.CONNECTION_ERROR, f"cannot connect to {t.host}: {last_error}")

    async def _read_response(self, t: _Target, response: httpx.Response,
                             read: list[int]) -> str | tuple[bytes, str]:
        status = response.status_code
        if status in (301, 302, 303, 307, 308):
            location = response.headers.get("location")
            if not location:
                raise DownloadRejected(Reason.BAD_REDIRECT, f"HTTP {status} without a Location header")
            try:
                return str(t.url.join(location))
            except httpx.InvalidURL as exc:
                raise DownloadRejected(Reason.BAD_REDIRECT, f"unusable Location {location!r}: {exc}") from None
        if status != 200:
            raise DownloadRejected(Reason.HTTP_ERROR, f"HTTP {status} {response.reason_phrase}".rstrip())
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise DownloadRejected(Reason.TOO_LARGE, f"Content-Length {int(declared):,} bytes is over "
                                   f"the limit of {self.max_bytes:,}")
        body = bytearray()
        fmt: str | None = None
        try:
            async for chunk in response.aiter_raw():
                body += chunk
                read[0] += len(chunk)
                if len(body) > self.max_bytes:
                    raise DownloadRejected(Reason.TOO_LARGE, f"body passed the limit of {self.max_bytes:,} bytes")
                if fmt is None and len(body) >= _SNIFF_BYTES:
                    fmt = self._sniff(body, response)
        except httpx.TimeoutException:
            raise DownloadRejected(Reason.TIMEOUT, f"{t.host} stalled while sending the body") from None
        except httpx.HTTPError as exc:
            raise DownloadRejected(Reason.CONNECTION_ERROR,
                                   f"body cut off after {len(body):,} bytes: {type(exc).__name__}") from None
        if fmt is None:
            fmt = self._sniff(body, response)
        return bytes(body), fmt

    @staticmethod
    def _sniff(body: bytearray, response: httpx.Response) -> str:
        fmt = sniff_image_format(bytes(body[:_SNIFF_BYTES]))
        if fmt is None:
            kind = response.headers.get("content-type", "no Content-Type").split(";")[0].strip()
            raise DownloadRejected(Reason.NOT_AN_IMAGE, f"content is not JPEG/PNG/WebP/GIF/BMP "
                                   f"(served as {kind}; starts with {bytes(body[:8])!r})")
        return fmt

    # ---------------------------------------------------------------- storage

    def _index_path(self, url: str) -> Path:
        return self.out_dir / "by-url" / f"{hashlib.sha256(url.encode('utf-8')).hexdigest()}.json"

    def _limits(self) -> dict[str, int]:
        return {"max_bytes": self.max_bytes, "max_pixels": self.max_pixels}

    def _reuse(self, url: str) -> Download | None:
        """The earlier outcome for this URL: its file, or (raised again) its content rejection."""
        try:
            record = json.loads(self._index_path(url).read_text("utf-8"))
            if "rejected" in record:
                self._raise_if_still_rejected(record)
                return None
            known = Download(**record)
        except (OSError, ValueError, TypeError, KeyError):
            return None
        path = Path(known.path)
        if not path.is_file() or path.stat().st_size != known.size_bytes:
            return None
        known.reused = True
        return known

    def _raise_if_still_rejected(self, record: dict) -> None:
        """Raise a remembered rejection again if the current limits would reach it too."""
        rejected, limits = record["rejected"], record["limits"]
        reason = Reason(rejected["reason"])
        if (reason == Reason.TOO_LARGE and self.max_bytes > limits["max_bytes"]
                or reason == Reason.TOO_MANY_PIXELS and self.max_pixels > limits["max_pixels"]):
            return          # a looser limit now: try again
        raise DownloadRejected(reason, rejected["message"] + " (remembered from an earlier download)",
                               url=rejected["url"], bytes_read=0)

    def _store(self, url: str, final_url: str, data: bytes, fmt: str, width: int, height: int) -> Download:
        digest = hashlib.sha256(data).hexdigest()
        path = self.out_dir / f"{digest}{_FORMATS[fmt][1]}"
        if not (path.is_file() and path.stat().st_size == len(data)):
            atomic_write_bytes(path, data)
        result = Download(url=url, final_url=final_url, path=str(path), sha256=digest, format=fmt,
                          width=width, height=height, size_bytes=len(data))
        if self.reuse:
            atomic_write_json(self._index_path(url), asdict(result))
        return result

"""SafeDownloader against a loopback image host serving good images and hostile ones."""

from __future__ import annotations

import asyncio
import sys
import hashlib
import ipaddress
import shutil
import ssl
from pathlib import Path
from urllib.parse import quote

import pytest
from PIL import Image

from fakes import FakeServer, make_self_signed_cert
from fakes.image_host import GOOD_SIZE, ImageHostFake
from genevolve.tools.download import (DEFAULT_MAX_BYTES, DEFAULT_PER_HOST_CONCURRENCY, Download, DownloadRejected,
                                      Reason, SafeDownloader, address_problem, sniff_image_format)

MB = 1024 * 1024
CAP = 4 * MB


@pytest.fixture
def internal():
    """Another loopback service, standing for something on our own network a redirect aims at."""
    with FakeServer() as server:
        yield server


@pytest.fixture
def host(internal: FakeServer):
    with ImageHostFake(internal_url=internal.url + "/secret") as server:
        yield server


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "downloads"


def make(host: ImageHostFake, out_dir: Path, **kw) -> SafeDownloader:
    options = {"allow_hosts": [host.host_port], "max_bytes": CAP, "reuse": False}
    return SafeDownloader(out_dir=out_dir, **{**options, **kw})


async def fetch_all(downloader: SafeDownloader, urls: list[str]) -> list[Download | DownloadRejected]:
    try:
        return await downloader.fetch_many(urls)
    finally:
        await downloader.aclose()


def fetch(downloader: SafeDownloader, url: str) -> Download | DownloadRejected:
    return asyncio.run(fetch_all(downloader, [url]))[0]


def stored_files(out_dir: Path) -> list[Path]:
    return [p for p in out_dir.rglob("*") if p.is_file()] if out_dir.exists() else []


# ------------------------------------------------------------------------------ accepted

@pytest.mark.parametrize("path, fmt", [("/good.jpg", "jpeg"), ("/good.png", "png"), ("/good.webp", "webp"),
                                       ("/good.gif", "gif"), ("/mislabeled.jpg", "png")])
def test_good_images_are_kept_byte_for_byte_under_their_hash(host, out_dir, path, fmt):
    result = fetch(make(host, out_dir), host.url + path)
    assert isinstance(result, Download), result
    served = host.files[path][0]
    assert result.format == fmt and (result.width, result.height) == GOOD_SIZE
    assert result.sha256 == hashlib.sha256(served).hexdigest() and result.size_bytes == len(served)
    assert Path(result.path) == out_dir / f"{result.sha256}{Path(result.path).suffix}"
    assert Path(result.path).read_bytes() == served
    assert [p.name for p in stored_files(out_dir)] == [Path(result.path).name]   # no temp files left
    with Image.open(result.path) as im:
        im.load()


def test_a_redirect_within_the_allowed_host_is_followed(host, out_dir):
    result = fetch(make(host, out_dir), host.url + "/redirect-good")
    assert isinstance(result, Download)
    assert result.final_url == host.url + "/good.jpg" and result.url == host.url + "/redirect-good"


# ------------------------------------------------------------------------------ hostile

HOSTILE = [
    ("/huge.jpg", Reason.TOO_LARGE, "passed the limit"),
    ("/huge-declared.jpg", Reason.TOO_LARGE, "Content-Length 2,147,483,648"),
    ("/page.html", Reason.NOT_AN_IMAGE, "served as text/html"),
    ("/fake.png", Reason.NOT_AN_IMAGE, "served as image/png"),
    ("/truncated.jpg", Reason.CORRUPT_IMAGE, "truncated"),
    ("/bomb.png", Reason.TOO_MANY_PIXELS, "more than 40,000,000"),
    ("/large.png", Reason.TOO_MANY_PIXELS, "8000x8000 = 64,000,000 pixels"),
    ("/redirect-loopback", Reason.BLOCKED_ADDRESS, "loopback"),
    ("/redirect-metadata", Reason.BLOCKED_ADDRESS, "169.254.169.254 is a cloud metadata address"),
    ("/redirect-loop/0", Reason.TOO_MANY_REDIRECTS, "more than 5 redirects"),
    ("/missing.jpg", Reason.HTTP_ERROR, "HTTP 404"),
]


@pytest.mark.parametrize("path, reason, words", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_urls_are_refused_with_a_reason(host, internal, out_dir, path, reason, words):
    result = fetch(make(host, out_dir), host.url + path)
    assert isinstance(result, DownloadRejected), result
    assert result.reason == reason and words in result.message
    assert result.to_dict()["reason"] == str(reason) and result.url == host.url + path
    assert stored_files(out_dir) == []                # nothing written, not even a temp file
    assert internal.requests == []                    # the redirect target was never contacted


def test_a_2gb_stream_is_cut_off_after_the_cap_and_never_read_whole(host, out_dir):
    result = fetch(make(host, out_dir), host.url + "/huge.jpg")
    assert result.reason == Reason.TOO_LARGE
    assert CAP < result.bytes_read <= CAP + MB
    assert host.requests_to("/huge.jpg")[0].bytes_sent < 64 * MB      # the server stopped early too


def test_a_declared_oversize_length_is_refused_before_reading(host, out_dir):
    result = fetch(make(host, out_dir), host.url + "/huge-declared.jpg")
    assert result.reason == Reason.TOO_LARGE and result.bytes_read == 0


def test_non_images_and_bombs_are_refused_after_their_first_bytes(host, out_dir):
    page, bomb = asyncio.run(fetch_all(make(host, out_dir), [host.url + "/page.html", host.url + "/bomb.png"]))
    assert page.bytes_read == len(host.files["/page.html"][0]) < 200
    assert bomb.bytes_read == len(host.files["/bomb.png"][0]) < 200


def test_the_redirect_hop_is_vetted_even_when_the_first_hop_is_allowed(host, internal, out_dir):
    # Allow both services by name: the redirect is then followed, which proves the refusal above
    # came from vetting the second hop and not from a broken redirect.
    result = fetch(make(host, out_dir, allow_hosts=[host.host_port, internal.host_port]),
                   host.url + "/redirect-loopback")
    assert isinstance(result, DownloadRejected) and result.reason == Reason.HTTP_ERROR
    assert [r.path for r in internal.requests] == ["/secret"]


# Redirect targets an allowed image host can send us to (the host is allowed by name and port; its
# redirect points elsewhere). `{internal}` is the port of another loopback service that stands for
# our own network: no case may reach it. Names ending in .test resolve as the table in `ssrf_resolver`.
SSRF_REDIRECTS = [
    ("file:///etc/passwd", Reason.UNSUPPORTED_SCHEME),
    ("ftp://example.org/a.jpg", Reason.UNSUPPORTED_SCHEME),
    ("gopher://127.0.0.1:{internal}/_x", Reason.UNSUPPORTED_SCHEME),
    ("http://internal.test:{internal}/secret", Reason.BLOCKED_ADDRESS),       # a name for loopback
    ("http://intranet.test/secret", Reason.BLOCKED_ADDRESS),                  # a name for 10.0.0.5
    ("http://rebind.test:{internal}/secret", Reason.BLOCKED_ADDRESS),         # public and private at once
    ("http://[::1]:{internal}/secret", Reason.BLOCKED_ADDRESS),
    ("http://[fe80::1]/secret", Reason.BLOCKED_ADDRESS),
    ("http://[fd12:3456:789a::1]/secret", Reason.BLOCKED_ADDRESS),
    ("http://[::ffff:127.0.0.1]:{internal}/secret", Reason.BLOCKED_ADDRESS),  # IPv4-mapped loopback
    ("http://v6-loopback.test:{internal}/secret", Reason.BLOCKED_ADDRESS),
    ("http://v6-ula.test/secret", Reason.BLOCKED_ADDRESS),
    ("http://v6-linklocal.test/secret", Reason.BLOCKED_ADDRESS),
    ("http://v6-mapped.test:{internal}/secret", Reason.BLOCKED_ADDRESS),
    ("http://metadata.test/latest/meta-data/", Reason.BLOCKED_ADDRESS),
    ("//127.0.0.1:{internal}/secret", Reason.BLOCKED_ADDRESS),                # scheme-relative, other port
    ("//internal.test:{internal}/secret", Reason.BLOCKED_ADDRESS),
    ("http://localhost:{internal}/secret", Reason.BLOCKED_ADDRESS),
    ("http://127.0.0.1.:{internal}/secret", Reason.BLOCKED_ADDRESS),          # trailing dot
    ("http://user:pw@example.org/a.jpg", Reason.INVALID_URL),
    ("http:127.0.0.1:{internal}/secret", Reason.BAD_REDIRECT),               # scheme, no slashes
    ("http://[::1", None),                                                     # unparsable: any refusal
]


async def table_resolver(host: str, port: int) -> list[str]:
    """Test names from a table; an address literal as itself; localhost as loopback."""
    table = {"localhost": ["127.0.0.1", "::1"], "internal.test": ["127.0.0.1"], "intranet.test": ["10.0.0.5"],
             "rebind.test": ["93.184.216.34", "127.0.0.1"], "v6-loopback.test": ["::1"],
             "v6-ula.test": ["fd00::5"], "v6-linklocal.test": ["fe80::1%1"], "v6-mapped.test": ["::ffff:127.0.0.1"],
             "metadata.test": ["169.254.169.254"]}
    if host in table:
        return table[host]
    ipaddress.ip_address(host.split("%", 1)[0])            # raises ValueError for an unknown name
    return [host]


def redirect_url(host: ImageHostFake, target: str, status: int = 302) -> str:
    return f"{host.url}/redirect?to={quote(target, safe='')}&status={status}"


@pytest.mark.parametrize("target, reason", SSRF_REDIRECTS, ids=[t for t, _ in SSRF_REDIRECTS])
def test_a_redirect_from_an_allowed_host_cannot_reach_elsewhere(host, internal, out_dir, target, reason):
    target = target.format(internal=internal.port)
    downloader = make(host, out_dir, resolver=table_resolver)
    result = fetch(downloader, redirect_url(host, target))
    assert isinstance(result, DownloadRejected), result
    assert reason is None or result.reason == reason, result.message
    if "::ffff:127.0.0.1" in target:          # judged as the IPv4 address it carries
        assert "loopback address" in result.message
    assert internal.requests == [] and stored_files(out_dir) == []
    assert [r.path for r in host.requests] == ["/redirect"]          # nothing else was fetched either


@pytest.mark.parametrize("status", [301, 303, 307, 308])
def test_every_redirect_status_is_vetted(host, internal, out_dir, status):
    target = f"http://internal.test:{internal.port}/secret"
    result = fetch(make(host, out_dir, resolver=table_resolver), redirect_url(host, target, status))
    assert isinstance(result, DownloadRejected) and result.reason == Reason.BLOCKED_ADDRESS
    assert internal.requests == []


def test_hostile_redirects_with_the_system_resolver(host, internal, out_dir):
    """Numeric spellings of loopback that only a resolver turns into an address."""
    for target in (f"http://2130706433:{internal.port}/secret", f"http://0x7f.1:{internal.port}/secret",
                   f"http://LOCALHOST:{internal.port}/secret"):
        result = fetch(make(host, out_dir), redirect_url(host, target))
        assert isinstance(result, DownloadRejected) and result.reason in (Reason.BLOCKED_ADDRESS, Reason.DNS_ERROR), \
            (target, result)
    assert internal.requests == []


@pytest.mark.parametrize("target", ["/good.jpg", "good.jpg", "../good.jpg", "./good.jpg?x=1",
                                    "{host}/good.jpg"])
def test_relative_redirects_stay_on_the_allowed_host(host, internal, out_dir, target):
    result = fetch(make(host, out_dir), redirect_url(host, target.format(host=host.url)))
    assert isinstance(result, Download), result
    assert result.final_url.startswith(host.url + "/good.jpg")
    assert internal.requests == []


@pytest.mark.parametrize("target", ["/\\127.0.0.1:{internal}/secret", "\\\\127.0.0.1:{internal}/secret",
                                    "http:/127.0.0.1:{internal}/secret"])
def test_backslash_and_malformed_relative_redirects_are_paths_on_the_same_host(host, internal, out_dir, target):
    """Browsers read some of these as another host; here they are paths on the allowed host (404)."""
    result = fetch(make(host, out_dir), redirect_url(host, target.format(internal=internal.port)))
    assert isinstance(result, DownloadRejected) and result.reason == Reason.HTTP_ERROR, result
    assert internal.requests == [] and len(host.requests) == 2


def test_loopback_is_refused_without_the_allow_list(host, out_dir):
    result = fetch(SafeDownloader(out_dir=out_dir), host.url + "/good.jpg")
    assert isinstance(result, DownloadRejected) and result.reason == Reason.BLOCKED_ADDRESS
    assert "127.0.0.1 is a loopback address" in result.message and f"'{host.host_port}'" in result.message
    assert host.requests == []                        # refused before connecting


def test_the_allow_list_is_per_port(host, internal, out_dir):
    result = fetch(SafeDownloader(out_dir=out_dir, allow_hosts=[internal.host_port]), host.url + "/good.jpg")
    assert result.reason == Reason.BLOCKED_ADDRESS and host.requests == []


def test_allow_private_opens_loopback_but_never_metadata(host, out_dir):
    downloader = SafeDownloader(out_dir=out_dir, allow_private=True, reuse=False)
    good, metadata = asyncio.run(fetch_all(downloader, [host.url + "/good.png", host.url + "/redirect-metadata"]))
    assert isinstance(good, Download)
    assert metadata.reason == Reason.BLOCKED_ADDRESS and "cloud metadata" in metadata.message


@pytest.mark.parametrize("url, reason", [
    ("file:///etc/passwd", Reason.UNSUPPORTED_SCHEME),
    ("ftp://example.org/a.jpg", Reason.UNSUPPORTED_SCHEME),
    ("data:image/png;base64,iVBORw0KGgo=", Reason.UNSUPPORTED_SCHEME),
    ("http://user:pass@example.org/a.jpg", Reason.INVALID_URL),
    ("http:///a.jpg", Reason.INVALID_URL),
    ("http://metadata.google.internal/computeMetadata/v1/", Reason.BLOCKED_HOST),
    ("http://[::1]:8080/a.jpg", Reason.BLOCKED_ADDRESS),
    ("http://[::ffff:169.254.169.254]/latest", Reason.BLOCKED_ADDRESS),
    ("http://0.0.0.0:80/a.jpg", Reason.BLOCKED_ADDRESS),
])
def test_urls_refused_before_any_connection(out_dir, url, reason):
    result = fetch(SafeDownloader(out_dir=out_dir), url)
    assert isinstance(result, DownloadRejected) and result.reason == reason, result


@pytest.mark.parametrize("address, problem", [
    ("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("172.16.0.9", "private"), ("192.168.1.1", "private"),
    ("169.254.10.10", "link-local"), ("169.254.169.254", "cloud metadata"), ("224.0.0.251", "multicast"),
    ("0.0.0.0", "unspecified"), ("240.0.0.1", "reserved"), ("100.64.0.1", "not globally routable"),
    ("100.100.100.200", "cloud metadata"), ("168.63.129.16", "cloud metadata"),
    ("::1", "loopback"), ("fe80::1", "link-local"), ("fc00::1", "private"), ("ff02::1", "multicast"),
    ("::", "unspecified"), ("fd00:ec2::254", "cloud metadata"), ("::ffff:10.0.0.1", "private"),
    ("2002:7f00:1::", "loopback"), ("64:ff9b::a00:1", "private"),
    ("93.184.216.34", None), ("2606:4700:4700::1111", None),
])
def test_address_classes(address, problem):
    assert address_problem(ipaddress.ip_address(address)) == problem


def test_every_resolved_address_must_be_public(out_dir):
    async def resolver(host: str, port: int) -> list[str]:
        return {"mixed.example": ["93.184.216.34", "10.0.0.7"], "meta.example": ["169.254.169.254"]}[host]
    downloader = SafeDownloader(out_dir=out_dir, resolver=resolver)
    mixed, meta = asyncio.run(fetch_all(downloader, ["http://mixed.example/a.jpg", "http://meta.example/a.jpg"]))
    assert mixed.reason == Reason.BLOCKED_ADDRESS and "resolves to 10.0.0.7" in mixed.message
    assert meta.reason == Reason.BLOCKED_ADDRESS and "cloud metadata" in meta.message


def test_an_unresolvable_host_is_a_dns_error(out_dir):
    result = fetch(SafeDownloader(out_dir=out_dir), "http://no-such-host.invalid/a.jpg")
    assert result.reason == Reason.DNS_ERROR


def test_the_connection_goes_to_the_vetted_address_with_the_original_host_header(host, out_dir):
    asked: list[tuple[str, int]] = []

    async def resolver(name: str, port: int) -> list[str]:
        asked.append((name, port))
        return ["127.0.0.1"]
    downloader = make(host, out_dir, allow_hosts=["images.test"], resolver=resolver)
    result = fetch(downloader, f"http://images.test:{host.port}/good.jpg")
    assert isinstance(result, Download), result
    assert asked == [("images.test", host.port)]       # resolved once, and that answer was used
    assert host.requests[0].headers["host"] == f"images.test:{host.port}"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"), "images.test")


def test_https_keeps_sni_and_checks_the_certificate_against_the_name(certificate, out_dir):
    async def resolver(name: str, port: int) -> list[str]:
        return ["127.0.0.1"]
    trust = ssl.create_default_context(cafile=certificate[0])
    with ImageHostFake(tls=certificate) as tls_host:
        url = f"https://images.test:{tls_host.port}/good.jpg"
        good = fetch(make(tls_host, out_dir, allow_hosts=["images.test"], resolver=resolver, verify=trust), url)
        assert isinstance(good, Download), good
        assert tls_host.requests[0].headers["host"] == f"images.test:{tls_host.port}"
        # The same server reached under another name: its certificate does not match, so no image.
        other = f"https://other.test:{tls_host.port}/good.jpg"
        wrong = fetch(make(tls_host, out_dir, allow_hosts=["other.test"], resolver=resolver, verify=trust), other)
        assert isinstance(wrong, DownloadRejected) and wrong.reason == Reason.CONNECTION_ERROR
        assert len(tls_host.requests) == 1


# ------------------------------------------------------------------------------ limits and reuse

def test_concurrent_downloads_are_bounded(host, out_dir):
    urls = [f"{host.url}/slow.jpg?n={i}" for i in range(6)]
    results = asyncio.run(fetch_all(make(host, out_dir, max_concurrency=2), urls))
    assert all(isinstance(r, Download) for r in results)
    assert host.max_in_flight == 2


def test_one_host_gets_its_limit_of_downloads_side_by_side_not_one_after_another(host, out_dir):
    urls = [f"{host.url}/slow.jpg?n={i}" for i in range(8)]
    results = asyncio.run(fetch_all(make(host, out_dir), urls))        # the defaults
    assert all(isinstance(r, Download) for r in results)
    assert host.max_in_flight == DEFAULT_PER_HOST_CONCURRENCY > 1
    host.max_in_flight = 0
    asyncio.run(fetch_all(make(host, out_dir, per_host_concurrency=2), urls))
    assert host.max_in_flight == 2


async def resolve_test_names(host: str, port: int) -> list[str]:
    """*.test names on loopback (as two sites on one machine would be); anything else as itself."""
    return ["127.0.0.1"] if host.endswith(".test") else [host]


def test_the_per_host_concurrency_counts_by_name_and_spares_other_hosts(host, out_dir):
    downloader = make(host, out_dir, per_host_concurrency=1, allow_hosts=["a.test", "b.test"],
                      resolver=resolve_test_names)
    urls = [f"http://a.test:{host.port}/slow.jpg?n={i}" for i in range(3)] + [f"http://b.test:{host.port}/good.jpg"]
    results = asyncio.run(fetch_all(downloader, urls))
    assert all(isinstance(r, Download) for r in results)
    assert host.max_in_flight == 2                                    # one per name
    order = [r.headers["host"].split(":")[0] for r in host.requests]
    assert order.index("b.test") < 2, order                            # b did not queue behind a's line


def test_requests_to_one_host_are_spaced_out_by_the_rate(host, out_dir, monkeypatch):
    """The start times the downloader hands out are 1/rate apart (checked on the times it plans,
    not on arrival times, which carry the machine's load)."""
    planned: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(seconds: float) -> None:
        if sys._getframe(1).f_code.co_name == "_slot":        # the downloader's rate wait only
            planned.append(asyncio.get_running_loop().time() + seconds)
        await real_sleep(seconds)
    monkeypatch.setattr("genevolve.tools.download.asyncio.sleep", recording_sleep)
    urls = [f"{host.url}/good.png?n={i}" for i in range(3)]
    results = asyncio.run(fetch_all(make(host, out_dir, per_host_rate=1 / 0.3), urls))
    assert all(isinstance(r, Download) for r in results) and len(host.requests) == 3
    assert len(planned) == 2 and planned[1] - planned[0] == pytest.approx(0.3, abs=0.01)


def test_a_host_waiting_for_its_rate_does_not_hold_up_other_hosts(host, out_dir):
    downloader = make(host, out_dir, per_host_rate=2.0, allow_hosts=["a.test", "b.test"],
                      resolver=resolve_test_names)
    urls = [f"http://a.test:{host.port}/good.png?n={i}" for i in range(3)] + [f"http://b.test:{host.port}/good.jpg"]
    asyncio.run(fetch_all(downloader, urls))
    order = [r.headers["host"].split(":")[0] for r in host.requests]
    assert order.index("b.test") < 2, order                            # b went while a's second waited


def test_a_slow_host_times_out(out_dir):
    with ImageHostFake(slow_delay=2.0) as slow_host:
        result = fetch(make(slow_host, out_dir, timeout=0.3), slow_host.url + "/slow.jpg")
    assert result.reason == Reason.TIMEOUT


def test_a_closed_port_is_a_connection_error(out_dir):
    closed = FakeServer().start()
    url, allowed = closed.url + "/a.jpg", closed.host_port
    closed.stop()
    result = fetch(SafeDownloader(out_dir=out_dir, allow_hosts=[allowed]), url)
    assert result.reason == Reason.CONNECTION_ERROR


def test_a_rerun_reuses_files_and_content_refusals_without_the_network(host, out_dir):
    urls = [host.url + "/good.jpg", host.url + "/page.html", host.url + "/redirect-metadata"]
    first = asyncio.run(fetch_all(make(host, out_dir, reuse=True), urls))
    sent = len(host.requests)
    again = asyncio.run(fetch_all(make(host, out_dir, reuse=True), urls))
    assert again[0].reused and again[0].path == first[0].path
    assert again[1].reason == Reason.NOT_AN_IMAGE and "remembered" in again[1].message
    assert again[2].reason == Reason.BLOCKED_ADDRESS
    # Only the metadata redirect's first hop is asked again: address refusals are not remembered.
    assert len(host.requests) == sent + 1
    Path(first[0].path).unlink()                       # a missing file is fetched again
    assert not asyncio.run(fetch_all(make(host, out_dir, reuse=True), urls[:1]))[0].reused


def test_a_looser_limit_retries_a_remembered_size_refusal(host, out_dir):
    small = fetch(make(host, out_dir, reuse=True, max_bytes=1000), host.url + "/good.jpg")
    assert small.reason == Reason.TOO_LARGE
    assert isinstance(fetch(make(host, out_dir, reuse=True), host.url + "/good.jpg"), Download)


def test_one_downloader_serves_several_event_loops(host, out_dir):
    downloader = make(host, out_dir, max_concurrency=1)
    assert isinstance(asyncio.run(downloader.fetch(host.url + "/good.jpg")), Download)
    assert isinstance(asyncio.run(downloader.fetch(host.url + "/good.png")), Download)
    asyncio.run(downloader.aclose())


def test_sniffing_and_defaults():
    assert sniff_image_format(b"\xff\xd8\xff\xe0\x00\x10JFIF") == "jpeg"
    assert sniff_image_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_image_format(b"<!doctype html>") is None
    assert DEFAULT_MAX_BYTES == 20 * MB
    with pytest.raises(ValueError):
        SafeDownloader(max_bytes=0)
    with pytest.raises(ValueError, match="per_host_concurrency"):
        SafeDownloader(per_host_concurrency=0)
    with pytest.raises(ValueError, match="per_host_rate"):
        SafeDownloader(per_host_rate=-1)
    assert SafeDownloader(per_host_rate=0).per_host_rate is None         # 0 = no rate

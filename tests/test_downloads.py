"""The workstation's download cache (calicolab.downloads) against a local HTTP server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import stat
import threading

import pytest

from calicolab.downloads import ChecksumError, Download, DownloadCache, DownloadError, parse_sha256_file, workstation_arch

TOOL = b"#!/bin/sh\necho a tool\n"


class Recording(http.server.SimpleHTTPRequestHandler):
    """Serves the test's folder and records every requested path (its log line)."""

    def log_message(self, format, *args):
        self.server.requests.append(self.path)


class Server:
    def __init__(self, root):
        self.root = root
        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Recording, directory=str(root)))
        self.httpd.requests = self.requests = []
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def publish(self, path: str, body: bytes) -> None:
        (self.root / path).parent.mkdir(parents=True, exist_ok=True)
        (self.root / path).write_bytes(body)


@pytest.fixture
def server(tmp_path):
    served = Server(tmp_path / "www")
    thread = threading.Thread(target=served.httpd.serve_forever, daemon=True)
    thread.start()
    yield served
    served.httpd.shutdown()
    served.httpd.server_close()


def publish(server, body=TOOL, digest=None):
    """``/v1/tool`` and a SHA256SUMS listing it (with ``digest``, default its real one)."""
    server.publish("v1/tool", body)
    server.publish("v1/SHA256SUMS", f"{'0' * 64}  other\n{digest or hashlib.sha256(body).hexdigest()}  tool\n".encode())
    return Download(f"{server.base}/v1/tool", f"{server.base}/v1/SHA256SUMS")


def test_a_download_is_verified_cached_0700_and_never_fetched_again(server, tmp_path):
    cache = DownloadCache(tmp_path / "cache" / "calicolab" / "downloads")
    item = publish(server)
    assert cache.cached(item) is None
    first = cache.fetch(item)
    assert first.path.read_bytes() == TOOL and first.sha256 == hashlib.sha256(TOOL).hexdigest()
    assert sorted(server.requests) == ["/v1/SHA256SUMS", "/v1/tool"]
    for folder in (cache.root, cache.root.parent, first.path.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    # another process (a later run) finds it without asking the server
    again = DownloadCache(cache.root).fetch(item)
    assert again == first and len(server.requests) == 2


def test_a_partial_download_left_by_a_killed_run_is_removed_but_not_a_live_run_s(server, tmp_path):
    import os
    import subprocess
    import sys

    cache = DownloadCache(tmp_path / "cache")
    item = publish(server)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid no longer names a process
    folder = cache.root / hashlib.sha256(item.url.encode()).hexdigest()[:16]
    folder.mkdir(parents=True)
    abandoned, live = folder / f".tool.{gone.pid}.part", folder / f".tool.{os.getppid()}.part"
    for part in (abandoned, live):
        part.write_bytes(b"half a too")
    found = cache.fetch(item)
    assert found.path.parent == folder
    assert not abandoned.exists(), "left by a run that was killed"
    assert live.exists(), "another run may still be writing it"


def test_a_download_that_does_not_match_its_published_checksum_is_refused(server, tmp_path):
    cache = DownloadCache(tmp_path / "downloads")
    item = publish(server, digest="f" * 64)
    with pytest.raises(DownloadError, match=r"does not match its published checksum .*expected f{64}, got"):
        cache.fetch(item)
    assert cache.cached(item) is None
    assert [p.name for p in cache.root.rglob("*") if p.is_file()] == []


def test_a_corrupted_cached_file_is_refused_and_downloaded_again(server, tmp_path):
    cache = DownloadCache(tmp_path / "downloads")
    item = publish(server)
    path = cache.fetch(item).path
    path.write_bytes(b"#!/bin/sh\nrm -rf /\n")  # same name, other content
    assert DownloadCache(cache.root).cached(item) is None
    again = DownloadCache(cache.root).fetch(item)
    assert again.path.read_bytes() == TOOL
    assert server.requests.count("/v1/tool") == 2


def test_a_file_without_published_checksum_is_kept_with_the_digest_it_was_downloaded_with(server, tmp_path):
    server.publish("install.sh", b"#!/bin/sh\n")
    item = Download(f"{server.base}/install.sh")
    cache = DownloadCache(tmp_path / "downloads")
    assert cache.fetch(item).sha256 == hashlib.sha256(b"#!/bin/sh\n").hexdigest()
    assert DownloadCache(cache.root).fetch(item).path.read_bytes() == b"#!/bin/sh\n"
    assert server.requests == ["/install.sh"]


def test_concurrent_fetches_of_one_file_download_it_once(server, tmp_path):
    cache = DownloadCache(tmp_path / "downloads")
    item = publish(server)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.fetch(item))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and len(set(results)) == 1
    assert server.requests.count("/v1/tool") == 1


def test_an_unreachable_file_names_its_url(server, tmp_path):
    item = Download(f"{server.base}/v9/tool", f"{server.base}/v9/SHA256SUMS")
    with pytest.raises(DownloadError, match=r"cannot download http://127\.0\.0\.1:\d+/v9/"):
        DownloadCache(tmp_path / "downloads").fetch(item)


def test_default_cache_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert DownloadCache.default().root == tmp_path / "xdg" / "calicolab" / "downloads"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert DownloadCache.default().root == tmp_path / "home" / ".cache" / "calicolab" / "downloads"


def test_published_checksum_formats():
    digest = "a" * 64
    assert parse_sha256_file(digest.upper() + "\n", "kubectl") == digest  # kubectl's <binary>.sha256
    sums = f"{'b' * 64}  calicoctl-linux-arm64\n{'c' * 64}  calicoctl-linux-amd64\n{'d' * 64} *bin/calicoctl-darwin-amd64\n"
    assert parse_sha256_file(sums, "calicoctl-linux-amd64") == "c" * 64
    assert parse_sha256_file(sums, "calicoctl-darwin-amd64") == "d" * 64
    with pytest.raises(ChecksumError):
        parse_sha256_file(sums, "calicoctl-windows-amd64.exe")
    with pytest.raises(ChecksumError):
        parse_sha256_file("<html>not found</html>", "kubectl")


def test_workstation_arch_names_the_release_files():
    assert workstation_arch("x86_64") == "amd64" and workstation_arch("arm64") == "arm64"
    assert workstation_arch("aarch64") == "arm64"
    with pytest.raises(DownloadError, match="riscv64"):
        workstation_arch("riscv64")


def test_a_failed_checksum_download_is_one_error_without_a_greenlet_traceback(server, tmp_path, capfd):
    server.publish("v1/tool", TOOL)  # no SHA256SUMS published
    item = Download(f"{server.base}/v1/tool", f"{server.base}/v1/SHA256SUMS")
    with pytest.raises(DownloadError, match="SHA256SUMS"):
        DownloadCache(tmp_path / "downloads").fetch(item)
    assert "Traceback" not in capfd.readouterr().err


def test_a_later_run_hashes_a_cached_file_again_only_when_its_size_or_time_changed(server, tmp_path, monkeypatch):
    import os

    import calicolab.downloads as downloads

    cache = DownloadCache(tmp_path / "downloads")
    item = publish(server)
    path = cache.fetch(item).path
    hashed = []
    real_sha256_of = downloads._sha256_of
    monkeypatch.setattr(downloads, "_sha256_of", lambda p: hashed.append(p) or real_sha256_of(p))
    monkeypatch.setattr(DownloadCache, "_verified", {})  # a later run: nothing verified in this process
    assert DownloadCache(cache.root).cached(item).path == path and hashed == []
    # The same size and a new time (a copy put back, a restore from a backup): hashed, still valid
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert DownloadCache(cache.root).cached(item).path == path and hashed == [path]
    monkeypatch.setattr(DownloadCache, "_verified", {})
    assert DownloadCache(cache.root).cached(item).path == path and hashed == [path], "its new time is recorded"
    # The same size, other bytes, a new time: refused
    path.write_bytes(bytes(len(TOOL)))
    assert DownloadCache(cache.root).cached(item) is None


def test_a_cache_written_before_sizes_and_times_were_recorded_is_verified_once(server, tmp_path):
    cache = DownloadCache(tmp_path / "downloads")
    item = publish(server)
    found = cache.fetch(item)
    digest_file = found.path.with_name(found.path.name + ".sha256")
    digest_file.write_text(found.sha256 + "\n")  # the format before: the digest alone
    assert DownloadCache(cache.root).cached(item) == found
    assert digest_file.read_text().split()[0] == found.sha256 and len(digest_file.read_text().split()) == 3

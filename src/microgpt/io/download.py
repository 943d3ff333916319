"""HTTP(S) downloads into a local cache: streamed, bounded, verified, and atomic.

A cache entry appears only once the whole body arrived (and matched its sha256 when one is
known), so an interrupted or truncated download never leaves a corrupt file behind.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from microgpt.core.errors import DataError

log = logging.getLogger(__name__)

CHUNK = 1 << 20


def default_cache() -> Path:
    """MICROGPT_CACHE, read when a download is made (not at import), else ~/.cache/microgpt."""
    return Path(os.environ.get("MICROGPT_CACHE") or Path.home() / ".cache" / "microgpt")


def cache_path_for(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `url` is cached: a hash of the URL keeps names unique, the basename keeps them readable."""
    name = Path(urlparse(url).path).name or "download"
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(cache_dir or default_cache()) / "downloads" / f"{digest}-{name}"


def fetch(
    url: str,
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
    max_bytes: int = 2 << 30,
    timeout: float = 300.0,
    retries: int = 3,
    backoff: float = 1.0,
) -> Path:
    """The local path of `url`, downloading it first unless it is cached. `timeout` bounds each whole
    attempt (connecting and the full body), so a server trickling bytes cannot stall a run."""
    scheme = urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise DataError(f"only http(s) URLs can be downloaded, got {url!r}")
    target = cache_path_for(url, cache_dir)
    if target.is_file() and (sha256 is None or file_sha256(target) == sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _download_once(url, target, sha256, max_bytes, timeout)
            return target
        except _Permanent as e:
            raise DataError(str(e)) from e
        except (urllib.error.URLError, OSError, http.client.HTTPException, _Truncated) as e:
            last_error = e
            log.warning("download of %s failed (attempt %d of %d): %s", url, attempt + 1, retries + 1, e)
    hint = "raise data.timeout (seconds per whole attempt)" if isinstance(last_error, _TimedOut) else "check the URL and network"
    raise DataError(f"could not download {url} after {retries + 1} attempts ({last_error}); {hint}")


class _Permanent(Exception):
    """A failure that retrying cannot fix (404, size cap, checksum)."""


class _Truncated(Exception):
    pass


class _TimedOut(OSError):
    pass


def _read_within(response, deadline: float, timeout: float) -> bytes:
    """One chunk of the body, as soon as any bytes arrive, waiting no later than `deadline`."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _TimedOut(f"timed out after {timeout:g} s")
    sock = getattr(getattr(response.fp, "raw", None), "_sock", None)  # urllib keeps the socket private
    if sock is not None:
        sock.settimeout(remaining)
    try:
        return response.read1(CHUNK)
    except TimeoutError as e:
        raise _TimedOut(f"timed out after {timeout:g} s") from e


def _download_once(url: str, target: Path, sha256: str | None, max_bytes: int, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "microgpt"})
    deadline = time.monotonic() + timeout
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if 400 <= e.code < 500:
            raise _Permanent(f"{url} answered HTTP {e.code} ({e.reason}); check the URL") from e
        raise
    with response:
        expected = response.headers.get("Content-Length")
        if expected is not None and int(expected) > max_bytes:
            raise _Permanent(f"{url} is {int(expected):,} bytes, over the {max_bytes:,}-byte cap; raise max_bytes if intended")
        digest = hashlib.sha256()
        received = 0
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := _read_within(response, deadline, timeout):
                    received += len(chunk)
                    if received > max_bytes:
                        raise _Permanent(f"{url} sent more than the {max_bytes:,}-byte cap; raise max_bytes if intended")
                    digest.update(chunk)
                    out.write(chunk)
            if expected is not None and received != int(expected):
                raise _Truncated(f"body truncated: {received:,} of {int(expected):,} bytes")
            if sha256 is not None and digest.hexdigest() != sha256:
                raise _Permanent(f"{url} does not match its sha256 (got {digest.hexdigest()[:12]}..., want {sha256[:12]}...)")
            os.replace(tmp, target)  # atomic: readers see the whole file or none
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

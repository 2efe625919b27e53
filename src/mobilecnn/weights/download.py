"""``mobilecnn weights get MODEL --from SOURCE``: the published file downloaded once into the cache, checked
against its hash, imported (:func:`~mobilecnn.weights.store.run_import`) and reused on the next call.

The cache is ``$MOBILECNN_HOME/weights`` (default ``~/.cache/mobilecnn/weights``, or under ``$XDG_CACHE_HOME``):
``SOURCE/FILE`` as published, ``MODEL.SOURCE.safetensors`` imported, and ``hashes.json``, the SHA-256 recorded
at the first download of a file whose source publishes none (:mod:`.published_files`). A download goes to a
temporary file beside its destination and is renamed only once complete and verified: a truncated transfer,
a wrong hash, an HTTP error or a redirect loop leaves nothing in the cache or at ``--out``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.scenes import scenes_home
from ..errors import DownloadError, UsageError
from ..fields import cli
from ..files import atomic_write, atomic_write_text, read_json_object, sha256_of
from .common import SOURCES
from .published_files import PublishedFile, published_file, published_sources
from .store import ImportConfig, run_import

__all__ = ["GetConfig", "get_weights", "download", "weights_home", "HASHES_FILE"]

HASHES_FILE = "hashes.json"
#: Seconds without a byte before a download is abandoned.
TIMEOUT_S = 60.0
Progress = Callable[[int, "int | None"], None]


@dataclass
class GetConfig:
    """``mobilecnn weights get``: which model's published weights, from which source, written where."""

    model: str = field(metadata=cli("registered model name, e.g. mobilenet_v2_x1_0", positional=True,
                                    metavar="MODEL"))
    source: str = field(metadata=cli("the library that publishes the weights", flag="--from", required=True,
                                     choices=list(SOURCES)))
    out: str | None = field(default=None, metadata=cli(
        "also write the imported .safetensors here (default: only the cache, MOBILECNN_HOME/weights)"))
    url: str | None = field(default=None, metadata=cli("download from this URL instead (a mirror, a private copy)"))
    sha256: str | None = field(default=None, metadata=cli("the file's SHA-256 (hex); required with --url"))


def weights_home() -> Path:
    return scenes_home() / "weights"


def download(url: str, dest: Path, expected: str | None, progress: Progress | None = None) -> str:
    """``url`` into ``dest`` (atomically); returns the file's SHA-256. ``expected``: its SHA-256 or a prefix."""
    digest = hashlib.sha256()

    def fetch(tmp: str) -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "mobilecnn"}),
                                        timeout=TIMEOUT_S) as response, open(tmp, "wb") as fh:
                total, done = response.length, 0
                while chunk := response.read(1 << 20):
                    fh.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"{url}: HTTP {exc.code} ({exc.reason}); nothing was kept") from None
        except http.client.IncompleteRead as exc:
            raise DownloadError(f"{url}: the transfer stopped after {len(exc.partial)} more bytes of "
                                f"{exc.expected or '?'} expected; nothing was kept, try again") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise DownloadError(f"{url} could not be downloaded ({reason}); without network, fetch the file "
                                "elsewhere and run `mobilecnn weights import FILE --from SOURCE --out "
                                "W.safetensors`") from None
        if total is not None and done != total:
            raise DownloadError(f"{url}: the transfer stopped at {done} of {total} bytes; nothing was kept")
        got = digest.hexdigest()
        if expected and not got.startswith(expected.lower()):
            raise DownloadError(f"{url}: SHA-256 {got} does not match the expected {expected}; the file was not "
                                "kept (a corrupted or altered download)")

    atomic_write(dest, fetch)
    return digest.hexdigest()


def _recorded(home: Path) -> dict[str, str]:
    path = home / HASHES_FILE
    return read_json_object(path, "mobilecnn weights get", DownloadError) if path.is_file() else {}


def _entry(cfg: GetConfig) -> tuple[PublishedFile, str]:
    """The file to fetch and where its expected hash comes from."""
    if cfg.source not in SOURCES:
        raise UsageError(f"--from {cfg.source!r}; accepted: {', '.join(SOURCES)}")
    if cfg.url is not None:
        if not cfg.sha256 or len(cfg.sha256) != 64 or any(c not in "0123456789abcdef" for c in cfg.sha256.lower()):
            raise UsageError("--url needs --sha256 HEX, the file's full SHA-256 (64 hex digits)")
        found = published_file(cfg.model, cfg.source)
        return PublishedFile(cfg.model, cfg.source, cfg.url, cfg.sha256.lower(), found.variant if found else None,
                             found.resolution if found else None), "--sha256"
    if cfg.sha256 is not None:
        raise UsageError("--sha256 goes with --url (the published files are checked against their own hashes)")
    found = published_file(cfg.model, cfg.source)
    if found is None:
        others = published_sources(cfg.model)
        hint = (f"it is published by {', '.join(others)}" if others else
                "megvii's files are not on a direct URL: download them by hand and `mobilecnn weights import` them"
                if cfg.source == "megvii" else "no source publishes weights for it")
        raise UsageError(f"{cfg.source} publishes no weights for {cfg.model!r} ({hint}); pass --url URL --sha256 HEX "
                         "for a copy of your own")
    return found, "published" if found.sha256 else "recorded at the first download (the source publishes none)"


def get_weights(cfg: GetConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Download (once), verify and import the published weights of ``cfg.model``; returns the import's
    description with ``out`` (the cached or ``--out`` file), ``downloaded``, ``sha256`` and ``hash_from``."""
    entry, hash_from = _entry(cfg)
    home = weights_home()
    raw = home / entry.source / entry.file_name
    cached = home / f"{entry.model}.{entry.source}.safetensors"
    recorded = _recorded(home)
    expected = entry.sha256 or recorded.get(entry.url)
    downloaded = not raw.is_file()
    if downloaded:
        got = download(entry.url, raw, expected, progress)
    else:
        got = sha256_of(raw)
        if expected and not got.startswith(expected):
            raise DownloadError(f"the cached {raw} (SHA-256 {got}) does not match {expected}: delete it to download "
                                "it again")
    if entry.sha256 is None and entry.url not in recorded:
        atomic_write_text(home / HASHES_FILE, json.dumps({**recorded, entry.url: got}, indent=2) + "\n")

    def convert(to: Path) -> dict[str, Any]:
        return run_import(ImportConfig(raw, entry.source, to, model=entry.model, variant=entry.variant,
                                       resolution=entry.resolution))

    desc = convert(cached) if downloaded or not cached.is_file() else {"out": str(cached), "reused": True}
    out = cached if cfg.out is None else Path(cfg.out)
    if cfg.out is not None:
        desc = convert(out)
    return {**desc, "out": str(out), "url": entry.url, "file": str(raw), "downloaded": downloaded, "sha256": got,
            "hash_from": hash_from}

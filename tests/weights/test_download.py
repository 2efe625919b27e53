"""weights get: published files from a local HTTP server (no internet here) written by the source library;
hash checks (published prefix, --sha256, recorded at the first download), reuse, and every failure leaving
nothing in the cache or at --out."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch

import mobilecnn
from mobilecnn.cli import main
from mobilecnn.errors import DownloadError, UsageError
from mobilecnn.weights import GetConfig, get_weights
from mobilecnn.weights import download as dl
from mobilecnn.weights.published_files import PublishedFile


class _Handler(http.server.SimpleHTTPRequestHandler):
    hits: list[str] = []

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        _Handler.hits.append(self.path)
        if self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif self.path == "/truncated.pth":
            body = (Path(self.directory) / "mobilenet_v2.pth").read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])  # then the connection closes
        else:
            super().do_GET()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from torchvision.models import mobilenet_v2

    root = tmp_path_factory.mktemp("served")
    torch.manual_seed(0)
    torch.save(mobilenet_v2().state_dict(), root / "mobilenet_v2.pth")  # written by the source library
    digest = hashlib.sha256((root / "mobilenet_v2.pth").read_bytes()).hexdigest()
    (root / f"mobilenet_v2-{digest[:8]}.pth").write_bytes((root / "mobilenet_v2.pth").read_bytes())

    def handler(*args, **kwargs):
        return _Handler(*args, directory=str(root), **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", digest
    httpd.shutdown()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILECNN_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "weights"


def _publish(monkeypatch, url: str, sha256: str | None) -> None:
    entry = PublishedFile("mobilenet_v2_x1_0", "torchvision", url, sha256)
    monkeypatch.setattr(dl, "published_file", lambda model, source: entry if model == entry.model else None)


def test_published_prefix_checked_imported_cached_and_reused(server, home, monkeypatch, tmp_path):
    base, digest = server
    _publish(monkeypatch, f"{base}/mobilenet_v2-{digest[:8]}.pth", digest[:8])
    seen = []
    first = get_weights(GetConfig("mobilenet_v2_x1_0", "torchvision"), lambda done, total: seen.append(total))
    assert first["downloaded"] and first["sha256"] == digest and first["hash_from"] == "published"
    assert Path(first["out"]) == home / "mobilenet_v2_x1_0.torchvision.safetensors" and seen[-1] is not None
    model = mobilecnn.create_model("mobilenet_v2_x1_0", weights=first["out"])
    reference = torch.load(home / "torchvision" / f"mobilenet_v2-{digest[:8]}.pth", weights_only=True)
    assert torch.equal(model.classifier[1].weight, reference["classifier.1.weight"])
    _Handler.hits.clear()
    again = get_weights(GetConfig("mobilenet_v2_x1_0", "torchvision", out=str(tmp_path / "w.safetensors")))
    assert not again["downloaded"] and not _Handler.hits and (tmp_path / "w.safetensors").is_file()
    pretrained = mobilecnn.create_model("mobilenet_v2_x1_0", pretrained="torchvision")
    assert torch.equal(pretrained.classifier[1].weight, model.classifier[1].weight) and not _Handler.hits


def test_an_unpublished_hash_is_recorded_at_the_first_download_and_enforced(server, home, monkeypatch):
    base, digest = server
    _publish(monkeypatch, f"{base}/mobilenet_v2.pth", None)
    got = get_weights(GetConfig("mobilenet_v2_x1_0", "torchvision"))
    assert got["hash_from"].startswith("recorded at the first download")
    assert (home / dl.HASHES_FILE).read_text().count(digest) == 1
    (home / "torchvision" / "mobilenet_v2.pth").write_bytes(b"altered")
    with pytest.raises(DownloadError, match="does not match .*delete it to download it again"):
        get_weights(GetConfig("mobilenet_v2_x1_0", "torchvision"))


def _nothing_left(home: Path, out: Path) -> None:
    leftovers = [p for p in home.rglob("*") if p.is_file() and p.name != dl.HASHES_FILE] if home.exists() else []
    assert not leftovers and not out.exists()


@pytest.mark.parametrize(("path", "sha", "message"), [
    ("/truncated.pth", None, "transfer stopped"),
    ("/mobilenet_v2.pth", "0" * 64, "does not match the expected"),
    ("/missing.pth", None, "HTTP 404"),
    ("/loop", None, "HTTP 302"),
], ids=["truncated", "wrong-hash", "http-error", "redirect-loop"])
def test_a_failed_download_leaves_nothing(server, home, tmp_path, path, sha, message):
    base, digest = server
    out = tmp_path / "w.safetensors"
    cfg = GetConfig("mobilenet_v2_x1_0", "torchvision", out=str(out), url=base + path, sha256=sha or digest)
    with pytest.raises(DownloadError, match=message):
        get_weights(cfg)
    _nothing_left(home, out)


def test_no_network_names_the_url_and_the_import_fallback(home, tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/mobilenet_v2.pth"
    code = main(["weights", "get", "mobilenet_v2_x1_0", "--from", "torchvision", "--url", url, "--sha256", "a" * 64,
                 "--out", str(tmp_path / "w.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and url in err and "mobilecnn weights import" in err and "Traceback" not in err
    _nothing_left(home, tmp_path / "w.safetensors")


def test_bad_requests_are_one_line(home):
    with pytest.raises(UsageError, match="megvii's files are not on a direct URL"):
        get_weights(GetConfig("shufflenet_v1_g3_x1_0", "megvii"))
    with pytest.raises(UsageError, match="torchvision publishes no weights for 'mobilenet_v1_x1_0'.*keras"):
        get_weights(GetConfig("mobilenet_v1_x1_0", "torchvision"))
    with pytest.raises(UsageError, match="--url needs --sha256"):
        get_weights(GetConfig("mobilenet_v2_x1_0", "torchvision", url="http://127.0.0.1:1/x.pth"))
    with pytest.raises(UsageError, match="weights= or pretrained="):
        mobilecnn.create_model("mobilenet_v2_x1_0", weights="w.safetensors", pretrained="torchvision")


def test_the_cli_downloads_and_says_where(server, home, monkeypatch, capsys):
    base, digest = server
    _publish(monkeypatch, f"{base}/mobilenet_v2-{digest[:8]}.pth", digest[:8])
    assert main(["weights", "get", "mobilenet_v2_x1_0", "--from", "torchvision"]) == 0
    printed = capsys.readouterr().out
    assert f"SHA-256 {digest} (published)" in printed and "mobilenet_v2_x1_0.torchvision.safetensors" in printed


def test_every_published_entry_names_a_model_a_source_and_a_direct_url():
    from mobilecnn.weights import SOURCES
    from mobilecnn.weights.published_files import PUBLISHED_FILES

    for entry in PUBLISHED_FILES:
        assert entry.model in mobilecnn.list_models() and entry.source in SOURCES and entry.source != "megvii"
        assert entry.url.startswith("https://") and (entry.variant is not None) == (entry.source == "timm")
        if entry.source == "torchvision":  # torch.hub's rule: the hash prefix is in the file name
            assert entry.sha256 and f"-{entry.sha256}." in entry.file_name
    pairs = [(e.model, e.source) for e in PUBLISHED_FILES]
    assert len(pairs) == len(set(pairs))

"""Published weights: catalogue, resumable checksummed downloads, conversion cache, API, CLI, torch.hub.

Downloads are served by a loopback HTTP server (127.0.0.1, port 0) started and stopped by each test;
nothing touches the internet. The model files are tiny released-layout CaffeNet NetVLAD .mat files
(tests/convert_reference.py), converted by the real converter; download mechanics on other bytes
use a stand-in converter.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import re
import socket
import sys
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import netvlad
from netvlad.cli import main
from netvlad.convert import convert_file
from netvlad.models import PRESETS, PlaceModel, save_model
from netvlad.weights import (
    ChecksumError,
    DownloadError,
    default_cache_dir,
    get_weights,
    list_weights,
    load_catalogue,
    load_model,
    load_pretrained,
)
from netvlad.weights import catalogue as catalogue_module

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_reference import caffe_ref_backbone, netvlad_head, released_net, write_v5  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HTML_PAGE = (b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>"
             b"<body>Google Drive can't scan this file for viruses.</body></html>")


# --------------------------------------------------------------------------- loopback server


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` with Range support; ``server.modes[path]`` switches behaviour:
    "ignore-range" (always 200, whole file), "html" (a text/html page), "html-octet" (the same page
    labelled application/octet-stream), "404". Paths in ``server.cut_once`` get half their body,
    then the connection closes (once)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        path = urllib.parse.urlsplit(self.path).path
        srv.requests.append((path, self.headers.get("Range")))
        mode = srv.modes.get(path, "normal")
        if mode == "html":
            return self._send(200, HTML_PAGE, "text/html; charset=utf-8")
        if mode == "html-octet":
            return self._send(200, HTML_PAGE, "application/octet-stream")
        if mode == "404" or path not in srv.files:
            return self._send(404, b"not found", "text/plain")
        data = srv.files[path]
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and mode != "ignore-range":
            start = int(match.group(1))
            if start >= len(data):
                return self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
        extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if start else {}
        body = data[start:]
        cut = path in srv.cut_once
        srv.cut_once.discard(path)
        self._send(206 if start else 200, body[: len(body) // 2] if cut else body,
                   "application/octet-stream", extra, length=len(body))
        if cut:
            self.close_connection = True

    def _send(self, code, body, ctype, headers=None, length=None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("Accept-Ranges", "bytes")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files, srv.modes, srv.requests, srv.cut_once = {}, {}, [], set()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- files and catalogues


@pytest.fixture(scope="module")
def tiny_mat(tmp_path_factory):
    """A released-layout CaffeNet NetVLAD (K=4, WPCA 8) .mat file: (path, bytes)."""
    rng = np.random.default_rng(3)
    layers = caffe_ref_backbone(rng, with_fc=False)[:-2] + netvlad_head(rng, 256, k=4, pca_dim=8)
    net = released_net(layers, session="caffe_pitts30k_conv5_vlad_preL2_intra_white")
    path = write_v5(tmp_path_factory.mktemp("mat") / "tiny.mat", {"net": net})
    return path, path.read_bytes()


@pytest.fixture(scope="module")
def tiny_model(tiny_mat):
    return convert_file(tiny_mat[0])


class StandIn:
    """A converter for download tests on arbitrary bytes: returns the tiny model, records calls."""

    def __init__(self, converted, version="1"):
        self.converted, self.version, self.calls = converted, version, []

    def __call__(self, path):
        self.calls.append((Path(path), Path(path).read_bytes()))
        return self.converted


def _catalogue(tmp_path, *entries):
    base = {"project": "test project", "licence": "MIT", "source_url": "https://example.org/README.md",
            "trained_on": "nothing", "reproduces": "a test row"}
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({"models": [{**base, **e} for e in entries]}))
    return load_catalogue(path)


def _one(tmp_path, name, url, file_name, **fields):
    """A catalogue holding one entry."""
    return _catalogue(tmp_path, {"name": name, "url": url, "file_name": file_name, **fields})


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _state_equal(a: PlaceModel, b: PlaceModel) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- the packaged catalogue


def test_packaged_catalogue_entries_are_sourced_and_licensed():
    cat = load_catalogue()
    names = set(cat.names())
    wanted = {
        "vd16_pitts30k_conv5_3_vlad_preL2_intra_white", "vd16_tokyoTM_conv5_3_vlad_preL2_intra_white",
        "caffe_pitts30k_conv5_vlad_preL2_intra_white", "caffe_tokyoTM_conv5_vlad_preL2_intra_white",
        "hloc-vgg16-netvlad-pitts30k", "hloc-vgg16-netvlad-tokyotm", "pytorch-netvlad-vgg16-pitts30k",
        "openibl-vgg16-netvlad-sfrs",
        *(f"patchnetvlad-{d}-wpca{n}" for d in ("pitts", "mapillary") for n in (128, 512, 4096)),
        *(f"vgbench-{b}-netvlad-{d}" for b in ("vgg16", "resnet18", "resnet50", "resnet101")
          for d in ("pitts30k", "msls")),
    }
    assert wanted <= names
    hub = [e.hub_name for e in cat.entries]
    assert len(set(hub)) == len(hub) and all(h.isidentifier() for h in hub)
    assert not set(hub) & {p.replace("-", "_") for p in PRESETS} and not names & set(PRESETS)
    for e in cat.entries:
        assert e.url.startswith("https://"), e.name
        assert e.source_url.startswith(("https://", "http://")) and e.licence and e.reproduces, e.name
        assert e.trained_on and e.format and e.project_url, e.name
        if "drive" in e.url:  # Google Drive: the direct form, and the page for a download by hand
            fid = re.search(r"id=([\w-]+)", e.url).group(1)
            assert e.url == f"https://drive.usercontent.google.com/download?id={fid}&export=download&confirm=t"
            assert fid in e.page_url
    assert any("cct384" in item["name"] for item in cat.not_included)


def test_readme_has_a_command_for_every_published_model():
    readme = (ROOT / "README.md").read_text()
    for e in list_weights():
        assert f"`netvlad weights get {e.name}` | {e.trained_on} | {e.reproduces}" in readme, e.name


def test_pyproject_ships_the_catalogue():
    import tomllib

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "catalogue.json" in conf["tool"]["setuptools"]["package-data"]["netvlad.weights"]


def test_catalogue_validation(tmp_path):
    good = {"name": "a", "url": "https://x/a", "file_name": "a.mat"}
    with pytest.raises(ValueError, match=r"name 'a' is used twice"):
        _catalogue(tmp_path, good, good)
    with pytest.raises(ValueError, match=r"file_name '../a' must be a plain name"):
        _catalogue(tmp_path, {**good, "file_name": "../a"})
    with pytest.raises(ValueError, match=r"sha256 must be 64 lower-case hex"):
        _catalogue(tmp_path, {**good, "sha256": "abc"})
    with pytest.raises(ValueError, match=r"lacks \['url'\]"):
        _catalogue(tmp_path, {"name": "a", "file_name": "a.mat"})


def test_default_cache_dir():
    home = Path("/home/u")
    assert default_cache_dir({"NETVLAD_HOME": "/data/nv"}, "linux", home) == Path("/data/nv")
    assert default_cache_dir({}, "linux", home) == home / ".cache" / "netvlad"
    assert default_cache_dir({"XDG_CACHE_HOME": "/xdg"}, "linux", home) == Path("/xdg/netvlad")
    assert default_cache_dir({"XDG_CACHE_HOME": "rel"}, "linux", home) == home / ".cache" / "netvlad"
    assert default_cache_dir({}, "darwin", home) == home / "Library" / "Caches" / "netvlad"
    assert default_cache_dir({"LOCALAPPDATA": "C:/L"}, "win32", home) == Path("C:/L") / "netvlad" / "Cache"


# --------------------------------------------------------------------------- download + convert + cache


def test_download_convert_and_reuse_without_a_request(server, tiny_mat, tmp_path):
    path, data = tiny_mat
    server.files["/m/tiny.mat"] = data
    cat = _one(tmp_path, "tiny-caffe", server.url + "/m/tiny.mat", "tiny.mat")
    cache = tmp_path / "cache"
    ckpt = get_weights("tiny-caffe", cache, progress=False, catalogue=cat)
    sha = _sha(data)
    assert ckpt == cache / "models" / f"tiny-caffe-{sha[:12]}.safetensors"
    assert (cache / "downloads" / "tiny.mat").read_bytes() == data
    rec = json.loads((cache / "downloads" / "tiny.mat.json").read_text())
    assert (rec["sha256"], rec["size"], rec["url"], rec["origin"]) == (sha, len(data), cat.entries[0].url,
                                                                       "download")
    # Oracle: converting the original file directly gives the same model.
    reference, _ = convert_file(path)
    model = load_pretrained("tiny-caffe", cache_dir=cache, progress=False, catalogue=cat)
    assert model.config == reference.config and _state_equal(model, reference)
    n = len(server.requests)
    assert get_weights("tiny-caffe", cache, progress=False, catalogue=cat) == ckpt
    assert len(server.requests) == n == 1


def test_resume_after_a_cut_connection(server, tiny_model, tmp_path):
    data = np.random.default_rng(0).bytes(3 << 20)
    server.files["/blob.bin"] = data
    server.cut_once.add("/blob.bin")
    cat = _one(tmp_path, "blob", server.url + "/blob.bin", "blob.bin")
    conv = StandIn(tiny_model)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as err:
        get_weights("blob", cache, progress=False, catalogue=cat, converter=conv, retries=0)
    msg = str(err.value)
    assert "\n" not in msg and "connection lost after 1572864 of 3145728 bytes" in msg and "run again" in msg
    assert cat.entries[0].url in msg and str(cache / "downloads" / "blob.bin") in msg
    partial = cache / "downloads" / "blob.bin.partial"
    assert partial.read_bytes() == data[: len(data) // 2] and not (cache / "downloads" / "blob.bin").exists()
    get_weights("blob", cache, progress=False, catalogue=cat, converter=conv, retries=0)
    assert server.requests[-1] == ("/blob.bin", f"bytes={len(data) // 2}-")
    rec = json.loads((cache / "downloads" / "blob.bin.json").read_text())
    assert rec["sha256"] == _sha(data) and (cache / "downloads" / "blob.bin").read_bytes() == data
    assert not partial.exists() and [c[1] for c in conv.calls] == [data]


def test_a_cut_connection_is_resumed_within_one_call(server, tiny_model, tmp_path):
    data = np.random.default_rng(1).bytes(1 << 20)
    server.files["/blob.bin"] = data
    server.cut_once.add("/blob.bin")
    cat = _one(tmp_path, "blob", server.url + "/blob.bin", "blob.bin")
    get_weights("blob", tmp_path, progress=False, catalogue=cat, converter=StandIn(tiny_model), retries=1)
    assert server.requests == [("/blob.bin", None), ("/blob.bin", f"bytes={len(data) // 2}-")]
    assert (tmp_path / "downloads" / "blob.bin").read_bytes() == data


def test_server_ignoring_range_restarts_from_zero(server, tiny_model, tmp_path):
    data = np.random.default_rng(2).bytes(1 << 20)
    server.files["/blob.bin"] = data
    server.modes["/blob.bin"] = "ignore-range"
    cat = _one(tmp_path, "blob", server.url + "/blob.bin", "blob.bin")
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "blob.bin.partial").write_bytes(b"x" * 1000)  # not a prefix of the file
    get_weights("blob", tmp_path, progress=False, catalogue=cat, converter=StandIn(tiny_model))
    assert server.requests == [("/blob.bin", "bytes=1000-")]  # asked to resume, got 200 + the whole file
    assert (tmp_path / "downloads" / "blob.bin").read_bytes() == data


def test_a_partial_file_the_server_cannot_extend_restarts_from_zero(server, tiny_model, tmp_path):
    data = b"0123456789" * 1000
    server.files["/f.bin"] = data
    cat = _one(tmp_path, "f", server.url + "/f.bin", "f.bin")
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "f.bin.partial").write_bytes(data + b"junk")  # longer than the file
    get_weights("f", tmp_path, progress=False, catalogue=cat, converter=StandIn(tiny_model))
    assert server.requests == [("/f.bin", f"bytes={len(data) + 4}-"), ("/f.bin", None)]  # 416, then all
    assert (tmp_path / "downloads" / "f.bin").read_bytes() == data


def test_a_server_that_never_answers_times_out(tiny_model, tmp_path):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/f.bin"
        cat = _one(tmp_path, "f", url, "f.bin")
        with pytest.raises(DownloadError, match=rf"f: cannot download {url}: no answer within 0.3 s; .*at"):
            get_weights("f", tmp_path, progress=False, catalogue=cat, converter=StandIn(tiny_model),
                        timeout=0.3)


@pytest.mark.parametrize("mode", ["html", "html-octet", "404"])
def test_failed_downloads_name_the_url_and_the_manual_path(server, tiny_model, tmp_path, mode):
    server.files["/file"] = b"data"
    server.modes["/file"] = mode
    page = "https://drive.google.com/file/d/XYZ/view"
    cat = _one(tmp_path, "m", server.url + "/file", "m.pth", page_url=page)
    with pytest.raises(DownloadError) as err:
        get_weights("m", tmp_path, progress=False, catalogue=cat, converter=StandIn(tiny_model))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"m: cannot download {server.url}/file: ")
    assert ("HTTP 404" in msg) if mode == "404" else ("HTML page" in msg)
    assert f"fetch it by hand from {page} and put it at {tmp_path / 'downloads' / 'm.pth'}" in msg
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == ["m.pth.lock"]


def test_offline_cli_exits_2_with_the_url_and_manual_path(tmp_path, monkeypatch, capsys):
    url = f"http://127.0.0.1:{_closed_port()}/w/tiny.mat"
    cat = _one(tmp_path, "tiny-caffe", url, "tiny.mat")
    monkeypatch.setattr(catalogue_module, "packaged_catalogue_path", lambda: Path(cat.source))
    monkeypatch.setenv("NETVLAD_HOME", str(tmp_path / "home"))
    assert main(["weights", "get", "tiny-caffe", "--quiet", "--timeout", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"netvlad weights: error: tiny-caffe: cannot download {url}: cannot connect")
    assert err.rstrip().endswith(f"put it at {tmp_path / 'home' / 'downloads' / 'tiny.mat'}")


def test_a_file_placed_by_hand_is_accepted_then_verified(tiny_mat, tmp_path):
    path, data = tiny_mat
    url = f"http://127.0.0.1:{_closed_port()}/tiny.mat"
    cat = _one(tmp_path, "tiny-caffe", url, "tiny.mat")
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as err:
        get_weights("tiny-caffe", cache, progress=False, catalogue=cat, timeout=5)
    manual = Path(str(err.value).rsplit("put it at ", 1)[1])
    manual.write_bytes(data)
    ckpt = get_weights("tiny-caffe", cache, progress=False, catalogue=cat, timeout=5)
    rec = json.loads((cache / "downloads" / "tiny.mat.json").read_text())
    assert (rec["sha256"], rec["origin"], rec["url"]) == (_sha(data), "manual", None)
    assert _state_equal(load_model(str(ckpt)), convert_file(path)[0])
    manual.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # changed after its first use
    with pytest.raises(ChecksumError, match=rf"{re.escape(str(manual))}: sha256 mismatch for tiny-caffe: "
                       rf"expected {_sha(data)} \(recorded at its first use \(placed by hand\).*"
                       r"got [0-9a-f]{64}"):
        get_weights("tiny-caffe", cache, progress=False, catalogue=cat, timeout=5)


def test_an_html_page_placed_by_hand_is_refused(tmp_path):
    cat = _one(tmp_path, "m", f"http://127.0.0.1:{_closed_port()}/m", "m.pth")
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "m.pth").write_bytes(HTML_PAGE)
    with pytest.raises(ValueError, match=r"m\.pth: an HTML page, not m's model file"):
        get_weights("m", tmp_path, progress=False, catalogue=cat)
    assert not (tmp_path / "downloads" / "m.pth.json").exists()


def test_a_corrupted_cached_download_is_refused_until_redownloaded(server, tiny_mat, tmp_path):
    # Refused, not silently re-fetched: a file that changed after it was verified means a disk fault or
    # tampering the user should see, and it may be a copy they placed by hand; --redownload is explicit.
    _, data = tiny_mat
    server.files["/tiny.mat"] = data
    cat = _one(tmp_path, "tiny-caffe", server.url + "/tiny.mat", "tiny.mat")
    ckpt = get_weights("tiny-caffe", tmp_path, progress=False, catalogue=cat)
    cached = tmp_path / "downloads" / "tiny.mat"
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    cached.write_bytes(bytes(bad))
    with pytest.raises(ChecksumError) as err:
        get_weights("tiny-caffe", tmp_path, progress=False, catalogue=cat)
    msg = str(err.value)
    assert msg.startswith(f"{cached}: sha256 mismatch for tiny-caffe: expected {_sha(data)}")
    assert f"got {_sha(bytes(bad))}" in msg and "--redownload" in msg and len(server.requests) == 1
    assert get_weights("tiny-caffe", tmp_path, progress=False, catalogue=cat, redownload=True) == ckpt
    assert len(server.requests) == 2 and cached.read_bytes() == data


def test_a_second_process_waits_for_the_one_fetching(server, tiny_model, tmp_path):
    from netvlad.weights.cache import CachePaths, cache_lock

    server.files["/f.bin"] = b"model bytes"
    cat = _one(tmp_path, "f", server.url + "/f.bin", "f.bin")
    got = {}

    def fetch():
        got["path"] = get_weights("f", tmp_path, progress=False, catalogue=cat, converter=StandIn(tiny_model))

    with cache_lock(CachePaths(tmp_path, "f", "f.bin").lock):  # another process is fetching f
        worker = threading.Thread(target=fetch)
        worker.start()
        worker.join(0.5)
        assert worker.is_alive() and server.requests == []
    worker.join(10)
    assert not worker.is_alive() and got["path"].is_file() and len(server.requests) == 1


def test_a_damaged_converted_checkpoint_is_converted_again(server, tiny_model, tmp_path):
    server.files["/blob.bin"] = b"some model bytes"
    cat = _one(tmp_path, "blob", server.url + "/blob.bin", "blob.bin")
    conv = StandIn(tiny_model)
    ckpt = get_weights("blob", tmp_path, progress=False, catalogue=cat, converter=conv)
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated
    assert get_weights("blob", tmp_path, progress=False, catalogue=cat, converter=conv) == ckpt
    assert len(conv.calls) == 2 and len(server.requests) == 1
    assert _state_equal(load_model(str(ckpt)), tiny_model[0])


def test_a_catalogue_checksum_that_differs_is_refused(server, tiny_model, tmp_path):
    data = b"the published file"
    server.files["/f.bin"] = data
    wrong = _sha(b"what the catalogue promised")
    cat = _one(tmp_path, "f", server.url + "/f.bin", "f.bin", sha256=wrong)
    conv = StandIn(tiny_model)
    with pytest.raises(ChecksumError) as err:
        get_weights("f", tmp_path, progress=False, catalogue=cat, converter=conv)
    msg = str(err.value)
    assert f"{server.url}/f.bin: sha256 mismatch: expected {wrong}, got {_sha(data)}" in msg
    assert "the catalogue's" in msg and not conv.calls
    assert not (tmp_path / "downloads" / "f.bin").exists()
    assert (tmp_path / "downloads" / "f.bin.rejected").read_bytes() == data
    # The right checksum is accepted.
    cat = _catalogue(tmp_path, {"name": "f", "url": server.url + "/f.bin", "file_name": "f.bin",
                                "sha256": _sha(data)})
    get_weights("f", tmp_path, progress=False, catalogue=cat, converter=conv)
    assert (tmp_path / "downloads" / "f.bin").read_bytes() == data


def test_a_catalogue_checksum_that_differs_from_the_recorded_one_is_refused(server, tiny_model, tmp_path):
    server.files["/f.bin"] = b"first version"
    entry = {"name": "f", "url": server.url + "/f.bin", "file_name": "f.bin"}
    conv = StandIn(tiny_model)
    get_weights("f", tmp_path, progress=False, catalogue=_catalogue(tmp_path, entry), converter=conv)
    newer = _sha(b"second version")
    cat = _catalogue(tmp_path, {**entry, "sha256": newer})
    with pytest.raises(ChecksumError, match=rf"catalogue's sha256 for f is {newer}, but "
                       rf"{_sha(b'first version')} was recorded at its first download"):
        get_weights("f", tmp_path, progress=False, catalogue=cat, converter=conv)


def test_reconverted_when_the_converter_or_the_source_changes(server, tiny_model, tmp_path):
    server.files["/f.bin"] = b"version one"
    cat = _one(tmp_path, "f", server.url + "/f.bin", "f.bin")
    conv = StandIn(tiny_model, version="1")
    first = get_weights("f", tmp_path, progress=False, catalogue=cat, converter=conv)
    get_weights("f", tmp_path, progress=False, catalogue=cat, converter=conv)
    assert len(conv.calls) == 1
    conv.version = "2"
    assert get_weights("f", tmp_path, progress=False, catalogue=cat, converter=conv) == first
    assert len(conv.calls) == 2 and len(server.requests) == 1
    server.files["/f.bin"] = b"version two"
    second = get_weights("f", tmp_path, progress=False, catalogue=cat, converter=conv, redownload=True)
    assert second.name == f"f-{_sha(b'version two')[:12]}.safetensors" and not first.exists()
    assert conv.calls[-1][1] == b"version two"


def test_the_builtin_converter_version_follows_its_source(monkeypatch, tmp_path):
    from netvlad.weights.pretrained import converter_version

    v = converter_version()
    assert v.startswith("netvlad.convert-") and v == converter_version()
    fake = tmp_path / "convert"
    fake.mkdir()
    (fake / "__init__.py").write_text("# another converter\n")
    monkeypatch.setattr(netvlad.convert, "__file__", str(fake / "__init__.py"))
    assert converter_version() != v


# --------------------------------------------------------------------------- API


def test_create_model_and_load_model_take_catalogue_names(server, tiny_mat, tmp_path, monkeypatch):
    path, data = tiny_mat
    server.files["/tiny.mat"] = data
    cat = _one(tmp_path, "tiny-caffe", server.url + "/tiny.mat", "tiny.mat")
    kw = dict(catalogue=cat, cache_dir=tmp_path / "cache", progress=False)
    model = netvlad.create_model("tiny-caffe", pretrained=True, **kw)
    assert _state_equal(model, convert_file(path)[0]) and not model.training
    assert _state_equal(netvlad.load_model("tiny-caffe", **kw), model)
    with pytest.raises(ValueError, match=r"tiny-caffe: a published model.*pass pretrained=True"):
        netvlad.create_model("tiny-caffe", catalogue=cat)
    with pytest.raises(ValueError, match=r"vgg16-netvlad: presets have no published weights"):
        netvlad.create_model("vgg16-netvlad", pretrained=True)
    with pytest.raises(ValueError, match=r"'tiny-cafe' is not a published model.*did you mean tiny-caffe\?$"):
        netvlad.create_model("tiny-cafe", pretrained=True, catalogue=cat)
    assert isinstance(netvlad.create_model("alexnet-netvlad"), PlaceModel)
    with pytest.raises(ValueError, match=r"--weights applies to presets only"):
        load_model("tiny-caffe", weights="imagenet", catalogue=cat)
    with pytest.raises(FileNotFoundError, match=r"not a preset .*, nor a published model .*; did you mean "
                       r"vd16_pitts30k_conv5_3_vlad_preL2_intra_white\b"):
        load_model("vd16_pitts30k_conv5_3_vlad_preL2_intra_whit")
    # An existing file of that name wins over the catalogue name (no request).
    monkeypatch.chdir(tmp_path)
    save_model(netvlad.create_model("alexnet-netvlad"), tmp_path / "tiny-caffe")
    n = len(server.requests)
    assert not _state_equal(load_model("tiny-caffe", catalogue=cat), model) and len(server.requests) == n


def test_hub_entries_for_every_published_model(server, tiny_mat, tmp_path):
    spec = importlib.util.spec_from_file_location("netvlad_hubconf_test", ROOT / "hubconf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    for e in list_weights():
        assert callable(getattr(hub, e.hub_name)), e.hub_name
    assert callable(hub.vgg16_netvlad)  # the preset entries stay
    name = "caffe_pitts30k_conv5_vlad_preL2_intra_white"
    server.files["/c.mat"] = tiny_mat[1]
    cat = _one(tmp_path, name, server.url + "/c.mat", "c.mat")
    model = getattr(hub, name)(catalogue=cat, cache_dir=tmp_path, progress=False)
    assert _state_equal(model, convert_file(tiny_mat[0])[0])
    with pytest.raises(ValueError, match="pass pretrained=True"):
        getattr(hub, name)(pretrained=False, catalogue=cat)


# --------------------------------------------------------------------------- CLI


def test_cli_list_shows_every_entry_with_its_source(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NETVLAD_HOME", str(tmp_path))
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    for e in list_weights():
        row = next(line for line in out.splitlines() if line.startswith(e.name + " "))
        assert e.project in row and e.licence[:20] in row and row.rstrip().endswith("no")
        assert f"source:     {e.source_url}" in out
    assert "not included: vgbench cct384-netvlad" in out
    assert main(["weights", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [e.name for e in list_weights()]
    assert all(r["cached"] == "no" and r["source_url"] and r["licence"] for r in rows)


def _use_catalogue(monkeypatch, cat, home):
    monkeypatch.setattr(catalogue_module, "packaged_catalogue_path", lambda: Path(cat.source))
    monkeypatch.setenv("NETVLAD_HOME", str(home))


def test_cli_get_prints_the_checkpoint_and_how_to_use_it(server, tiny_mat, tmp_path, monkeypatch, capsys):
    server.files["/tiny.mat"] = tiny_mat[1]
    cat = _one(tmp_path, "tiny-caffe", server.url + "/tiny.mat", "tiny.mat")
    _use_catalogue(monkeypatch, cat, tmp_path / "home")
    assert main(["weights", "get", "tiny-caffe", "--dir", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    ckpt = next((tmp_path / "d" / "models").glob("tiny-caffe-*.safetensors"))
    assert out.startswith(f"tiny-caffe: {ckpt}\n")
    assert f"NETVLAD_HOME={tmp_path / 'd'} netvlad extract tiny-caffe --images DIR" in out
    assert f"netvlad.create_model('tiny-caffe', pretrained=True, cache_dir='{tmp_path / 'd'}')" in out
    assert main(["weights", "get", "tiny-caffe", "--quiet"]) == 0  # NETVLAD_HOME this time
    quiet = capsys.readouterr().out
    assert quiet == f"{next((tmp_path / 'home' / 'models').glob('*.safetensors'))}\n"
    assert main(["weights", "list"]) == 0
    assert re.search(r"^tiny-caffe .*converted$", capsys.readouterr().out, re.M)
    assert main(["weights", "get", "nope"]) == 2
    assert "'nope' is not a published model" in capsys.readouterr().err


def test_cli_describe_and_extract_accept_a_catalogue_name(server, tiny_mat, tmp_path, monkeypatch, capsys):
    from netvlad.extract import compute_representation
    from netvlad.io import read_features

    server.files["/tiny.mat"] = tiny_mat[1]
    cat = _one(tmp_path, "tiny-caffe", server.url + "/tiny.mat", "tiny.mat")
    _use_catalogue(monkeypatch, cat, tmp_path / "home")
    assert main(["describe", "tiny-caffe", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "tiny-caffe (published by test project; licence: MIT)" and info["out_dim"] == 8
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(4)
    for i, (w, h) in enumerate([(72, 64), (64, 80)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    out = tmp_path / "f.h5"
    assert main(["extract", "tiny-caffe", "--images", str(imgs), "--out", str(out), "--no-progress"]) == 0
    names, desc, _ = read_features(out)
    reference = convert_file(tiny_mat[0])[0]
    expected = np.stack([compute_representation(reference, imgs / n) for n in names])
    np.testing.assert_allclose(desc, expected, atol=1e-5)
    assert len(server.requests) == 1  # describe downloaded it; extract used the cache


def test_model_reference_keeps_a_published_name(tmp_path, monkeypatch):
    # A feature file records how to rebuild its model; a catalogue name must stay a name (not
    # cwd/NAME) so that `netvlad query INDEX` without --model can load it from anywhere.
    from netvlad.weights import model_reference

    monkeypatch.chdir(tmp_path)
    name = "vd16_pitts30k_conv5_3_vlad_preL2_intra_white"
    assert model_reference(name) == name
    (tmp_path / name).write_bytes(b"x")  # an existing file of that name wins, as in load_model
    assert model_reference(name) == str(tmp_path / name)

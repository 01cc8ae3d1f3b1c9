"""The localisation service: API in process (TestClient), errors, auth, thumbnails, micro-batching,
and the real server over HTTP on a loopback port."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from netvlad.serve.batching import MicroBatcher  # noqa: E402
from serve_helpers import MODEL, make_index, running_server  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    idx, names, utm = make_index(root)
    return root, idx, names, utm


@pytest.fixture(scope="module")
def loaded(setup):
    from netvlad.index import load_index
    from netvlad.weights import load_model

    root, idx, names, _ = setup
    return load_index(idx), load_model(MODEL)


def _app(setup, loaded, **cfg):
    from netvlad.serve.app import ServeConfig, create_app

    root, _, names, _ = setup
    index, model = loaded
    return create_app(
        index, model, ServeConfig(**cfg), db_paths={n: root / n for n in names}, model_ref=MODEL
    )


def _post(client, data: bytes, filename="photo.png", **fields):
    return client.post(
        "/localize",
        files={"image": (filename, data, "image/png")},
        data={k: str(v) for k, v in fields.items()},
    )


def _query_json(setup, capsys, *extra):
    from netvlad.cli import main

    root, idx, names, _ = setup
    capsys.readouterr()
    assert main(["query", str(idx), *extra, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _same(a: dict, b: dict) -> None:
    """Equal result objects but for the image label; scores to float32 rounding."""
    assert {k: v for k, v in a.items() if k not in ("image", "results")} == {
        k: v for k, v in b.items() if k not in ("image", "results")
    }
    assert [{k: v for k, v in r.items() if k != "score"} for r in a["results"]] == [
        {k: v for k, v in r.items() if k != "score"} for r in b["results"]
    ]
    np.testing.assert_allclose(
        [r["score"] for r in a["results"]], [r["score"] for r in b["results"]], atol=1e-5
    )


def test_localize_returns_what_query_json_prints(setup, loaded, capsys):
    root, idx, names, utm = setup
    photo = root / names[5]
    with TestClient(_app(setup, loaded)) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = _post(c, photo.read_bytes(), k=3)
        assert r.status_code == 200, r.text
        got = r.json()
        r_prior = _post(
            c,
            photo.read_bytes(),
            k=3,
            lat=got["location_latlon"][0],
            lon=got["location_latlon"][1],
            radius_m=20,
        )
        default_k = _post(c, photo.read_bytes()).json()
    want = _query_json(setup, capsys, str(photo), "--k", "3")[0]
    assert got["image"] == "photo.png" and want["image"] == str(photo)
    _same(got, want)
    assert got["results"][0]["name"] == names[5] and got["location"] == pytest.approx(utm[5].tolist())
    assert got["zone"] == "17T" and got["prior"] is None
    lat, lon = got["location_latlon"]
    assert 40.4 < lat < 40.5 and -80.0 < lon < -79.9  # 17T 589 km E, 4477 km N: Pittsburgh
    assert len(default_k["results"]) == 5
    # The prior through the API equals `query --near --radius`.
    near = f"{got['location_latlon'][0]!r},{got['location_latlon'][1]!r}"
    want_p = _query_json(setup, capsys, str(photo), "--k", "3", "--near", near, "--radius", "20")[0]
    _same(r_prior.json(), want_p)
    assert r_prior.json()["prior"]["radius_m"] == 20


def test_api_index_points_and_thumbnails(setup, loaded):
    root, idx, names, utm = setup
    with TestClient(_app(setup, loaded)) as c:
        info = c.get("/api/index").json()
        assert (info["size"], info["dim"], info["model"], info["zone"], info["kind"]) == (
            8,
            320,
            MODEL,
            "17T",
            "flat",
        )
        assert info["area"]["width_m"] == pytest.approx(120) and info["area"]["height_m"] == pytest.approx(30)
        pts = c.get("/api/points").json()
        np.testing.assert_allclose(pts["utm"], utm)
        assert len(pts["latlon"]) == 8
        r = c.get("/thumb/2")
        assert (
            r.status_code == 200
            and r.headers["content-type"] == "image/jpeg"
            and r.content[:2] == b"\xff\xd8"
        )
        # Only images of the loaded index, by id: nothing a client names is opened.
        for bad in ("/thumb/8", "/thumb/-1", "/thumb/..%2F..%2Fetc%2Fpasswd", "/thumb/0x1"):
            r = c.get(bad)
            assert r.status_code == 404 and "error" in r.json(), bad
        assert c.get("/thumb/../../etc/passwd").status_code == 404
        page = c.get("/")
        assert page.status_code == 200 and "/static/app.js" in page.text
        assert c.get("/static/leaflet/leaflet.js").status_code == 200
        assert "BSD 2-Clause" in c.get("/static/leaflet/LICENSE").text


def _png_bytes(h=40, w=50) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_requests_are_4xx_json_saying_why(setup, loaded):
    png = _png_bytes()
    with TestClient(_app(setup, loaded, max_upload_bytes=50_000, k_max=10)) as c:
        cases = [
            (_post(c, b"this is not an image", "notes.txt"), 400, "notes.txt: not an image Pillow can read"),
            (_post(c, png[: len(png) // 2], "cut.png"), 400, "cut.png: corrupt or truncated image"),
            (_post(c, b"", "empty.jpg"), 400, "empty.jpg: empty file"),
            (_post(c, b"\0" * 60_000, "big.png"), 413, "over the 50000-byte limit"),
            (
                c.post("/localize", data={"k": "3"}, files={"other": ("x.png", png)}),
                400,
                "missing form field 'image'",
            ),
            (c.post("/localize", data={"image": "text"}), 400, "multipart/form-data"),
            (
                c.post("/localize", data={"image": "text"}, files={"other": ("x.png", png)}),
                400,
                "must be a file upload",
            ),
            (
                c.post("/localize", content=png, headers={"content-type": "image/png"}),
                400,
                "multipart/form-data",
            ),
            (_post(c, png, k=0), 400, "field 'k' must be an integer from 1 to 10, got 0"),
            (_post(c, png, k=11), 400, "got 11"),
            (_post(c, png, k="five"), 400, "got 'five'"),
            (_post(c, png, lat=40.44, lon=-79.9), 400, "missing radius_m"),
            (_post(c, png, lat="north", lon=-79.9, radius_m=5), 400, "must be numbers"),
            (_post(c, png, lat=40.44, lon=-79.9, radius_m=-5), 400, "radius must be a positive number"),
            (_post(c, png, lat=95, lon=-79.9, radius_m=5), 400, "out of range"),
        ]
        for r, status, text in cases:
            assert r.status_code == status, (text, r.status_code, r.text)
            body = r.json()
            assert text in body["error"], (text, body)
            assert "Traceback" not in r.text and "/tmp" not in r.text

        # a chunked upload (no Content-Length) over the limit is cut off as it arrives
        def chunks():
            yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
            for _ in range(10):
                yield b"\0" * 10_000

        r = c.post("/localize", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413 and "limit" in r.json()["error"]
        assert _post(c, png).status_code == 200  # still serving


def test_internal_error_is_500_with_an_id_logged_beside_the_traceback(setup, loaded, caplog):
    app = _app(setup, loaded)

    def broken(jobs):
        raise RuntimeError("model exploded")

    with TestClient(app, raise_server_exceptions=False) as c, caplog.at_level(logging.ERROR, "netvlad.serve"):
        app.state.batcher.fn = broken
        r = _post(c, _png_bytes())
    assert r.status_code == 500
    body = r.json()
    assert body["error"] == "internal error" and len(body["id"]) == 12
    assert "model exploded" not in r.text
    rec = [x for x in caplog.records if body["id"] in x.getMessage()]
    assert rec and rec[0].exc_info and "model exploded" in str(rec[0].exc_info[1])


def test_bearer_token(setup, loaded):
    png = _png_bytes()
    with TestClient(_app(setup, loaded, token="s3cret")) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/").status_code == 200  # the page holds no data
        for path in ("/api/index", "/api/points", "/thumb/0"):
            assert c.get(path).status_code == 401, path
        r = _post(c, png)
        assert r.status_code == 401 and "bearer token" in r.json()["error"]
        assert (
            c.post(
                "/localize", files={"image": ("a.png", png)}, headers={"Authorization": "Bearer wrong"}
            ).status_code
            == 401
        )
        ok = c.post("/localize", files={"image": ("a.png", png)}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/?token=wrong", follow_redirects=False).status_code == 401
        r = c.get("/?token=s3cret", follow_redirects=False)
        assert r.status_code == 303 and "netvlad_token=s3cret" in r.headers["set-cookie"]
        assert c.get("/api/index").status_code == 200  # the browser's cookie now carries it


def test_micro_batcher_batches_and_keeps_order():
    sizes = []

    def fn(items):
        sizes.append(len(items))
        return [ValueError(f"bad {x}") if x == 3 else x * 10 for x in items]

    async def go():
        b = MicroBatcher(fn, max_batch=4, max_wait_s=0.05)
        await b.start()
        res = await asyncio.gather(*(b.submit(i) for i in range(10)), return_exceptions=True)
        await b.stop()
        return res

    res = asyncio.run(go())
    assert [r for i, r in enumerate(res) if i != 3] == [i * 10 for i in range(10) if i != 3]
    assert isinstance(res[3], ValueError) and str(res[3]) == "bad 3"
    assert sum(sizes) == 10 and max(sizes) <= 4 and len(sizes) == 3  # 4 + 4 + 2: the waits filled them


def test_micro_batcher_failure_reaches_every_caller_and_lone_request_waits_briefly():
    import time

    def fn(items):
        raise RuntimeError("boom")

    async def go():
        b = MicroBatcher(fn, max_batch=8, max_wait_s=0.02)
        res = await asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True)
        ok = MicroBatcher(lambda items: items, max_batch=8, max_wait_s=0.02)
        t0 = time.perf_counter()
        one = await ok.submit(7)
        dt = time.perf_counter() - t0
        await b.stop()
        await ok.stop()
        return res, one, dt

    res, one, dt = asyncio.run(go())
    assert all(isinstance(r, RuntimeError) and str(r) == "boom" for r in res)
    assert one == 7 and dt < 0.5
    with pytest.raises(ValueError, match="max_batch must be ≥ 1"):
        MicroBatcher(fn, max_batch=0)


def test_serve_cli_refuses_open_bind_without_token(setup, capsys):
    from netvlad.cli import main

    _, idx, _, _ = setup
    assert main(["serve", str(idx), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert (
        "--host 0.0.0.0 is reachable from other machines: give --token" in err and len(err.splitlines()) == 1
    )
    from netvlad.cli.serve_cmd import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_real_server_over_http_batches_concurrent_requests(setup, capsys):
    import httpx

    root, idx, names, utm = setup
    want = _query_json(setup, capsys, str(root / names[2]), "--k", "4")[0]
    with running_server(idx, "--max-batch", "8", "--max-wait-ms", "50") as url:
        assert httpx.get(url + "/api/index").json()["size"] == 8

        def ask(i):
            with httpx.Client(timeout=60) as c:
                data = (root / names[i % 8]).read_bytes()
                return c.post(url + "/localize", files={"image": (f"q{i}.png", data)}, data={"k": "4"})

        with ThreadPoolExecutor(8) as pool:
            rs = list(pool.map(ask, range(16)))
        bad = httpx.post(url + "/localize", files={"image": ("x.jpg", b"nope")})
    assert [r.status_code for r in rs] == [200] * 16
    assert [r.json()["results"][0]["name"] for r in rs] == [names[i % 8] for i in range(16)]
    _same(rs[2].json(), want)
    assert bad.status_code == 400 and bad.json() == {"error": "x.jpg: not an image Pillow can read"}


def test_model_work_runs_off_the_event_loop(setup, loaded):
    """While a slow batch is in the model, the loop still answers /healthz at once."""
    import threading
    import time

    app = _app(setup, loaded, max_wait_ms=0)
    started = threading.Event()

    def slow(jobs):
        started.set()
        time.sleep(1.5)
        return [RuntimeError("done")] * len(jobs)

    with TestClient(app, raise_server_exceptions=False) as c:
        app.state.batcher.fn = slow
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(_post, c, _png_bytes())
            assert started.wait(10)
            t0 = time.perf_counter()
            assert c.get("/healthz").status_code == 200
            dt = time.perf_counter() - t0
            assert not fut.done()
            assert fut.result().status_code == 500
    assert dt < 1.0

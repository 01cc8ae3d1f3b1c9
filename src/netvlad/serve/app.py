"""The localisation service: an ASGI application (FastAPI) around a loaded index and model.

Routes: ``GET /healthz``, ``GET /api/index`` (what is loaded), ``GET /api/points`` (database
positions for the map), ``POST /localize`` (multipart field ``image``; optional ``k``, ``lat``,
``lon``, ``radius_m``), ``GET /thumb/{id}`` (a database image of the loaded index, by its id:
no client-given path is ever opened), ``GET /`` (the page) and ``/static/`` (its script and the
vendored Leaflet). Run it with uvicorn (``netvlad serve``).

Errors are JSON ``{"error": ...}``: 4xx say what was wrong with the request; an internal failure
is a 500 carrying an id that is logged next to the traceback, and no traceback reaches a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import logging
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from netvlad.extract import DEFAULT_MAX_PIXELS, ModelImageReader
from netvlad.rerank.prior import utm_latlon
from netvlad.serve.batching import MicroBatcher
from netvlad.serve.localize import describe_images, index_summary, localize_descriptors
from netvlad.serve.upload import RequestError, UploadJob, read_job, too_large_text

log = logging.getLogger("netvlad.serve")

TOKEN_COOKIE = "netvlad_token"
_PUBLIC = ("/healthz", "/static/", "/favicon.ico")


@dataclass
class ServeConfig:
    """Settings of the service.

    Attributes:
        k_default, k_max: results per request when ``k`` is not given, and the most allowed.
        max_upload_bytes: largest request body (413 above it).
        max_batch, max_wait_ms: micro-batching (see :class:`MicroBatcher`).
        device: torch device of the model.
        token: bearer token every route but ``/healthz`` and the static files require (None: none).
        max_side: ``ExtractConfig.max_side`` for uploads (None: the model's preprocessing).
        max_pixels, oversize, exif_orientation: the image policy of ``netvlad query``.
        max_points: most database positions ``/api/points`` returns (an even sample of a big index).
    """

    k_default: int = 5
    k_max: int = 100
    max_upload_bytes: int = 20 * 2**20
    max_batch: int = 8
    max_wait_ms: float = 5.0
    device: str = "cpu"
    token: str | None = None
    max_side: int | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    oversize: str = "downscale"
    exif_orientation: bool = True
    max_points: int = 20000

    def image_settings(self) -> dict:
        return {
            "max_pixels": self.max_pixels,
            "oversize": self.oversize,
            "exif_orientation": self.exif_orientation,
        }


class Localizer:
    """The model side of a batch: upload files → descriptors → result objects (or a RequestError
    per bad image). Runs in the batcher's worker thread."""

    def __init__(self, index, model, config: ServeConfig):
        self.index, self.model, self.cfg = index, model, config
        self._reader = ModelImageReader(model, **config.image_settings())

    def __call__(self, jobs: list[UploadJob]) -> list:
        desc = describe_images(
            self.model,
            [j.path for j in jobs],
            self.cfg.device,
            batch_size=len(jobs),
            max_side=self.cfg.max_side,
            skip_bad=True,
            num_workers=0,
            **self.cfg.image_settings(),
        )
        out = []
        for j, row in zip(jobs, desc):
            if not np.isfinite(row).all():
                out.append(RequestError(400, self._why_bad(j)))
                continue
            out.append(localize_descriptors(self.index, row[None], j.k, [j.label], [j.prior])[0])
        return out

    def _why_bad(self, job: UploadJob) -> str:
        """The reason an upload gave no descriptor, naming the upload instead of its temp file."""
        try:
            self._reader(job.path)
        except ValueError as exc:
            return str(exc).replace(str(job.path), job.label)
        return f"{job.label}: the model produced a non-finite descriptor for it"


class _Thumbnails:
    """JPEG thumbnails of database images by id, from ``db_paths`` only; a small LRU cache."""

    def __init__(self, index, db_paths: Mapping[str, Path] | None, side: int = 256, cache: int = 512):
        self.index, self.paths, self.side, self.size = index, dict(db_paths or {}), side, cache
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def path(self, i: int) -> Path | None:
        if self.index.names is None or not 0 <= i < len(self.index.names):
            return None
        return self.paths.get(self.index.names[i])

    def __call__(self, i: int) -> bytes | None:
        with self._lock:
            if i in self._cache:
                self._cache.move_to_end(i)
                return self._cache[i]
        p = self.path(i)
        if p is None:
            return None
        from PIL import Image, ImageOps

        try:
            with Image.open(p) as img:
                img = ImageOps.exif_transpose(img).convert("RGB")
                img.thumbnail((self.side, self.side))
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=80)
        except (OSError, ValueError, SyntaxError):
            return None
        data = buf.getvalue()
        with self._lock:
            self._cache[i] = data
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return data


def _static_dir() -> Path:
    return Path(str(resources.files("netvlad.serve") / "static"))


def _authorised(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(TOKEN_COOKIE, "")
    return hmac.compare_digest(given.encode(), token.encode())


@dataclass
class _ServeState:
    """What the running service learns at startup: ready for requests, and its upload folder."""

    ready: bool = False
    tmp: Path | None = None


def _lifespan(batcher: MicroBatcher, state: _ServeState):
    """Startup/shutdown: the upload temp folder and the batcher's worker live as long as the app."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.tmp = Path(tempfile.mkdtemp(prefix="netvlad-serve-"))
        await batcher.start()
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            await batcher.stop()
            shutil.rmtree(state.tmp, ignore_errors=True)

    return lifespan


def _add_guard(app: FastAPI, cfg: ServeConfig) -> None:
    """Middleware: the bearer token (all but the public paths and the page) and the upload limit."""

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if cfg.token and not request.url.path.startswith(_PUBLIC) and request.url.path != "/":
            if not _authorised(request, cfg.token):
                return JSONResponse(
                    {"error": "missing or wrong bearer token (Authorization: Bearer TOKEN)"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > cfg.max_upload_bytes:
                return _too_large(cfg)
        return await call_next(request)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as JSON ``{"error": ...}``; an internal one with an id logged beside its traceback."""

    @app.exception_handler(RequestError)
    async def _bad(request: Request, exc: RequestError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        eid = uuid.uuid4().hex[:12]
        log.error("internal error %s on %s %s", eid, request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal error", "id": eid}, status_code=500)


def _info_routes(
    index, cfg: ServeConfig, summary: dict, thumbs: _Thumbnails, state: _ServeState
) -> APIRouter:
    """``/healthz``, ``/api/index``, ``/api/points`` and ``/thumb/{id}``: what is loaded, no model."""
    router = APIRouter()

    @router.get("/healthz")
    async def healthz():
        if not state.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        return {"status": "ok"}

    @router.get("/api/index")
    async def api_index():
        return {
            **summary,
            "k_default": cfg.k_default,
            "k_max": cfg.k_max,
            "max_upload_bytes": cfg.max_upload_bytes,
            "thumbnails": bool(thumbs.paths),
        }

    @router.get("/api/points")
    async def api_points():
        if index.utm is None:
            return {"ids": [], "utm": [], "latlon": None}
        ids = np.arange(index.ntotal)[:: max(1, -(-index.ntotal // cfg.max_points))]
        utm = np.asarray(index.utm, dtype=np.float64)[ids]
        zone = index.meta.get("zone")
        return {
            "ids": ids.tolist(),
            "utm": utm.round(2).tolist(),
            "latlon": utm_latlon(utm, zone) if zone else None,
        }

    @router.get("/thumb/{image_id}")
    async def thumb(image_id: str):
        if not image_id.isdigit():
            raise RequestError(404, "no such database image")
        data = await asyncio.get_running_loop().run_in_executor(None, thumbs, int(image_id))
        if data is None:
            raise RequestError(404, "no thumbnail for this database image")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return router


def _localize_routes(index, cfg: ServeConfig, batcher: MicroBatcher, state: _ServeState) -> APIRouter:
    """``POST /localize``: the upload → the batcher → the result object."""
    router = APIRouter()

    @router.post("/localize")
    async def localize(request: Request):
        job = await read_job(request, cfg, index, state.tmp)
        try:
            res = await batcher.submit(job)
        finally:
            job.path.unlink(missing_ok=True)
        return JSONResponse(res)

    return router


def _page_routes(cfg: ServeConfig) -> APIRouter:
    """``GET /``: the page; ``?token=`` sets the token cookie and redirects to the bare page."""
    router = APIRouter()

    @router.get("/")
    async def page(request: Request):
        tok = request.query_params.get("token")
        if cfg.token and tok is not None:
            if not hmac.compare_digest(tok.encode(), cfg.token.encode()):
                raise RequestError(401, "wrong token")
            resp = RedirectResponse("/", status_code=303)
            resp.set_cookie(TOKEN_COOKIE, tok, httponly=True, samesite="strict")
            return resp
        return FileResponse(_static_dir() / "index.html", headers={"Cache-Control": "no-cache"})

    return router


def create_app(
    index,
    model,
    config: ServeConfig | None = None,
    db_paths: Mapping[str, Path] | None = None,
    model_ref: str | None = None,
) -> FastAPI:
    """The ASGI application serving ``index`` with ``model`` (both loaded already and checked to
    fit each other: :func:`netvlad.serve.check_model_for_index`).

    Args:
        db_paths: database image name → file, for ``/thumb/{id}`` (None: no thumbnails).
        model_ref: how the model is named in ``/api/index``.
    """
    cfg = config or ServeConfig()
    batcher = MicroBatcher(Localizer(index, model, cfg), cfg.max_batch, cfg.max_wait_ms / 1000)
    thumbs = _Thumbnails(index, db_paths)
    state = _ServeState()
    app = FastAPI(title="netvlad localisation service", lifespan=_lifespan(batcher, state))
    app.state.batcher = batcher
    app.state.config = cfg
    _add_guard(app, cfg)
    _add_error_handlers(app)
    app.include_router(_info_routes(index, cfg, index_summary(index, model_ref), thumbs, state))
    app.include_router(_localize_routes(index, cfg, batcher, state))
    app.include_router(_page_routes(cfg))
    app.mount("/static", StaticFiles(directory=_static_dir()), name="static")
    return app


def _too_large(cfg: ServeConfig) -> JSONResponse:
    return JSONResponse({"error": too_large_text(cfg.max_upload_bytes)}, status_code=413)

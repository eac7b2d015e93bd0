"""``flowerfast serve``'s application: a web page and an HTTP API for a trained model (FastAPI).

The routes:

* ``GET /``: the page (``static/``: plain HTML, CSS and a small script, every file served from
  here, so it works with no internet; its Content-Security-Policy forbids anything else);
* ``POST /predict``: one or many images as ``multipart/form-data`` in the field ``files``, and
  ``?top_k=N``; the answer is ``flowerfast predict --json``'s list, made by the same code
  (:meth:`~flowerfast.infer.predict.LoadedModel.probabilities_of`, :func:`~flowerfast.infer.predict.predictions_from`);
* ``POST /cam``: one image in the same field; the answer is the PNG of its Grad-CAM heatmap (where
  the model looked for its answer), with the cam extra;
* ``GET /model``: what the model is (architecture, classes, image size, validation accuracy);
* ``GET /health``: for load balancers, never behind the API key;
* ``GET /openapi.json``: the schema. FastAPI's ``/docs`` page is off: it loads Swagger UI from a CDN.

The rest of the package does the work: :mod:`~flowerfast.serving.uploads` reads a request's files
within its limits, :mod:`~flowerfast.serving.service` decodes and computes them,
:mod:`~flowerfast.serving.errors` answers every error as JSON and :mod:`~flowerfast.serving.server`
runs the application on uvicorn.
"""

import contextlib
import secrets
from importlib import resources
from pathlib import Path
from typing import Optional

from flowerfast.core.errors import FlowerfastError
from flowerfast.serving.config import FILES_FIELD, ServeConfig
from flowerfast.serving.errors import ApiError, install_error_handlers
from flowerfast.serving.service import ModelService
from flowerfast.serving.uploads import image_uploads, read_form

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'"
)


def require_serve_extra() -> None:
    """FastAPI, uvicorn and python-multipart are an extra: say which one when they are missing."""
    import importlib.util

    for module in ("fastapi", "uvicorn", "python_multipart"):
        if importlib.util.find_spec(module) is None:
            raise FlowerfastError('flowerfast serve needs the serve extra: pip install "flowerfast[serve]"')


def load_page_files() -> Path:
    """The folder of the page's files, inside the installed package."""
    return Path(str(resources.files("flowerfast") / "static"))


def create_app(model, config: Optional[ServeConfig] = None, device: Optional[str] = None):
    """The FastAPI application serving ``model`` (a :class:`~flowerfast.infer.predict.LoadedModel`, a
    run folder or a model file). Run it with :func:`~flowerfast.serving.server.serve`, any ASGI
    server, or FastAPI's ``TestClient`` (as a context manager, so the batch queue starts).
    ``app.state.service`` is its :class:`~flowerfast.serving.service.ModelService`."""
    require_serve_extra()
    from fastapi import FastAPI

    from flowerfast import __version__
    from flowerfast.infer.predict import as_loaded_model

    config = config or ServeConfig()
    loaded = as_loaded_model(model, device=device)
    service = ModelService(loaded, config)
    app = FastAPI(
        title="flowerfast",
        version=__version__,
        lifespan=service_lifespan(service),
        docs_url=None,
        redoc_url=None,
        description=f"A {loaded.spec.arch} flower classifier. POST images to /predict "
        f"as multipart/form-data in the field '{FILES_FIELD}'.",
    )
    app.state.service = service
    install_error_handlers(app)
    add_page_routes(app, load_page_files())
    add_api_routes(app, service)
    return app


def service_lifespan(service: ModelService):
    """The application's lifespan: the service's threads (batch queue, decoders) start when the
    server does and stop with it, so an application that is built but never run holds none."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    return lifespan


def key_checker(config: ServeConfig):
    """The dependency every keyed route runs: the key from ``X-API-Key`` or ``Authorization:
    Bearer``, compared in constant time (no timing to guess it by); no check when
    ``config.api_key`` is ``None``."""
    from fastapi import Request

    def require_key(request: Request) -> None:
        if config.api_key is None:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None:
            raise ApiError(
                401, "this server needs an API key: send it in the X-API-Key header (or Authorization: Bearer KEY)"
            )
        if not secrets.compare_digest(given.encode("utf-8", "surrogateescape"), config.api_key.encode("utf-8")):
            raise ApiError(401, "wrong API key")

    return require_key


def add_page_routes(app, page: Path) -> None:
    """``GET /`` and ``/static/``: the page and its files, never behind the key (the page asks
    for it); the page is sent with a Content-Security-Policy allowing this server alone, and
    ``no-cache`` so a new version of flowerfast is seen at once."""
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(
            page / "index.html",
            headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"},
        )

    app.mount("/static", StaticFiles(directory=page), name="static")


def predict_body_schema(config: ServeConfig) -> dict:
    """The OpenAPI ``requestBody`` of ``/predict``: the route reads the multipart form itself
    (within its limits, see :mod:`~flowerfast.serving.uploads`), so FastAPI cannot infer it."""
    files = {
        "type": "array",
        "items": {"type": "string", "format": "binary"},
        "description": f"image files (at most {config.max_files}, {config.max_file_mb:g} MB each)",
    }
    schema = {"type": "object", "required": [FILES_FIELD], "properties": {FILES_FIELD: files}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def refuse_bad_top_k(top_k: int, n_classes: int) -> None:
    """Refuse a ``top_k`` the model cannot answer, before the body is read (a 422, where
    :func:`~flowerfast.infer.predict.check_top_k` raises the library's error, which would be a 500)."""
    if not 1 <= top_k <= n_classes:
        raise ApiError(422, f"top_k must be between 1 and {n_classes} (the model's classes), not {top_k}")


def add_api_routes(app, service: ModelService) -> None:
    """``/health`` (open, for load balancers), and ``/model`` and ``/predict`` behind the API key
    when there is one."""
    from fastapi import Depends, Query, Request

    config, n_classes = service.config, service.loaded.spec.n_classes
    keyed = [Depends(key_checker(config))]

    @app.get("/health", summary="Is the server up (never needs the API key)")
    async def health():
        return service.health()

    @app.get("/model", dependencies=keyed, summary="What the model is: architecture, classes, image size, accuracy")
    async def model_info():
        return service.description

    @app.post(
        "/predict",
        dependencies=keyed,
        openapi_extra=predict_body_schema(config),
        summary="Classify images: flowerfast predict --json's answer, one entry per file",
    )
    async def predict(
        request: Request,
        top_k: int = Query(1, description="how many classes to return per image"),
        min_confidence: Optional[float] = Query(
            None, ge=0, le=1, description="below this top probability the answer is unknown (default: the server's)"
        ),
    ):
        refuse_bad_top_k(top_k, n_classes)
        form = await read_form(request, config)
        try:
            return await service.predict(image_uploads(form, config), top_k, min_confidence)
        finally:
            await form.close()

    add_cam_route(app, service, keyed)


def add_cam_route(app, service: ModelService, keyed: list) -> None:
    """``POST /cam``: the Grad-CAM overlay of one image as a PNG; a 501 naming the extra when the
    server lacks it (the rest of the server works without it)."""
    from fastapi import Request
    from fastapi.responses import Response

    config = service.config

    @app.post(
        "/cam",
        dependencies=keyed,
        openapi_extra=predict_body_schema(config),
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "the heatmap drawn over the image"}},
        summary="Where the model looked: one image's Grad-CAM heatmap for its predicted class, as a PNG",
    )
    async def cam(request: Request):
        from flowerfast.infer.cam import require_cam_extra

        try:
            require_cam_extra()
        except FlowerfastError as exc:
            raise ApiError(501, str(exc)) from None
        form = await read_form(request, config)
        try:
            uploads = image_uploads(form, config)
            if len(uploads) != 1:
                raise ApiError(422, f"send one image to /cam, not {len(uploads)}")
            png = await service.heatmap(uploads[0])
        finally:
            await form.close()
        return Response(png, media_type="image/png")

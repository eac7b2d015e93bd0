"""``flowerfast serve``: a web page and an HTTP API for a trained model (FastAPI on uvicorn).

The routes:

* ``GET /``: the page (``static/``: plain HTML, CSS and a small script, every file served from
  here, so it works with no internet; its Content-Security-Policy forbids anything else);
* ``POST /predict``: one or many images as ``multipart/form-data`` in the field ``files``, and
  ``?top_k=N``; the answer is ``flowerfast predict --json``'s list, made by the same code
  (:meth:`~flowerfast.infer.predict.LoadedModel.probabilities_of`, :func:`~flowerfast.infer.predict.predictions_from`);
* ``GET /model``: what the model is (architecture, classes, image size, validation accuracy);
* ``GET /health``: for load balancers, never behind the API key;
* ``GET /openapi.json``: the schema. FastAPI's ``/docs`` page is off: it loads Swagger UI from a CDN.

Why the work is split the way it is: the event loop only moves bytes. Uploads are decoded in a
small pool of threads (:attr:`ServeConfig.decode_threads`, which also bounds the memory decoding
takes) and the network runs in the :class:`~flowerfast.serving.batching.BatchQueue`'s own thread, on
batches of the images of concurrent requests; so the server keeps accepting and answering
(``/health`` included) while it computes.

Why bad requests cannot hurt it: a request body is counted as it arrives and refused past
``max_files x max_file_mb`` (or at once when its Content-Length says so); parts larger than the
spool size go to temporary files, not memory; every file is opened with the pixel limit of
:func:`~flowerfast.data.imagefiles.open_image` (a decompression bomb is refused before decoding) and a
truncated or foreign file fails its decode. Each gets a 4xx with ``{"error": "..."}``.
"""


import asyncio
import contextlib
import os
import secrets
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Optional

from flowerfast.core.errors import FlowerfastError
from flowerfast.data.imagefiles import ImageTooLargeError, describe_error

API_KEY_ENV = "FLOWERFAST_API_KEY"
FILES_FIELD = "files"
MAX_DECODE_THREADS = 4
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
                           "connect-src 'self'; frame-ancestors 'none'")


@dataclass
class ServeConfig:
    """How the server listens, batches and bounds its requests.

    ``max_batch`` images at most go through the network together, waiting at most ``max_wait_ms``
    for others to join (``max_batch=1`` turns batching off); ``max_file_mb`` and ``max_files``
    bound one request; ``api_key`` (or ``$FLOWERFAST_API_KEY``, read by the CLI) is required by
    every API call but ``/health``; ``decode_threads`` decode uploads (default: the cores, up to 4).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Optional[str] = None
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_file_mb: float = 20.0
    max_files: int = 32
    decode_threads: Optional[int] = None
    access_log: bool = True

    def __post_init__(self):
        checks = [(self.max_batch >= 1, f"--max-batch must be at least 1, not {self.max_batch}"),
                  (self.max_wait_ms >= 0, f"--max-wait-ms must not be negative, not {self.max_wait_ms:g}"),
                  (self.max_file_mb > 0, f"--max-file-mb must be positive, not {self.max_file_mb:g}"),
                  (self.max_files >= 1, f"--max-files must be at least 1, not {self.max_files}"),
                  (0 <= self.port <= 65535, f"--port must be between 0 and 65535, not {self.port}"),
                  (self.decode_threads is None or self.decode_threads >= 1,
                   f"decode_threads must be at least 1, not {self.decode_threads}"),
                  (self.api_key is None or self.api_key.strip() != "", "the API key must not be empty")]
        for ok, message in checks:
            if not ok:
                raise FlowerfastError(message)

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)

    @property
    def max_request_bytes(self) -> int:
        """A whole request: every file at its limit, plus room for the multipart headers."""
        return self.max_files * (self.max_file_bytes + 16 * 1024) + 64 * 1024

    def threads_for_decoding(self) -> int:
        return self.decode_threads or max(1, min(MAX_DECODE_THREADS, os.cpu_count() or 1))


def require_serve_extra() -> None:
    """FastAPI, uvicorn and python-multipart are an extra: say which one when they are missing."""
    import importlib.util

    for module in ("fastapi", "uvicorn", "python_multipart"):
        if importlib.util.find_spec(module) is None:
            raise FlowerfastError('flowerfast serve needs the serve extra: pip install "flowerfast[serve]"')


# ----------------------------------------------------------------------------------------------
# What the model is


def model_file(source: Path) -> Path:
    """The weights file a model was read from: for a run folder, the one ``load_model`` chose
    (:func:`~flowerfast.models.classifier.model_paths`: best, else final); a trusted fastai export is its own file."""
    from flowerfast.models.classifier import model_paths

    try:
        return model_paths(source)[0]
    except FlowerfastError:
        return source


def model_accuracy(weights: Path) -> dict[str, Any]:
    """The validation accuracy of a run's model, from its run folder's ``summary.json``:
    ``best.*`` has the best epoch's, ``final.*`` the last epoch's. Empty for a model file alone."""
    from flowerfast.runs.folder import BEST, FINAL, SUMMARY, RunFolder

    folder, stem = weights.parent, weights.name.split(".")[0]
    if stem not in (BEST, FINAL) or not (folder / SUMMARY).is_file():
        return {}
    try:
        summary = RunFolder(folder).read_summary()
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if stem == BEST:
        accuracy = summary.best_valid_accuracy_rescored or summary.best_valid_accuracy
        return {"valid_accuracy": accuracy, "epoch": summary.best_epoch, "epochs": summary.epochs, "run": folder.name}
    return {"valid_accuracy": summary.final_valid_accuracy, "epoch": summary.epochs, "epochs": summary.epochs,
            "run": folder.name}


def describe_model(loaded, config: ServeConfig) -> dict[str, Any]:
    """``GET /model``: what the page shows and what a client needs to call ``/predict``."""
    from flowerfast import __version__

    spec, weights = loaded.spec, model_file(loaded.source)
    return {
        "arch": spec.arch, "classes": list(spec.classes), "n_classes": spec.n_classes, "size": spec.size,
        "mean": list(loaded.preprocessing.mean), "std": list(loaded.preprocessing.std),
        "model": weights.name, "valid_accuracy": None, "epoch": None, "epochs": None, "run": None,
        **model_accuracy(weights),
        "device": str(loaded.device), "precision": loaded.precision,
        "batching": {"max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms},
        "limits": {"max_file_mb": config.max_file_mb, "max_files": config.max_files, "field": FILES_FIELD},
        "api_key_required": config.api_key is not None,
        "flowerfast": __version__,
    }


# ----------------------------------------------------------------------------------------------
# Errors as JSON


class ApiError(Exception):
    """A request the server refuses: its status, a message for a person, and optional details."""

    def __init__(self, status: int, message: str, **details):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


class RequestTooLarge(Exception):
    """The request body went past :attr:`ServeConfig.max_request_bytes` while it was read."""


def counted_receive(receive, limit: int):
    """``receive`` that raises :class:`RequestTooLarge` once the body passes ``limit`` bytes, so
    a request is never read further than that (chunked bodies have no Content-Length to check)."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message.get("type") == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise RequestTooLarge()
        return message

    return wrapped


def describe_upload_error(exc: BaseException) -> str:
    """Why an upload is not an image, in one line. Pillow names a file it cannot identify by its
    path, which an upload does not have (it would show a temporary file object's address)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "UnidentifiedImageError: not an image, or in a format Pillow cannot read"
    return describe_error(exc)


def size_text(n_bytes: float) -> str:
    return f"{n_bytes / (1024 * 1024):.1f} MB"


# ----------------------------------------------------------------------------------------------
# The application


class ModelService:
    """The loaded model behind the routes: decoding uploads, the batch queue, predictions."""

    def __init__(self, loaded, config: ServeConfig):
        self.loaded = loaded
        self.config = config
        self.queue = None
        self.decoders: Optional[ThreadPoolExecutor] = None
        self.requests = 0
        self.description = describe_model(loaded, config)  # read once: the run's summary does not change

    async def start(self) -> None:
        from flowerfast.serving.batching import BatchQueue

        self.decoders = ThreadPoolExecutor(max_workers=self.config.threads_for_decoding(),
                                           thread_name_prefix="flowerfast-decode")
        self.queue = BatchQueue(self.run_batch, max_batch=self.config.max_batch,
                                max_wait=self.config.max_wait_ms / 1000)
        await self.queue.start()

    async def stop(self) -> None:
        if self.queue is not None:
            await self.queue.stop()
        if self.decoders is not None:
            self.decoders.shutdown(wait=True)

    def run_batch(self, images: list) -> list:
        """The network on images of any number of requests: one row of probabilities each."""
        import torch

        shapes: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):  # flowerfast's images are all one size; a fastai export's may differ
            shapes.setdefault(tuple(image.shape), []).append(i)
        rows: list = [None] * len(images)
        for indices in shapes.values():
            probs = self.loaded.probabilities_of(torch.stack([images[i] for i in indices]))
            for i, row in zip(indices, probs):
                rows[i] = row
        return rows

    def decode(self, upload) -> Any:
        """One upload to the network's ``uint8`` image, by the model's own preprocessing (as predict)."""
        upload.file.seek(0)
        return self.loaded.preprocessing.load(upload.file)

    async def predict(self, uploads: list, top_k: int) -> list[dict]:
        import torch

        from flowerfast.infer.predict import predictions_from

        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(*[loop.run_in_executor(self.decoders, self._try_decode, u) for u in uploads],
                                       return_exceptions=False)
        names = [upload.filename or f"upload-{i + 1}" for i, upload in enumerate(uploads)]
        errors = {i: reason for i, (image, reason) in enumerate(decoded) if reason is not None}
        good = [image for image, reason in decoded if reason is None]
        if not good:
            too_large = all(reason.startswith(ImageTooLargeError.__name__) for reason in errors.values())
            files = [{"file": names[i], "error": errors[i]} for i in sorted(errors)]
            what = names[0] if len(names) == 1 else f"none of the {len(names)} files"
            message = (f"{what} could not be read as an image: {errors[0]}" if len(names) == 1
                       else f"{what} could be read as an image")
            raise ApiError(413 if too_large else 422, message, files=files)
        rows = await self.queue.submit(good)
        self.requests += 1
        predictions = predictions_from(names, torch.stack(rows), errors, self.loaded.classes, top_k)
        return [p.to_dict() for p in predictions]

    def _try_decode(self, upload) -> tuple[Any, Optional[str]]:
        try:
            return self.decode(upload), None
        except Exception as exc:  # every decode failure means "tell the client why"
            return None, describe_upload_error(exc)

    def health(self) -> dict:
        stats = self.queue.stats.to_dict() if self.queue is not None else {}
        return {"status": "ok", "arch": self.loaded.spec.arch, "requests": self.requests, **stats}


def load_page_files() -> Path:
    """The folder of the page's files, inside the installed package."""
    return Path(str(resources.files("flowerfast") / "static"))


def create_app(model, config: Optional[ServeConfig] = None, device: Optional[str] = None):
    """The FastAPI application serving ``model`` (a :class:`~flowerfast.infer.predict.LoadedModel`, a
    run folder or a model file). Run it with :func:`serve`, any ASGI server, or FastAPI's
    ``TestClient`` (as a context manager, so the batch queue starts)."""
    require_serve_extra()
    from fastapi import Depends, FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser

    from flowerfast import __version__
    from flowerfast.infer.predict import as_loaded_model

    config = config or ServeConfig()
    loaded = as_loaded_model(model, device=device)
    service = ModelService(loaded, config)
    page = load_page_files()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="flowerfast", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=f"A {loaded.spec.arch} flower classifier. POST images to /predict as "
                              f"multipart/form-data in the field '{FILES_FIELD}'.")
    app.state.service = service

    def error_response(status: int, message: str, headers=None, **details) -> JSONResponse:
        return JSONResponse({"error": message, **details}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.message, headers=headers, **exc.details)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        problems = ["{}: {}".format(".".join(str(p) for p in e.get("loc", ())[1:]) or "request", e.get("msg", ""))
                    for e in exc.errors()]
        return error_response(422, "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request, exc: Exception):
        message = str(exc) if isinstance(exc, FlowerfastError) else describe_error(exc)
        return error_response(500, f"the server could not compute this request: {message}")

    def require_key(request: Request) -> None:
        if config.api_key is None:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None:
            raise ApiError(401, "this server needs an API key: send it in the X-API-Key header "
                                "(or Authorization: Bearer KEY)")
        if not secrets.compare_digest(given.encode("utf-8", "surrogateescape"), config.api_key.encode("utf-8")):
            raise ApiError(401, "wrong API key")

    keyed = [Depends(require_key)]

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(page / "index.html", headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                                                          "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=page), name="static")

    @app.get("/health", summary="Is the server up (never needs the API key)")
    async def health():
        return service.health()

    @app.get("/model", dependencies=keyed, summary="What the model is: architecture, classes, image size, accuracy")
    async def model_info():
        return service.description

    multipart_body = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": [FILES_FIELD],
        "properties": {FILES_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"},
                                     "description": f"image files (at most {config.max_files}, "
                                                    f"{config.max_file_mb:g} MB each)"}}}}}}}

    @app.post("/predict", dependencies=keyed, openapi_extra=multipart_body,
              summary="Classify images: flowerfast predict --json's answer, one entry per file")
    async def predict(request: Request, top_k: int = Query(1, description="how many classes to return per image")):
        if not 1 <= top_k <= loaded.spec.n_classes:
            raise ApiError(422, f"top_k must be between 1 and {loaded.spec.n_classes} (the model's classes), "
                                f"not {top_k}")
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            raise ApiError(415, f"send the images as multipart/form-data in the field '{FILES_FIELD}'")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > config.max_request_bytes:
            raise ApiError(413, f"the request is {size_text(int(declared))}, over this server's limit of "
                                f"{size_text(config.max_request_bytes)} ({config.max_files} files of "
                                f"{config.max_file_mb:g} MB)")
        limited = Request(request.scope, receive=counted_receive(request.receive, config.max_request_bytes))
        parser = MultiPartParser(limited.headers, limited.stream(), max_files=config.max_files,
                                 max_fields=config.max_files)
        try:
            form = await parser.parse()
        except RequestTooLarge:
            raise ApiError(413, f"the request is over this server's limit of {size_text(config.max_request_bytes)} "
                                f"({config.max_files} files of {config.max_file_mb:g} MB)") from None
        except MultiPartException as exc:
            too_many = "Too many files" in str(exc)
            raise ApiError(413 if too_many else 400,
                           f"at most {config.max_files} files per request" if too_many
                           else f"the multipart body cannot be read: {exc}") from None
        try:
            uploads = [v for v in form.getlist(FILES_FIELD) if isinstance(v, UploadFile)]
            if not uploads:
                raise ApiError(422, f"no image in the request: send one or more files in the multipart field "
                                    f"'{FILES_FIELD}'")
            big = [u for u in uploads if (u.size or 0) > config.max_file_bytes]
            if big:
                raise ApiError(413, f"{big[0].filename or 'a file'} is {size_text(big[0].size)}, over the limit of "
                                    f"{config.max_file_mb:g} MB per file",
                               files=[{"file": u.filename, "error": "over the size limit"} for u in big])
            return await service.predict(uploads, top_k)
        finally:
            await form.close()

    return app


# ----------------------------------------------------------------------------------------------
# Running it


def listening_socket(host: str, port: int) -> socket.socket:
    """Bind before the server starts, so a taken port or a bad address is one clear error (and
    ``port=0`` picks a free port, told by :func:`serve`'s ``on_ready``)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise FlowerfastError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise FlowerfastError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def log_config(access_log: bool) -> dict:
    """uvicorn's logging: its own messages only when something is wrong, and one line per request
    when ``access_log`` (flowerfast says itself when the server is ready)."""
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
        "loggers": {"uvicorn.error": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
                    "uvicorn.access": {"handlers": ["stderr"], "level": "INFO" if access_log else "WARNING",
                                       "propagate": False}},
    }


def serve(model, config: Optional[ServeConfig] = None, device: Optional[str] = None,
          on_ready: Optional[Callable[[str, dict], None]] = None) -> None:
    """Serve ``model`` until Ctrl-C or SIGTERM; ``on_ready(url, model_description)`` is called once
    it accepts connections. The signal is raised again once the server has stopped (uvicorn's
    way), so the caller ends as the signal asks: ``KeyboardInterrupt`` for Ctrl-C."""
    require_serve_extra()
    import uvicorn

    config = config or ServeConfig()
    app = create_app(model, config, device=device)
    sock = listening_socket(config.host, config.port)
    service: ModelService = app.state.service
    app.router.lifespan_context = _chain(app.router.lifespan_context, on_ready, sock, service)
    server = uvicorn.Server(uvicorn.Config(app, log_config=log_config(config.access_log), timeout_graceful_shutdown=3,
                                           timeout_keep_alive=5, lifespan="on"))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def _chain(lifespan, on_ready, sock, service):
    """``lifespan`` followed by the ready call, once the batch queue runs."""

    @contextlib.asynccontextmanager
    async def chained(app):
        async with lifespan(app):
            if on_ready is not None:
                on_ready(url_of(sock), service.description)
            yield

    return chained

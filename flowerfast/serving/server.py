"""Running the application on uvicorn until Ctrl-C or SIGTERM: :func:`serve`.

The socket is bound here, before uvicorn starts, so a taken port or a bad address is one clear
error, and ``port=0`` picks a free port whose address the ready call is told.
"""

import contextlib
import socket
from typing import Callable, Optional

from flowerfast.core.errors import FlowerfastError
from flowerfast.serving.app import create_app, require_serve_extra
from flowerfast.serving.config import ServeConfig
from flowerfast.serving.service import ModelService


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
    """The address a bound socket answers on, as a URL (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def log_config(access_log: bool) -> dict:
    """uvicorn's logging: its own messages only when something is wrong, and one line per request
    when ``access_log`` (flowerfast says itself when the server is ready)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn.error": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
            "uvicorn.access": {
                "handlers": ["stderr"],
                "level": "INFO" if access_log else "WARNING",
                "propagate": False,
            },
        },
    }


def serve(
    model,
    config: Optional[ServeConfig] = None,
    device: Optional[str] = None,
    on_ready: Optional[Callable[[str, dict], None]] = None,
) -> None:
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
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=log_config(config.access_log),
            timeout_graceful_shutdown=3,
            timeout_keep_alive=5,
            lifespan="on",
        )
    )
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

"""``flowerfast serve``: the web page and HTTP API of :mod:`flowerfast.serving.app`, on uvicorn
(:mod:`flowerfast.serving.server`)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Optional

import typer

from flowerfast.cli import options as o
from flowerfast.cli.app import app
from flowerfast.cli.failures import user_errors
from flowerfast.cli.output import err_console
from flowerfast.cli.use import Device, InferencePrecision, MinConfidence, Model, TrustPickle
from flowerfast.serving.config import API_KEY_ENV, ServeConfig

DEFAULTS = ServeConfig()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command(
    epilog="Example: flowerfast serve runs/resnet18-20240101-120000/ --port 8000, then open "
    "http://127.0.0.1:8000 or: curl -F files=@rose.jpg 'http://127.0.0.1:8000/predict?top_k=3'"
)
def serve(
    model: Model,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            metavar="ADDRESS",
            help="Address to listen on; 0.0.0.0 for every network interface (then set an API key).",
        ),
    ] = DEFAULTS.host,
    port: Annotated[
        int, typer.Option("--port", metavar="N", help="Port to listen on; 0 picks a free one.")
    ] = DEFAULTS.port,
    device: Device = o.DeviceChoice.auto,
    api_key: Annotated[
        Optional[str],
        typer.Option(
            "--api-key",
            metavar="KEY",
            envvar=API_KEY_ENV,
            help="Require this key (header X-API-Key or Authorization: Bearer) on every API call but /health; the page asks for it once.",
            show_default=False,
        ),
    ] = None,
    max_batch: Annotated[
        int,
        typer.Option(
            "--max-batch",
            metavar="N",
            help="Most images the network computes together, from concurrent requests; 1 turns batching off.",
        ),
    ] = DEFAULTS.max_batch,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", metavar="MS", help="Longest an image waits for others to fill its batch.")
    ] = DEFAULTS.max_wait_ms,
    max_file_mb: Annotated[
        float, typer.Option("--max-file-mb", metavar="MB", help="Largest upload accepted, per file.")
    ] = DEFAULTS.max_file_mb,
    max_files: Annotated[
        int, typer.Option("--max-files", metavar="N", help="Most files in one request.")
    ] = DEFAULTS.max_files,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="One line per request on stderr.")
    ] = DEFAULTS.access_log,
    trust_pickle: TrustPickle = False,
    precision: InferencePrecision = o.PrecisionChoice.fp32,
    min_confidence: MinConfidence = None,
) -> None:
    """Serve a trained model: a web page to try photos and an HTTP API (needs the serve extra)."""
    with user_errors(stopped=lambda: "the server has stopped"):
        from flowerfast.infer.predict import load_model
        from flowerfast.serving.app import require_serve_extra
        from flowerfast.serving.server import serve as run_server

        require_serve_extra()
        config = ServeConfig(
            host=host,
            port=port,
            api_key=api_key,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_file_mb=max_file_mb,
            max_files=max_files,
            access_log=access_log,
            min_confidence=min_confidence,
        )
        if not is_loopback(host) and api_key is None:
            err_console.print(
                f"[yellow]warning:[/yellow] listening on {host} without --api-key: anyone who can "
                f"reach this machine can use the model",
                soft_wrap=True,
            )
        loaded = load_model(model, device=o.value(device), trust_pickle=trust_pickle, precision=o.value(precision))
        run_server(loaded, config, on_ready=_announce)


def _announce(url: str, described: dict) -> None:
    accuracy = described.get("valid_accuracy")
    facts = [f"{described['n_classes']} classes", f"{described['size']} px", described["device"]]
    if accuracy is not None:
        facts.append(f"validation accuracy {accuracy:.1%}")
    batching = (
        f"batches of up to {described['batching']['max_batch']}, waiting at most "
        f"{described['batching']['max_wait_ms']:g} ms"
        if described["batching"]["max_batch"] > 1
        else "batching off"
    )
    err_console.print(f"serving {described['arch']} ({', '.join(facts)}) at {url}", markup=False, soft_wrap=True)
    err_console.print(
        f"page {url}/ · API {url}/predict · schema {url}/openapi.json · {batching}"
        + (" · API key required" if described["api_key_required"] else "")
        + (f" · unknown below {described['min_confidence']:g}" if described.get("min_confidence") is not None else "")
        + " · Ctrl-C stops it",
        markup=False,
        soft_wrap=True,
    )

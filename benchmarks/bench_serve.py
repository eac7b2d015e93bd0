"""Benchmark: ``flowerfast serve`` with batching on and off, under concurrent clients. Not a test.

    python benchmarks/bench_serve.py [--data ../shared/data/flowers] [--clients 16] [--requests 480]

A real server process (``flowerfast serve --port 0 --device cpu``) on 127.0.0.1 and ``--clients``
concurrent clients (kept-alive connections on asyncio streams, in this process), each posting one real photo per request
until ``--requests`` are done, after a warm-up of two requests per client. Twice per repeat, one
server with batching on (``--max-batch``, ``--max-wait-ms``) and one with it off
(``--max-batch 1``), alternated; the faster run of each counts. Printed: requests/s, latency
p50/p95/p99, errors, the batches the server made (from ``/health``), and the ratio.

The ceiling, measured first in this process: the network alone (as the server runs it,
:meth:`LoadedModel.probabilities_of`) on photos decoded beforehand, in batches of 1 and of
``--max-batch``. Batching cannot make the server faster than that ratio; requests also cost the
server (HTTP, multipart, decoding) and the clients the same work in both modes.

Each is measured at every ``--precisions`` (default ``fp32``, the server's default, and ``auto``:
bf16 autocast where the CPU or GPU has it, which gains far more from large batches).

Without ``--model`` a resnet18 at ``--size`` (128, as the README's first command) is trained for
one epoch from random weights on the embedded photos (the weights do not change the speed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flowerfast  # noqa: E402
from flowerfast.data.imagefiles import image_files_under  # noqa: E402
from flowerfast.infer.predict import load_model  # noqa: E402
from tests.serving import ServerProcess  # noqa: E402


def parse_args():
    here = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=here.parent / "shared" / "data" / "flowers")
    ap.add_argument("--model", type=Path, default=None, help="run folder or model file; default: train one")
    ap.add_argument("--size", type=int, default=128, help="image size of the model trained when --model is not given")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=480, help="timed requests per run")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument(
        "--precisions",
        default="fp32,auto",
        help="the server's --precision, each measured with batching on and off (auto: bf16 where the hardware has it)",
    )
    ap.add_argument("--repeat", type=int, default=2, help="runs of each mode, alternated; the fastest counts")
    return ap.parse_args()


def train_model(size: int, folder: Path) -> Path:
    result = flowerfast.train(
        arch="resnet18", epochs=1, size=size, pretrained=False, device="cpu", out=folder / "model-run"
    )
    return result.run_dir


def network_ceiling(
    model: Path, photos: list[Path], max_batch: int, precision: str, seconds: float = 5.0
) -> dict[int, float]:
    """Images/s of the network alone, batches of 1 and of ``max_batch``, on decoded photos."""
    loaded = load_model(model, device="cpu", precision=precision)
    images = torch.stack([loaded.preprocessing.load(p) for p in photos[:max_batch]])
    rates = {}
    for bs in (1, max_batch):
        batches = [images[i : i + bs] for i in range(0, max_batch, bs)]
        for b in batches[:3]:
            loaded.probabilities_of(b)  # warm-up: kernels chosen for this shape
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for b in batches:
                loaded.probabilities_of(b)
                n += len(b)
        rates[bs] = n / (time.perf_counter() - start)
    return rates


def multipart_request(host: str, port: int, name: str, photo: bytes) -> bytes:
    """One ``POST /predict`` with one photo, as bytes ready to send on a kept-alive connection."""
    boundary = "bench-serve-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + photo
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; "
        f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:"))
    return status, await reader.readexactly(length)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load_test(url: str, bodies: list[tuple[str, bytes]], clients: int, requests: int, pid: int) -> dict:
    """``clients`` kept-alive connections, each sending its next request when the last is answered.

    The requests are built beforehand and the responses read with asyncio streams, so the load
    generator takes little of the cores it shares with the server (an HTTP client library would
    take several times more per request)."""
    split = urlsplit(url)
    prepared = [multipart_request(split.hostname, split.port, name, body) for name, body in bodies]
    latencies: list[float] = []
    errors: list[str] = []
    next_index = 0

    async def client(count: int, record: bool) -> None:
        nonlocal next_index
        reader, writer = await asyncio.open_connection(split.hostname, split.port)
        try:
            while next_index < count:
                i = next_index
                next_index += 1
                start = time.perf_counter()
                try:
                    writer.write(prepared[i % len(prepared)])
                    status, body = await read_response(reader)
                    ok = status == 200 and json.loads(body)[0]["predicted"] is not None
                    problem = None if ok else f"HTTP {status}: {body[:100]!r}"
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                if record:
                    latencies.append(time.perf_counter() - start)
                    if problem:
                        errors.append(problem)
                if problem:  # the connection may be unusable: open another
                    writer.close()
                    reader, writer = await asyncio.open_connection(split.hostname, split.port)
        finally:
            writer.close()

    await asyncio.gather(*[client(2 * clients, False) for _ in range(clients)])  # warm-up
    next_index = 0
    start, server_cpu, client_cpu = time.perf_counter(), cpu_seconds(pid), time.process_time()
    await asyncio.gather(*[client(requests, True) for _ in range(clients)])
    elapsed = time.perf_counter() - start
    server_cpu, client_cpu = cpu_seconds(pid) - server_cpu, time.process_time() - client_cpu
    with urllib.request.urlopen(f"{url}/health", timeout=30) as response:
        health = json.loads(response.read())
    ms = sorted(1000 * t for t in latencies)
    return {
        "rps": len(latencies) / elapsed,
        "p50": percentile(ms, 50),
        "p95": percentile(ms, 95),
        "p99": percentile(ms, 99),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "seconds": elapsed,
        "health": health,
        "server_cpu_ms": 1000 * server_cpu / len(latencies),
        "client_cpu_ms": 1000 * client_cpu / len(latencies),
    }


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def run_mode(
    model: Path, precision: str, max_batch: int, max_wait_ms: float, bodies, clients: int, requests: int
) -> dict:
    with ServerProcess(
        model, "--precision", precision, "--max-batch", max_batch, "--max-wait-ms", max_wait_ms, "--no-access-log"
    ) as server:
        url = server.wait_ready()
        return asyncio.run(load_test(url, bodies, clients, requests, server.proc.pid))


def main() -> None:
    args = parse_args()
    if not args.data.is_dir():
        sys.exit(f"no photos at {args.data}: pass --data")
    photos = image_files_under(args.data)
    chosen = photos[:: max(1, len(photos) // 256)]  # every class, in a mixed order
    bodies = [(p.name, p.read_bytes()) for p in chosen]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        model = args.model or train_model(args.size, Path(tmp))
        spec = load_model(model, device="cpu").spec
        print(
            f"machine: {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads; "
            f"python {sys.version.split()[0]}"
        )
        print(f"model: {spec.arch} at {spec.size} px ({model})")
        print(
            f"photos: {len(bodies)} from {args.data}; {args.clients} concurrent clients, {args.requests} timed "
            f"requests of one photo per run, after {2 * args.clients} warm-up requests\n"
        )
        precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
        ceilings = {}
        for precision in precisions:
            ceilings[precision] = rates = network_ceiling(model, photos, args.max_batch, precision)
            print(
                f"network alone, --precision {precision} (decoded photos): batch 1 {rates[1]:.1f} img/s, batch "
                f"{args.max_batch} {rates[args.max_batch]:.1f} img/s: ceiling "
                f"{rates[args.max_batch] / rates[1]:.2f}x",
                flush=True,
            )
        print()
        modes = {
            (precision, batching): (args.max_batch, args.max_wait_ms) if batching == "on" else (1, 0.0)
            for precision in precisions
            for batching in ("on", "off")
        }
        runs: dict[tuple, list[dict]] = {mode: [] for mode in modes}
        for r in range(args.repeat):
            for mode, (max_batch, wait) in modes.items():
                result = run_mode(model, mode[0], max_batch, wait, bodies, args.clients, args.requests)
                runs[mode].append(result)
                print(
                    f"  run {r + 1}/{args.repeat} --precision {mode[0]}, batching {mode[1]}: "
                    f"{result['rps']:.1f} req/s, {result['errors']} errors",
                    flush=True,
                )
    best = {mode: max(results, key=lambda x: x["rps"]) for mode, results in runs.items()}
    print(
        f"\n{'precision':<10} {'batching':<34} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
        f"{'errors':>6} {'batches':>7} {'mean batch':>10} {'server CPU ms/req':>17} {'client CPU ms/req':>17}"
    )
    for (precision, batching), (max_batch, wait) in modes.items():
        b = best[(precision, batching)]
        label = f"on (--max-batch {max_batch}, --max-wait-ms {wait:g})" if batching == "on" else "off (--max-batch 1)"
        print(
            f"{precision:<10} {label:<34} {b['rps']:>7.1f} {b['p50']:>7.1f} {b['p95']:>7.1f} {b['p99']:>7.1f} "
            f"{b['errors']:>6} {b['health']['batches']:>7} {b['health']['mean_batch']:>10.2f} "
            f"{b['server_cpu_ms']:>17.1f} {b['client_cpu_ms']:>17.1f}"
        )
    print()
    for precision in precisions:
        ratio = best[(precision, "on")]["rps"] / best[(precision, "off")]["rps"]
        rates = ceilings[precision]
        print(
            f"--precision {precision}: batching on / off {ratio:.2f}x requests/s (the network alone: "
            f"{rates[args.max_batch] / rates[1]:.2f}x)"
        )
    top_on = max(best[(p, "on")]["rps"] for p in precisions)
    top_off = max(best[(p, "off")]["rps"] for p in precisions)
    errors = sum(r["errors"] for results in runs.values() for r in results)
    print(
        f"fastest with batching on / fastest with batching off: {top_on / top_off:.2f}x; errors in all runs: {errors}"
    )
    for results in runs.values():
        for r in results:
            if r["first_error"]:
                print(f"  first error: {r['first_error']}")


if __name__ == "__main__":
    main()

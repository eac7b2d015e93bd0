"""Benchmark: ``flowerfast serve`` with batching on and off, under concurrent clients. Not a test.

    python benchmarks/bench_serve.py [--data ../shared/data/flowers] [--clients 16] [--requests 480]

A real server process (``flowerfast serve --port 0 --device cpu``) on 127.0.0.1 and ``--clients``
concurrent clients (asyncio + httpx, in this process), each posting one real photo per request
until ``--requests`` are done, after a warm-up of two requests per client. Twice per repeat, one
server with batching on (``--max-batch``, ``--max-wait-ms``) and one with it off
(``--max-batch 1``), alternated; the faster run of each counts. Printed: requests/s, latency
p50/p95/p99, errors, the batches the server made (from ``/health``), and the ratio.

The ceiling, measured first in this process: the network alone (as the server runs it,
:meth:`LoadedModel.probabilities_of`) on photos decoded beforehand, in batches of 1 and of
``--max-batch``. Batching cannot make the server faster than that ratio; requests also cost the
server (HTTP, multipart, decoding) and the clients the same work in both modes.

Without ``--model`` a resnet18 at ``--size`` (128, as the README's first command) is trained for
one epoch from random weights on the embedded photos (the weights do not change the speed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flowerfast  # noqa: E402
from flowerfast.imagefiles import image_files_under  # noqa: E402
from flowerfast.inference import load_model  # noqa: E402
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
    ap.add_argument("--repeat", type=int, default=2, help="runs of each mode, alternated; the fastest counts")
    return ap.parse_args()


def train_model(size: int, folder: Path) -> Path:
    result = flowerfast.train(arch="resnet18", epochs=1, size=size, pretrained=False, device="cpu",
                              out=folder / "model-run")
    return result.run_dir


def network_ceiling(model: Path, photos: list[Path], max_batch: int, seconds: float = 5.0) -> dict[int, float]:
    """Images/s of the network alone, batches of 1 and of ``max_batch``, on decoded photos."""
    loaded = load_model(model, device="cpu")
    images = torch.stack([loaded.preprocessing.load(p) for p in photos[:max_batch]])
    rates = {}
    for bs in (1, max_batch):
        batches = [images[i:i + bs] for i in range(0, max_batch, bs)]
        for b in batches[:3]:
            loaded.probabilities_of(b)  # warm-up: kernels chosen for this shape
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for b in batches:
                loaded.probabilities_of(b)
                n += len(b)
        rates[bs] = n / (time.perf_counter() - start)
    return rates


async def load_test(url: str, bodies: list[tuple[str, bytes]], clients: int, requests: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    next_index = 0

    async def client(http: httpx.AsyncClient, count: int, record: bool) -> None:
        nonlocal next_index
        while True:
            if next_index >= count:
                return
            i = next_index
            next_index += 1
            name, body = bodies[i % len(bodies)]
            start = time.perf_counter()
            try:
                response = await http.post(f"{url}/predict", files={"files": (name, body, "image/jpeg")})
                ok = response.status_code == 200 and response.json()[0]["predicted"] is not None
                problem = None if ok else f"HTTP {response.status_code}: {response.text[:100]}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if record:
                latencies.append(time.perf_counter() - start)
                if problem:
                    errors.append(problem)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        await asyncio.gather(*[client(http, 2 * clients, False) for _ in range(clients)])  # warm-up
        next_index = 0
        start = time.perf_counter()
        await asyncio.gather(*[client(http, requests, True) for _ in range(clients)])
        elapsed = time.perf_counter() - start
        health = (await http.get(f"{url}/health")).json()
    ms = sorted(1000 * t for t in latencies)
    return {"rps": len(latencies) / elapsed, "p50": percentile(ms, 50), "p95": percentile(ms, 95),
            "p99": percentile(ms, 99), "errors": len(errors), "first_error": errors[0] if errors else "",
            "seconds": elapsed, "health": health}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def run_mode(model: Path, max_batch: int, max_wait_ms: float, bodies, clients: int, requests: int) -> dict:
    with ServerProcess(model, "--max-batch", max_batch, "--max-wait-ms", max_wait_ms, "--no-access-log") as server:
        url = server.wait_ready()
        return asyncio.run(load_test(url, bodies, clients, requests))


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
        print(f"machine: {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads; "
              f"python {sys.version.split()[0]}")
        print(f"model: {spec.arch} at {spec.size} px ({model})")
        print(f"photos: {len(bodies)} from {args.data}; {args.clients} concurrent clients, {args.requests} timed "
              f"requests of one photo per run, after {2 * args.clients} warm-up requests\n")
        ceiling = network_ceiling(model, photos, args.max_batch)
        print(f"network alone (decoded photos): batch 1 {ceiling[1]:.1f} img/s, batch {args.max_batch} "
              f"{ceiling[args.max_batch]:.1f} img/s: ceiling {ceiling[args.max_batch] / ceiling[1]:.2f}x\n")
        modes = {"on": (args.max_batch, args.max_wait_ms), "off": (1, 0.0)}
        runs: dict[str, list[dict]] = {name: [] for name in modes}
        for r in range(args.repeat):
            for name, (max_batch, wait) in modes.items():
                result = run_mode(model, max_batch, wait, bodies, args.clients, args.requests)
                runs[name].append(result)
                print(f"  run {r + 1}/{args.repeat} batching {name}: {result['rps']:.1f} req/s, "
                      f"{result['errors']} errors", flush=True)
    best = {name: max(results, key=lambda x: x["rps"]) for name, results in runs.items()}
    print(f"\n{'batching':<34} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6} "
          f"{'batches':>7} {'mean batch':>10}")
    for name, (max_batch, wait) in modes.items():
        b = best[name]
        label = f"on (--max-batch {max_batch}, --max-wait-ms {wait:g})" if name == "on" else "off (--max-batch 1)"
        print(f"{label:<34} {b['rps']:>7.1f} {b['p50']:>7.1f} {b['p95']:>7.1f} {b['p99']:>7.1f} {b['errors']:>6} "
              f"{b['health']['batches']:>7} {b['health']['mean_batch']:>10.2f}")
    ratio = best["on"]["rps"] / best["off"]["rps"]
    errors = sum(r["errors"] for results in runs.values() for r in results)
    print(f"\nbatching on / off: {ratio:.2f}x requests/s (the network alone: "
          f"{ceiling[args.max_batch] / ceiling[1]:.2f}x); errors in all runs: {errors}")
    for results in runs.values():
        for r in results:
            if r["first_error"]:
                print(f"  first error: {r['first_error']}")


if __name__ == "__main__":
    main()

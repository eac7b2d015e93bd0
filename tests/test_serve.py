"""``flowerfast serve``'s application, through FastAPI's TestClient, on the tiny run's real model.

Every bad request is followed by a good one: the server must keep serving. Predictions are
compared with :meth:`LoadedModel.predict` (what ``flowerfast predict`` runs) with a tolerance,
since a batch of other sizes may take other kernels; a near tie may then fall either way.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import zlib
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (pip install 'flowerfast[serve]') is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from flowerfast.core.errors import FlowerfastError  # noqa: E402
from flowerfast.infer.predict import load_model  # noqa: E402
from flowerfast.serving.app import create_app  # noqa: E402
from flowerfast.serving.batching import BatchQueue  # noqa: E402
from flowerfast.serving.config import ServeConfig  # noqa: E402
from tests.conftest import invoke, sample_files  # noqa: E402

PHOTOS = [sample_files(c, 2)[i] for c in ("daisy", "rose", "tulip") for i in (0, 1)]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def loaded(run_dir):
    return load_model(run_dir, device="cpu")


@pytest.fixture(scope="module")
def expected(loaded) -> dict:
    """``flowerfast predict``'s answer for each photo, with every class's probability."""
    return {p.path.name: p for p in loaded.predict(PHOTOS, top_k=loaded.spec.n_classes, workers=0)}


def client_for(model, **options) -> TestClient:
    return TestClient(create_app(model, ServeConfig(**options)))


@pytest.fixture(scope="module")
def client(loaded):
    with client_for(loaded, max_file_mb=0.5, max_files=4) as c:
        yield c


def upload(*paths: Path, field: str = "files") -> list:
    return [(field, (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def assert_good_request_works(client, expected: dict) -> None:
    response = client.post("/predict", files=upload(PHOTOS[0]))
    assert response.status_code == 200, response.text
    assert_same_predictions(response.json(), [expected[PHOTOS[0].name]], top_k=1)


def assert_same_predictions(served: list[dict], expected, top_k: int) -> None:
    """``served`` (``top_k`` classes each) against ``expected`` (predictions of every class): the
    same files, each served probability that of predict, the served classes the ``top_k`` most
    probable and the predicted one the most probable, up to :data:`TOLERANCE` (a near tie)."""
    assert [s["path"] for s in served] == [e.path.name for e in expected]
    for s, e in zip(served, expected):
        want = dict(e.top_k)
        got = {t["class"]: t["probability"] for t in s["top_k"]}
        assert len(got) == top_k and set(got) <= set(want) and s["error"] is None
        for name, probability in got.items():
            assert probability == pytest.approx(want[name], abs=TOLERANCE), name
        left_out = [p for name, p in want.items() if name not in got]
        assert min(want[name] for name in got) >= max(left_out, default=0.0) - TOLERANCE
        assert (s["predicted"], s["probability"]) == (s["top_k"][0]["class"], s["top_k"][0]["probability"])
        assert want[s["predicted"]] == pytest.approx(e.probability, abs=TOLERANCE)


# ----------------------------------------------------------------------------------------------
# Predictions


def test_predictions_equal_predict_in_one_request_and_in_many(client, expected):
    want = [expected[p.name] for p in PHOTOS[:4]]
    together = client.post("/predict", params={"top_k": 3}, files=upload(*PHOTOS[:4]))
    assert together.status_code == 200, together.text
    assert_same_predictions(together.json(), want, top_k=3)
    one_by_one = [client.post("/predict", params={"top_k": 3}, files=upload(p)).json()[0] for p in PHOTOS[:4]]
    assert_same_predictions(one_by_one, want, top_k=3)


def test_the_answer_is_predict_json_for_the_same_file(client, run_dir, runner):
    result = invoke(runner, ["predict", run_dir, PHOTOS[2], "--json", "--top-k", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    cli = json.loads(result.stdout)
    served = client.post("/predict", params={"top_k": 2}, files=upload(PHOTOS[2])).json()
    assert [set(d) for d in served] == [set(d) for d in cli]
    assert served[0]["path"] == Path(cli[0]["path"]).name
    assert served[0]["predicted"] == cli[0]["predicted"]
    assert served[0]["probability"] == pytest.approx(cli[0]["probability"], abs=TOLERANCE)


def test_an_unreadable_file_among_good_ones_carries_its_error(client, expected):
    files = upload(PHOTOS[0]) + [("files", ("notes.txt", b"not an image at all", "text/plain"))]
    response = client.post("/predict", files=files)
    assert response.status_code == 200
    good, bad = response.json()
    assert_same_predictions([good], [expected[PHOTOS[0].name]], top_k=1)
    assert bad == {
        "path": "notes.txt",
        "predicted": None,
        "unknown": False,
        "unfamiliar": False,
        "familiarity": None,
        "probability": None,
        "top_k": [],
        "error": "UnidentifiedImageError: not an image, or in a format Pillow cannot read",
    }


def test_concurrent_requests_are_computed_in_shared_batches(loaded, expected):
    with client_for(loaded, max_batch=8, max_wait_ms=1000) as c:
        start = threading.Barrier(8)
        answers = []

        def one(path):
            start.wait()
            answers.append((path, c.post("/predict", files=upload(path))))

        threads = [threading.Thread(target=one, args=(PHOTOS[i % len(PHOTOS)],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        health = c.get("/health").json()
    assert [a.status_code for _, a in answers] == [200] * 8
    for path, answer in answers:  # each caller gets its own photo's answer back from the shared batch
        assert_same_predictions(answer.json(), [expected[path.name]], top_k=1)
    assert health["items"] == 8 and health["requests"] == 8
    assert health["largest_batch"] >= 2 and health["batches"] < 8


def test_batching_off_computes_each_image_alone(loaded, expected):
    with client_for(loaded, max_batch=1) as c:
        response = c.post("/predict", files=upload(*PHOTOS[:3]))
        assert response.status_code == 200, response.text
        assert_same_predictions(response.json(), [expected[p.name] for p in PHOTOS[:3]], top_k=1)
        health = c.get("/health").json()
    assert (health["batches"], health["items"], health["largest_batch"]) == (3, 3, 1)


# ----------------------------------------------------------------------------------------------
# What the model is, the page, the schema


def test_model_describes_the_run(client, run_dir):
    described = client.get("/model").json()
    summary = json.loads((run_dir / "summary.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    assert described["arch"] == "resnet18" and described["classes"] == summary["classes"]
    assert described["size"] == config["size"] == 32
    assert described["valid_accuracy"] == (summary["best_valid_accuracy_rescored"] or summary["best_valid_accuracy"])
    assert (described["epoch"], described["run"], described["model"]) == (
        summary["best_epoch"],
        run_dir.name,
        "best.safetensors",
    )
    assert described["limits"] == {"max_file_mb": 0.5, "max_files": 4, "field": "files"}


def test_a_model_file_outside_a_run_has_no_accuracy(tmp_path, run_dir):
    for suffix in (".safetensors", ".json"):
        (tmp_path / f"flowers{suffix}").write_bytes((run_dir / f"best{suffix}").read_bytes())
    with client_for(tmp_path / "flowers.safetensors") as c:
        described = c.get("/model").json()
    assert described["model"] == "flowers.safetensors" and described["arch"] == "resnet18"
    assert (described["valid_accuracy"], described["epoch"], described["epochs"], described["run"]) == (
        None,
        None,
        None,
        None,
    )


def test_the_page_and_everything_it_loads_come_from_the_server(client):
    import re

    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assets = [link for link in links if link.startswith("/static/")]
    assert sorted(assets) == ["/static/app.js", "/static/style.css"]
    for link in links:
        assert not link.startswith(("http:", "https:", "//")), link
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200
        assert not re.search(r"https?://", response.text), f"{asset} refers to another site"


def test_swagger_is_off_and_the_schema_describes_predict(client):
    assert client.get("/docs").status_code == 404
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["files"]
    assert "top_k" in [p["name"] for p in schema["paths"]["/predict"]["post"]["parameters"]]


# ----------------------------------------------------------------------------------------------
# Bad requests


def png_declaring(width: int, height: int) -> bytes:
    """A PNG header declaring ``width x height`` pixels, and no pixel data: a decompression bomb's
    first bytes, refused before anything is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "name, content, status, words",
    [
        ("notes.txt", b"plain text, not a photo", 422, "not an image"),
        ("half.jpg", PHOTOS[0].read_bytes()[: len(PHOTOS[0].read_bytes()) // 2], 422, "truncated"),
        (
            "bomb.png",
            png_declaring(10_000, 10_000),
            413,
            "100.0 megapixels, over the limit of 50 megapixels: not decoded",
        ),
        ("huge.png", png_declaring(100_000, 100_000), 413, "over the limit of 50 megapixels: not decoded"),
        ("empty.jpg", b"", 422, "not an image"),
    ],
)
def test_a_file_that_is_not_a_usable_image_gets_a_4xx_and_the_server_goes_on(
    client, expected, name, content, status, words
):
    response = client.post("/predict", files=[("files", (name, content, "image/jpeg"))])
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"].startswith(f"{name} could not be read as an image: ") and words in body["error"]
    assert body["files"][0]["file"] == name
    assert_good_request_works(client, expected)


def test_an_oversized_upload_is_refused_by_name(client, expected):
    big = PHOTOS[0].read_bytes() * (600_000 // PHOTOS[0].stat().st_size)  # over the 0.5 MB limit of this client
    response = client.post("/predict", files=[("files", ("big.jpg", big, "image/jpeg"))])
    assert response.status_code == 413
    error = response.json()["error"]
    assert error.startswith("big.jpg is ") and error.endswith("over the limit of 0.5 MB per file")
    assert_good_request_works(client, expected)


def test_a_request_larger_than_the_limit_is_not_read_to_its_end(client, expected):
    limit = ServeConfig(max_file_mb=0.5, max_files=4).max_request_bytes
    declared = client.post(
        "/predict", content=b"x" * (limit + 1), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert declared.status_code == 413
    assert declared.json() == {"error": "the request is 2.1 MB, over this server's limit of 2.1 MB (4 files of 0.5 MB)"}

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(limit // 65536 + 2):
            yield b"--b\r\n" + b"x" * 65536

    streamed = client.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert streamed.status_code == 413
    assert streamed.json() == {"error": "the request is over this server's limit of 2.1 MB (4 files of 0.5 MB)"}
    assert_good_request_works(client, expected)


def test_too_many_files_in_one_request(client, expected):
    response = client.post("/predict", files=upload(*PHOTOS[:5]))
    assert response.status_code == 413 and response.json()["error"] == "at most 4 files per request"
    assert_good_request_works(client, expected)


@pytest.mark.parametrize(
    "kwargs, status, message",
    [
        (
            {"files": [("photo", ("a.jpg", PHOTOS[0].read_bytes(), "image/jpeg"))]},
            422,
            "no image in the request: send one or more files in the multipart field 'files'",
        ),
        (
            {"data": {"files": "a.jpg"}, "files": [("other", ("x", b"x", "text/plain"))]},
            422,
            "no image in the request: send one or more files in the multipart field 'files'",
        ),
        ({"json": {"files": ["a.jpg"]}}, 415, "send the images as multipart/form-data in the field 'files'"),
        (
            {"files": upload(PHOTOS[0]), "params": {"top_k": 9}},
            422,
            "top_k must be between 1 and 5 (the model's classes), not 9",
        ),
        (
            {"files": upload(PHOTOS[0]), "params": {"top_k": "three"}},
            422,
            "top_k: Input should be a valid integer, unable to parse string as an integer",
        ),
    ],
)
def test_malformed_requests_get_a_clear_4xx(client, expected, kwargs, status, message):
    response = client.post("/predict", **kwargs)
    assert (response.status_code, response.json()) == (status, {"error": message})
    assert_good_request_works(client, expected)


def test_the_api_key_is_required_everywhere_but_health(loaded):
    with client_for(loaded, api_key="s3cret") as c:
        for headers, status in (
            ({}, 401),
            ({"X-API-Key": "wrong"}, 401),
            ({"Authorization": "Bearer wrong"}, 401),
            ({"X-API-Key": "s3cret"}, 200),
            ({"Authorization": "Bearer s3cret"}, 200),
        ):
            assert c.get("/model", headers=headers).status_code == status, headers
            response = c.post("/predict", headers=headers, files=upload(PHOTOS[0]))
            assert response.status_code == status, headers
        missing = c.post("/predict", files=upload(PHOTOS[0]))
        assert missing.json()["error"].startswith("this server needs an API key: send it in the X-API-Key header")
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = c.post("/predict", headers={"X-API-Key": "nope"}, files=upload(PHOTOS[0]))
        assert wrong.json() == {"error": "wrong API key"}
        assert c.get("/health").status_code == 200
        assert c.get("/").status_code == 200  # the page itself asks for the key


@pytest.mark.parametrize(
    "options, message, parameters",
    [
        ({"max_batch": 0}, "max_batch must be at least 1, not 0", ("max_batch",)),
        ({"max_wait_ms": -1}, "max_wait_ms must not be negative, not -1", ("max_wait_ms",)),
        ({"max_file_mb": 0}, "max_file_mb must be positive, not 0", ("max_file_mb",)),
        ({"max_files": 0}, "max_files must be at least 1, not 0", ("max_files",)),
        ({"port": 70000}, "port must be between 0 and 65535, not 70000", ("port",)),
        ({"decode_threads": 0}, "decode_threads must be at least 1, not 0", ("decode_threads",)),
        ({"min_confidence": 1.5}, "min_confidence must be between 0 and 1, not 1.5", ("min_confidence",)),
        ({"api_key": " "}, "the API key must not be empty", ()),
    ],
)
def test_bad_settings_are_refused_by_name(options, message, parameters):
    """The library names its parameters (the CLI writes them as flags, see the command's test)."""
    with pytest.raises(FlowerfastError) as refused:
        ServeConfig(**options)
    assert (refused.value.message, refused.value.parameters) == (message, parameters)


def test_below_the_minimum_confidence_the_answer_is_unknown(loaded, expected):
    """The server's own minimum confidence, and a request's, which wins; the answers are
    ``flowerfast predict --min-confidence``'s."""
    probabilities = sorted(e.probability for e in expected.values())
    middle = (probabilities[2] + probabilities[3]) / 2  # three photos below it, three above
    with client_for(loaded, min_confidence=middle) as c:
        assert c.get("/model").json()["min_confidence"] == middle
        served = c.post("/predict", files=upload(*PHOTOS)).json()
        want = loaded.predict(PHOTOS, min_confidence=middle, workers=0)
        assert [s["unknown"] for s in served] == [w.unknown for w in want]
        assert sum(s["unknown"] for s in served) == 3
        for s in served:
            assert (s["predicted"] is None) == s["unknown"] and s["probability"] == s["top_k"][0]["probability"]
        everything = c.post("/predict", params={"min_confidence": 0}, files=upload(*PHOTOS)).json()
        # at 0 only the unfamiliar are unknown, as predict says
        assert [s["unknown"] for s in everything] == [w.unfamiliar for w in loaded.predict(PHOTOS, workers=0)]
        refused = c.post("/predict", params={"min_confidence": 2}, files=upload(PHOTOS[0]))
        assert refused.status_code == 422
        assert refused.json() == {"error": "min_confidence: Input should be less than or equal to 1"}


def test_cam_answers_one_image_with_its_heatmap_png(client, loaded, expected):
    pytest.importorskip("pytorch_grad_cam", reason="the cam extra (pip install 'flowerfast[cam]') is not installed")
    import io

    from PIL import Image

    from flowerfast.infer.cam import overlay_png

    response = client.post("/cam", files=upload(PHOTOS[1]))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.content == overlay_png(loaded, loaded.preprocessing.load(PHOTOS[1]))
    with Image.open(io.BytesIO(response.content)) as im:
        assert im.size == (loaded.spec.size, loaded.spec.size)
    two = client.post("/cam", files=upload(*PHOTOS[:2]))
    assert (two.status_code, two.json()) == (422, {"error": "send one image to /cam, not 2"})
    text = client.post("/cam", files=[("files", ("notes.txt", b"not an image", "text/plain"))])
    assert text.status_code == 422 and text.json()["error"].startswith("notes.txt could not be read as an image")
    assert_good_request_works(client, expected)


def test_cam_without_the_extra_is_a_501_naming_it(client, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pytorch_grad_cam" else real(name, *a)
    )
    response = client.post("/cam", files=upload(PHOTOS[0]))
    assert (response.status_code, response.json()) == (
        501,
        {"error": 'Grad-CAM needs the cam extra: pip install "flowerfast[cam]"'},
    )


# ----------------------------------------------------------------------------------------------
# The batch queue on its own


def run_queue(max_batch: int, submissions: list[list[int]], fail_on=None):
    """Run a BatchQueue doubling numbers; return each caller's answer and the batches it made."""
    batches = []

    def double(items):
        batches.append(list(items))
        if fail_on is not None and fail_on in items:
            raise ValueError(f"cannot take {fail_on}")
        return [2 * x for x in items]

    async def main():
        queue = BatchQueue(double, max_batch=max_batch, max_wait=0.05)
        await queue.start()
        try:
            answers = await asyncio.gather(*[queue.submit(s) for s in submissions], return_exceptions=True)
            after = await queue.submit([100])
        finally:
            await queue.stop()
        return answers, after, queue.stats

    answers, after, stats = asyncio.run(main())
    return answers, after, batches, stats


def test_the_queue_fills_batches_and_answers_each_caller():
    answers, after, batches, stats = run_queue(4, [[1, 2, 3], [4, 5, 6, 7], [8, 9, 10]])
    assert answers == [[2, 4, 6], [8, 10, 12, 14], [16, 18, 20]]
    assert batches[:3] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert (stats.batches, stats.items, stats.largest) == (4, 11, 4) and after == [200]


def test_the_queue_with_batching_off_runs_items_alone():
    answers, after, batches, stats = run_queue(1, [[1, 2], [3]])
    assert answers == [[2, 4], [6]] and after == [200]
    assert batches == [[1], [2], [3], [100]] and (stats.batches, stats.largest) == (4, 1)


def test_a_failing_batch_fails_its_callers_only():
    answers, after, batches, stats = run_queue(2, [[1, 2], [3, 4]], fail_on=3)
    assert batches == [[1, 2], [3, 4], [100]]  # the failed batch was run, then the queue went on
    assert answers[0] == [2, 4]
    assert isinstance(answers[1], ValueError) and str(answers[1]) == "cannot take 3"
    assert after == [200]
    assert (stats.batches, stats.items) == (2, 3)  # a failed batch is not counted as done


def test_the_command_refuses_bad_input_in_one_line(runner, tmp_path, run_dir):
    missing = invoke(runner, ["serve", tmp_path / "nowhere"])
    assert missing.exit_code == 1
    assert missing.output.strip() == f"error: model not found: {tmp_path / 'nowhere'}"
    for flags, message in (
        (["--max-batch", "0"], "--max-batch must be at least 1, not 0"),
        (["--max-wait-ms=-1"], "--max-wait-ms must not be negative, not -1"),
        (["--port", "70000"], "--port must be between 0 and 65535, not 70000"),
    ):
        bad = invoke(runner, ["serve", run_dir, *flags])  # the library's parameters, written as the flags
        assert (bad.exit_code, bad.output.strip()) == (1, f"error: {message}")
    pickle = invoke(runner, ["serve", tmp_path / "model.pkl"])
    assert pickle.exit_code == 1
    assert pickle.output.startswith(f"error: refusing to load {tmp_path / 'model.pkl'}: it is a pickle file")
    assert pickle.output.strip().endswith("pass --trust-pickle only for a fastai export you trust")


def test_the_server_answers_while_the_network_computes(loaded, expected):
    """The network is held mid-batch (its thread waits on an event): /health and the page still
    answer at once, then the held request completes."""
    app = create_app(loaded, ServeConfig(max_wait_ms=0))
    service = app.state.service
    computing, release, threads = threading.Event(), threading.Event(), []
    real_run_batch = service.run_batch

    def held_run_batch(images):
        threads.append(threading.current_thread().name)
        computing.set()
        assert release.wait(60)
        return real_run_batch(images)

    service.run_batch = held_run_batch
    with TestClient(app) as c:
        answers = []
        worker = threading.Thread(target=lambda: answers.append(c.post("/predict", files=upload(PHOTOS[0]))))
        worker.start()
        assert computing.wait(60)
        assert c.get("/health").json()["status"] == "ok"
        assert c.get("/").status_code == 200
        assert not answers  # still held
        release.set()
        worker.join(60)
        assert not worker.is_alive()
    assert answers[0].status_code == 200, answers[0].text
    assert_same_predictions(answers[0].json(), [expected[PHOTOS[0].name]], top_k=1)
    assert threads == ["flowerfast-batch_0"]

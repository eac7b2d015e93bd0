"""The loaded model behind the routes: decoding uploads, the batch queue, predictions.

Why the work is split the way it is: the event loop only moves bytes. Uploads are decoded in a
small pool of threads (:attr:`~flowerfast.serving.config.ServeConfig.decode_threads`, which also
bounds the memory decoding takes) and the network runs in the
:class:`~flowerfast.serving.batching.BatchQueue`'s own thread, on batches of the images of
concurrent requests; so the server keeps accepting and answering (``/health`` included) while it
computes.
"""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from flowerfast.data.imagefiles import ImageTooLargeError
from flowerfast.serving.config import ServeConfig
from flowerfast.serving.description import describe_model
from flowerfast.serving.errors import ApiError
from flowerfast.serving.uploads import describe_upload_error


class ModelService:
    """The loaded model behind the routes: decoding uploads, the batch queue, predictions.

    :meth:`start` and :meth:`stop` run in the application's lifespan (the threads exist only
    while it serves); :meth:`predict` answers one request; :meth:`health` counts what was done.
    """

    def __init__(self, loaded, config: ServeConfig):
        self.loaded = loaded
        self.config = config
        self.queue = None
        self.decoders: Optional[ThreadPoolExecutor] = None
        self.requests = 0
        self.description = describe_model(loaded, config)  # read once: the run's summary does not change
        self._cam_lock = threading.Lock()

    async def start(self) -> None:
        from flowerfast.serving.batching import BatchQueue

        self.decoders = ThreadPoolExecutor(
            max_workers=self.config.threads_for_decoding(), thread_name_prefix="flowerfast-decode"
        )
        self.queue = BatchQueue(
            self.run_batch, max_batch=self.config.max_batch, max_wait=self.config.max_wait_ms / 1000
        )
        await self.queue.start()

    async def stop(self) -> None:
        if self.queue is not None:
            await self.queue.stop()
        if self.decoders is not None:
            self.decoders.shutdown(wait=True)

    def run_batch(self, images: list) -> list:
        """The network on images of any number of requests: one ``(probabilities, familiarity)``
        each (familiarity ``None`` for a model without it)."""
        from flowerfast.infer.batches import stack_images

        shapes: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):  # flowerfast's images are all one size; a fastai export's may differ
            shapes.setdefault(tuple(image.shape), []).append(i)
        rows: list = [None] * len(images)
        for indices in shapes.values():
            probs, fam = self.loaded.scores_of(stack_images([images[i] for i in indices]))
            for k, i in enumerate(indices):
                rows[i] = (probs[k], None if fam is None else fam[k])
        return rows

    def decode(self, upload) -> Any:
        """One upload to the network's ``uint8`` image, by the model's own preprocessing (as predict)."""
        upload.file.seek(0)
        return self.loaded.preprocessing.load(upload.file)

    async def predict(self, uploads: list, top_k: int, min_confidence: Optional[float] = None) -> list[dict]:
        """``flowerfast predict --json``'s list for ``uploads``: decoded in the decoding threads,
        computed in the batch queue; a file that cannot be decoded carries its error, and a
        request with no decodable file at all is refused (:func:`no_image_error`). Below
        ``min_confidence`` (default: the server's) an answer is unknown."""
        import torch

        from flowerfast.infer.answers import predictions_from

        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(
            *[loop.run_in_executor(self.decoders, self._try_decode, u) for u in uploads], return_exceptions=False
        )
        names = [upload.filename or f"upload-{i + 1}" for i, upload in enumerate(uploads)]
        errors = {i: reason for i, (image, reason) in enumerate(decoded) if reason is not None}
        good = [image for image, reason in decoded if reason is None]
        if not good:
            raise no_image_error(names, errors)
        rows = await self.queue.submit(good)
        self.requests += 1
        threshold = self.config.min_confidence if min_confidence is None else min_confidence
        probs = torch.stack([p for p, _ in rows])
        fam = None if rows[0][1] is None else torch.stack([f for _, f in rows])
        predictions = predictions_from(
            names,
            probs,
            errors,
            self.loaded.classes,
            top_k,
            threshold,
            fam,
            self.loaded.familiar_threshold,
            self.loaded.thresholds,
        )
        return [p.to_dict() for p in predictions]

    async def heatmap(self, upload) -> bytes:
        """The PNG of one upload's Grad-CAM overlay for its predicted class (:mod:`flowerfast.infer.cam`).

        Computed in a decoding thread, one heatmap at a time (each holds a pass's activations and
        gradients); Grad-CAM hooks a shadow of the network that shares its weights
        (:func:`flowerfast.infer.cam.heatmaps`), so the batch queue's predictions never see it."""
        image, reason = await asyncio.get_running_loop().run_in_executor(self.decoders, self._try_decode, upload)
        if reason is not None:
            raise no_image_error([upload.filename or "upload-1"], {0: reason})
        return await asyncio.get_running_loop().run_in_executor(self.decoders, self._heatmap_of, image)

    def _heatmap_of(self, image) -> bytes:
        from flowerfast.infer.cam import overlay_png

        with self._cam_lock:
            return overlay_png(self.loaded, image)

    def _try_decode(self, upload) -> tuple[Any, Optional[str]]:
        try:
            return self.decode(upload), None
        except Exception as exc:  # every decode failure means "tell the client why"
            return None, describe_upload_error(exc)

    def health(self) -> dict:
        stats = self.queue.stats.to_dict() if self.queue is not None else {}
        return {"status": "ok", "arch": self.loaded.spec.arch, "requests": self.requests, **stats}


def no_image_error(names: list[str], errors: dict[int, str]) -> ApiError:
    """The refusal of a request none of whose files is an image: 413 when every file was over
    the pixel limit (too large, like an oversized upload), else 422; each file with its reason."""
    too_large = all(reason.startswith(ImageTooLargeError.__name__) for reason in errors.values())
    files = [{"file": names[i], "error": errors[i]} for i in sorted(errors)]
    what = names[0] if len(names) == 1 else f"none of the {len(names)} files"
    message = (
        f"{what} could not be read as an image: {errors[0]}" if len(names) == 1 else f"{what} could be read as an image"
    )
    return ApiError(413 if too_large else 422, message, files=files)

"""A trained model behind a web page and a JSON API (``flowerfast serve``).

The modules, each one concept: :mod:`~flowerfast.serving.config` (``ServeConfig``, the settings
and their limits), :mod:`~flowerfast.serving.app` (``create_app``: the FastAPI application and
its routes), :mod:`~flowerfast.serving.uploads` (reading a request's files within its limits),
:mod:`~flowerfast.serving.service` (decoding and computing them), :mod:`~flowerfast.serving.batching`
(``BatchQueue``), :mod:`~flowerfast.serving.description` (``GET /model``),
:mod:`~flowerfast.serving.errors` (errors as JSON) and :mod:`~flowerfast.serving.server` (``serve``:
running it on uvicorn). None imports fastai or the training side.
"""

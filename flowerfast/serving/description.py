"""What the served model is, for ``GET /model`` and the ready line: architecture, classes, image
size, the run's validation accuracy, and the server's own settings a client needs to know."""

from pathlib import Path
from typing import Any

from flowerfast.core.errors import FlowerfastError
from flowerfast.serving.config import FILES_FIELD, ServeConfig


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
    return {
        "valid_accuracy": summary.final_valid_accuracy,
        "epoch": summary.epochs,
        "epochs": summary.epochs,
        "run": folder.name,
    }


def describe_model(loaded, config: ServeConfig) -> dict[str, Any]:
    """``GET /model``: what the page shows and what a client needs to call ``/predict``."""
    from flowerfast import __version__

    spec, weights = loaded.spec, model_file(loaded.source)
    return {
        "arch": spec.arch,
        "classes": list(spec.classes),
        "n_classes": spec.n_classes,
        "size": spec.size,
        "mean": list(loaded.preprocessing.mean),
        "std": list(loaded.preprocessing.std),
        "model": weights.name,
        "valid_accuracy": None,
        "epoch": None,
        "epochs": None,
        "run": None,
        **model_accuracy(weights),
        "device": str(loaded.device),
        "precision": loaded.precision,
        "batching": {"max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms},
        "limits": {"max_file_mb": config.max_file_mb, "max_files": config.max_files, "field": FILES_FIELD},
        "api_key_required": config.api_key is not None,
        "min_confidence": config.min_confidence,
        "flowerfast": __version__,
    }

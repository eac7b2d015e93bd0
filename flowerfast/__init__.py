"""flowerfast: fine-tune pretrained image classifiers on a folder of photos.

The public API is imported lazily (fastai takes seconds to import), so ``import flowerfast`` and
``flowerfast --help`` stay fast::

    import flowerfast
    result = flowerfast.train(arch="resnet18", epochs=3, size=128)
    print(result.best_valid_accuracy, result.run_dir)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "TrainConfig": "config",
    "FlowerfastError": "errors",
    "load_data": "data",
    "scan_image_folder": "data",
    "read_split_csv": "runfolder",
    "default_data_dir": "data",
    "FlowerData": "data",
    "list_archs": "archs",
    "create_learner": "learner",
    "find_lr": "lr_find",
    "LRFindResult": "lr_find",
    "train": "training",
    "resume": "training",
    "resume_comparison": "comparison",
    "Checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "TrainResult": "training",
    "EpochRecord": "runfolder",
    "RunFolder": "runfolder",
    "RunSummary": "runfolder",
    "Reporter": "progress",
    "load_classifier": "model",
    "save_model": "model",
    "ModelSpec": "model",
    "load_model": "inference",
    "LoadedModel": "inference",
    "Prediction": "inference",
    "evaluate": "evaluation",
    "EvaluationResult": "evaluation",
    "export_model": "export",
    "ExportResult": "export",
    "compare": "comparison",
    "report": "reporting",
    "ComparisonReport": "reporting",
    "ModelEntry": "reporting",
    "PairResult": "reporting",
    "ServeConfig": "server",
    "create_app": "server",
    "serve": "server",
    "mcnemar_exact": "stats",
    "paired_bootstrap_ci": "stats",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flowerfast' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)

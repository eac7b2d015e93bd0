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
    "TrainConfig": "runs.config",
    "FlowerfastError": "core.errors",
    "load_data": "data.loaders",
    "scan_image_folder": "data.folders",
    "scan_data": "data.labelfiles",
    "read_label_file": "data.labelfiles",
    "read_split_csv": "runs.folder",
    "default_data_dir": "data.folders",
    "FlowerData": "data.loaders",
    "list_archs": "models.archs",
    "create_learner": "training.learner",
    "find_lr": "training.lr_find",
    "LRFindResult": "training.lr_find",
    "train": "training.run",
    "resume": "training.run",
    "resume_comparison": "reporting.comparison",
    "Checkpoint": "training.checkpoint",
    "load_checkpoint": "training.checkpoint",
    "TrainResult": "training.run",
    "EpochRecord": "runs.records",
    "RunFolder": "runs.folder",
    "RunSummary": "runs.records",
    "Reporter": "core.progress",
    "load_classifier": "models.classifier",
    "save_model": "models.classifier",
    "ModelSpec": "models.classifier",
    "load_model": "infer.predict",
    "LoadedModel": "infer.predict",
    "Prediction": "infer.answers",
    "evaluate": "infer.evaluate",
    "EvaluationResult": "infer.evaluate",
    "calibrate_run": "infer.calibrate",
    "heatmaps": "infer.cam",
    "write_overlays": "infer.cam",
    "Familiarity": "models.familiarity",
    "Calibration": "core.calibration",
    "export_model": "export.exporter",
    "ExportResult": "export.exporter",
    "compare": "reporting.comparison",
    "report": "reporting.report",
    "ComparisonReport": "reporting.report",
    "ModelEntry": "reporting.report",
    "PairResult": "reporting.report",
    "ServeConfig": "serving.config",
    "create_app": "serving.app",
    "serve": "serving.server",
    "check_data": "reporting.datacheck",
    "DataCheck": "data.checks",
    "mcnemar_exact": "core.stats",
    "paired_bootstrap_ci": "core.stats",
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

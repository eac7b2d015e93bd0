"""The training recipe's options: a time budget the epochs are planned to, label smoothing, MixUp
and CutMix, a moving average of the weights, progressive resizing and the augmentation policies;
each against its definition, and together in one real run that is interrupted and resumed."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import flowerfast
from flowerfast.core.errors import FlowerfastError
from flowerfast.runs.config import TrainConfig, parse_duration
from flowerfast.runs.folder import CHECKPOINT, RunFolder
from flowerfast.training.schedule import EpochCost, EpochPlan, size_at
from tests.conftest import invoke, sample_files
from tests.test_resume import StopAfterEpochs


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("10m", 600), ("1.5h", 5400), ("1h30m", 5400), ("7", 420), (" 2m 30s ", 150)]
)
def test_durations_read_as_people_write_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--time", "10x"], "--time must be a duration such as 90s, 10m or 1.5h (got '10x')"),
        (["--time", "0m"], "--time must be a positive duration (got '0m')"),
        (["--progressive", "96,64"], "--progressive must be two or more increasing sizes of at least 32 pixels"),
        (["--progressive", "64,96", "--size", "128"], "--progressive must end at --size (128)"),
        (["--label-smoothing", "1"], "--label-smoothing must be at least 0 and below 1 (got 1.0)"),
        (["--wd", "-0.1"], "--wd must be at least 0 and below 1 (got -0.1)"),
        (["--mixup", "-0.2"], "--mixup must be 0 (off) or a positive alpha (got -0.2)"),
        (["--ema-decay", "1.5"], "--ema-decay must be between 0 and 1 (got 1.5)"),
        (["--augment", "autoaugment"], "--augment must be one of standard, trivial, randaugment (got 'autoaugment')"),
    ],
)
def test_bad_recipe_options_are_one_line_errors(args, message, runner, tmp_path):
    result = invoke(runner, ["train", "--out", str(tmp_path / "run"), *args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_soft_targets_give_the_cross_entropy_of_their_labels_and_smoothing_is_torchs():
    from flowerfast.training.losses import SoftBinaryCrossEntropy, SoftCrossEntropy

    torch.manual_seed(0)
    pred, labels = torch.randn(8, 5), torch.randint(5, (8,))
    weight = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    onehot = F.one_hot(labels, 5).float()
    assert SoftCrossEntropy()(pred, onehot) == pytest.approx(float(F.cross_entropy(pred, labels)), abs=1e-6)
    smoothed = SoftCrossEntropy(weight=weight, label_smoothing=0.1)(pred, labels)
    assert smoothed == pytest.approx(float(F.cross_entropy(pred, labels, weight=weight, label_smoothing=0.1)), abs=1e-6)
    # smoothing by hand: (1 - s) on the label, s / 5 on every class
    by_hand = -(((1 - 0.1) * onehot + 0.1 / 5) * F.log_softmax(pred, dim=1)).sum(dim=1).mean()
    assert SoftCrossEntropy(label_smoothing=0.1)(pred, onehot) == pytest.approx(float(by_hand), abs=1e-6)
    bce = SoftBinaryCrossEntropy(label_smoothing=0.2)(pred, onehot)
    assert bce == pytest.approx(float(F.binary_cross_entropy_with_logits(pred, onehot * 0.8 + 0.1)), abs=1e-6)


def test_mixup_and_cutmix_mix_targets_in_the_shares_they_mix_pixels():
    from flowerfast.training.mixing import mix_batch

    torch.manual_seed(1)
    x = torch.stack([torch.full((3, 16, 16), float(i)) for i in range(6)])  # photo i is all i
    target = F.one_hot(torch.arange(6), 6).float()
    mixed, soft, share = mix_batch(x, target, mixup=0.4, cutmix=0.0)
    assert soft.sum(dim=1).tolist() == pytest.approx([1.0] * 6)
    for i in range(6):  # photo i is share * i + (1 - share) * j, and its target says so
        others = [k for k in range(6) if soft[i, k] > 0 and k != i]
        j = others[0] if others else i  # shuffled onto itself: unmixed
        assert float(mixed[i].mean()) == pytest.approx(share * i + (1 - share) * j, abs=1e-5)
        assert float(soft[i, i]) == pytest.approx(share if others else 1.0, abs=1e-6)
    mixed, soft, share = mix_batch(x, target, mixup=0.0, cutmix=1.0)
    for i in range(6):
        kept = float((mixed[i] == i).float().mean())  # the pixels still photo i's own
        partner = [k for k in range(6) if soft[i, k] > 0 and k != i]
        if partner:
            assert kept == pytest.approx(share, abs=1e-6) and soft[i, i] == pytest.approx(share)
    assert not torch.equal(mixed, x)


def test_the_moving_average_follows_each_step_with_its_warmed_up_decay():
    from flowerfast.training.ema import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(decay=0.9, precision="fp32", multi_label=False)
    average.learn = SimpleNamespace(model=model)
    average.before_fit()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(1, 30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].num_batches_tracked += 1
        average.after_step()
        keep = min(0.9, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            expected[k] = keep * expected[k] + (1 - keep) * v if v.is_floating_point() else v.clone()
    for k, v in average.average.state_dict().items():
        assert torch.allclose(v.float(), expected[k].float(), atol=1e-6), k
    state = average.state_dict()
    assert state["steps"] == 29 and set(state["model"]) == set(model.state_dict())


def test_the_moving_average_is_scored_on_the_validation_batches_beside_the_model():
    """The average answers each batch of fastai's validation pass (not the training batches); its
    score is the accuracy of those answers, or their mAP in a multi-label run."""
    from flowerfast.core.multilabel import score_multi_label
    from flowerfast.training.ema import WeightAverage

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x = torch.randn(10, 3, 2, 2)
    for multi_label, y in ((False, torch.randint(0, 3, (10,))), (True, (torch.rand(10, 3) > 0.5).float())):
        average = WeightAverage(decay=0.9, precision="fp32", multi_label=multi_label)
        learn = SimpleNamespace(model=model, training=True, xb=(torch.randn(4, 3, 2, 2),), yb=(y[:4],))
        average.learn = learn
        average.before_fit(), average.before_epoch(), average.before_train()
        with torch.no_grad():
            model[1].weight.add_(1.0)  # the model moves on; the average has not stepped
        average.after_batch()  # a training batch: not scored
        learn.training = False
        for batch in (slice(0, 4), slice(4, 10)):
            learn.xb, learn.yb = (x[batch],), (y[batch],)
            average.after_batch()
        average.after_epoch()
        out = average.average(x)
        if multi_label:
            expected = score_multi_label(torch.sigmoid(out).numpy(), y.numpy(), range(3)).mean_average_precision
        else:
            expected = int((out.argmax(dim=-1) == y).sum()) / len(y)
        assert expected != pytest.approx(0.0) and average.score == pytest.approx(expected, abs=1e-9)
        assert not torch.equal(out, model(x))  # the average's answers, not the model's


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def seconds(self) -> float:
        return self.now


def test_the_plan_fills_what_is_left_of_the_budget_and_costs_small_epochs_by_their_pixels():
    clock = FakeClock()
    plan = EpochPlan(full_epochs=10, budget=100.0, clock=clock)
    plan.cost = EpochCost(7.0, 2.0)
    clock.now = 9.0
    assert plan.replan(1) and plan.full_epochs == 1 + 10  # 91 s left: 10 more epochs of 9 s
    clock.now = 95.0
    assert plan.replan(9) and plan.full_epochs == 10  # running late: no epoch fits, one more to anneal in
    assert plan.replan(9, resumed=True) and plan.full_epochs == 9  # a resumed run's earlier plan is unknown: stop
    clock.now = 50.0
    assert not plan.replan(9, may_grow=False) and plan.full_epochs == 9  # ended, annealed: no going back up
    clock.now = 95.0
    assert plan.replan(5, may_grow=False) and plan.full_epochs == 5  # but shrinking is still allowed
    frozen = EpochPlan(full_epochs=3, budget=1.0, clock=clock, frozen_cost=EpochCost(5.0))
    assert frozen.replan(0) and frozen.full_epochs == 1  # at least one full epoch
    progressive = EpochPlan(full_epochs=4, budget=40.0, sizes=[32, 64], clock=FakeClock())
    progressive.full_epoch_timed(EpochCost(1.5, 2.0, 32))  # training at 64 px costs 4 times; validation does not grow
    assert progressive.epoch_cost(64) == 1.5 * 4 + 2.0
    progressive.clock.now = 1.5 + 2.0  # after that first epoch
    progressive.replan(1)
    n = progressive.full_epochs
    cost = sum(progressive.epoch_cost(size_at([32, 64], e, n)) for e in range(n))
    assert cost <= 40.0 < sum(progressive.epoch_cost(size_at([32, 64], e, n + 1)) for e in range(n + 1))
    assert n == 6  # 3 epochs at 32 px (3.5 s each) and 3 at 64 px (8 s each)


def test_once_two_sizes_are_timed_an_epoch_is_priced_through_them():
    """A batch has costs that do not shrink with its photos (loading, the optimizer's step), so
    scaling the training seconds by pixels overprices the larger sizes; with two sizes timed, the
    price is a fixed part plus one per pixel, through the nearest two."""
    plan = EpochPlan(full_epochs=6, budget=600.0, sizes=[64, 96, 128], clock=FakeClock())
    plan.full_epoch_timed(EpochCost(30.0, 14.0, 64))
    assert plan.epoch_cost(128) == pytest.approx(30.0 * 4 + 14.0)  # one size timed: by pixels
    plan.full_epoch_timed(EpochCost(44.5, 13.0, 96))
    assert plan.epoch_cost(96) == pytest.approx(44.5 + 13.0)  # as timed, with the last epoch's rest
    assert plan.epoch_cost(64) == pytest.approx(30.0 + 13.0)
    per_pixel = (44.5 - 30.0) / (96**2 - 64**2)
    assert plan.epoch_cost(128) == pytest.approx(44.5 + per_pixel * (128**2 - 96**2) + 13.0)
    plan.full_epoch_timed(EpochCost(77.0, 12.0, 128))
    assert plan.epoch_cost(112) == pytest.approx(44.5 + (77.0 - 44.5) / (128**2 - 96**2) * (112**2 - 96**2) + 12.0)


def follow_a_budgeted_fit(
    plan: EpochPlan, clock: FakeClock, batch_seconds, rest: float, batches: int = 40, schedule: Optional[list] = None
):
    """Drive :class:`FollowPlan` through a full phase as fastai would, on ``clock``: a training
    batch at ``size`` px costs ``batch_seconds(size)``, validation and the rest ``rest``; the
    training size of each epoch run. ``schedule`` gets each batch's place in the one-cycle
    schedule (fastai's ``pct_train``)."""
    from fastai.callback.core import CancelFitException

    from flowerfast.core.progress import Reporter
    from flowerfast.training.schedule import FollowPlan

    follow = FollowPlan(plan, "full", None, Reporter())
    follow.learn = SimpleNamespace(training=True, n_iter=batches, epoch=0, iter=0, pct_train=0.0)
    sizes = []
    for epoch in range(100):
        follow.learn.epoch = epoch
        try:
            follow.before_epoch()
        except CancelFitException:
            return sizes
        follow.before_train()
        sizes.append(plan.train_size(epoch))
        for i in range(batches):
            follow.learn.iter = i
            follow.before_batch()
            if schedule is not None:
                schedule.append(follow.learn.pct_train)
            clock.now += batch_seconds(sizes[-1])
        follow.after_train()
        clock.now += rest
    raise AssertionError("the plan never ended")


def test_a_progressive_plan_times_each_new_size_early_and_fills_the_budget(monkeypatch):
    """Priced by pixels from 64 px, a 128 px epoch costs 4 times as much, but a batch has costs
    that do not shrink with its photos: here it costs 2.5 times. The plan made on the guess is
    short, and it would end, its learning rate annealed, with time for more epochs left; timing
    the first batches at each new size lets it grow while it still can."""
    from flowerfast.training import schedule

    clock = FakeClock()
    monkeypatch.setattr(schedule, "time", SimpleNamespace(perf_counter=clock.seconds))
    plan = EpochPlan(full_epochs=3, budget=300.0, sizes=[64, 96, 128], clock=clock)
    batch = {64: 1.0, 96: 1.6, 128: 2.5}  # 40, 64 and 100 s an epoch of 40 batches
    sizes = follow_a_budgeted_fit(plan, clock, batch.__getitem__, rest=10.0)
    assert sizes == [64, 128, 128]  # priced by pixels after the first: [64, 128], ended at 160 s
    assert clock.now == pytest.approx(270.0) and plan.full_epochs == 3


def test_a_run_that_falls_behind_its_plan_anneals_in_one_more_epoch(monkeypatch):
    """Epochs of 50 s fill a budget of 300 s with 6; from 200 s on, batches cost half as much
    again, so after the fifth epoch (at 270 s) no epoch fits. Stopping then would leave the
    learning rate five sixths of the way down its schedule; the run ends with one more epoch
    instead, its schedule shortened to end in it, 40 s over the budget."""
    from flowerfast.training import schedule

    clock = FakeClock()
    monkeypatch.setattr(schedule, "time", SimpleNamespace(perf_counter=clock.seconds))
    plan = EpochPlan(full_epochs=3, budget=300.0, clock=clock)
    places = []
    sizes = follow_a_budgeted_fit(plan, clock, lambda size: 1.0 if clock.now < 200 else 1.5, 10.0, schedule=places)
    assert len(sizes) == plan.full_epochs == 6
    assert clock.now == pytest.approx(270.0 + 70.0)
    assert places[-1] == pytest.approx((6 - 1 / 40) / 6)  # the last batch's place: annealed
    assert places[5 * 40] > places[5 * 40 - 1]  # the shortened schedule goes on down, not back up


def test_a_resumed_plan_prices_an_epoch_from_its_recorded_parts():
    """``history.csv`` keeps an epoch's training seconds beside its whole seconds, so a resumed
    plan scales only the training part by the training size, as the uninterrupted run did."""
    from flowerfast.runs.records import EpochRecord

    record = EpochRecord(1, "full", 1.0, 0.5, 1.0, 0.5, 1e-3, seconds=10.0, train_seconds=6.0)
    assert EpochCost.of_record(record, 64).at(128) == pytest.approx(6.0 * 4 + 4.0)
    assert EpochCost.of_record(record, None).at(None) == pytest.approx(10.0)
    record.train_seconds = None  # a history written without the column: all of it scales
    assert EpochCost.of_record(record, 64).at(128) == pytest.approx(40.0)


def test_progressive_sizes_share_the_epochs_and_the_last_ones_train_at_the_last_size():
    assert [size_at([32, 64], e, 6) for e in range(6)] == [32, 32, 32, 64, 64, 64]
    assert [size_at([64, 96, 128], e, 4) for e in range(4)] == [64, 96, 128, 128]
    assert [size_at([64, 96, 128], e, 2) for e in range(2)] == [96, 128]  # too few epochs: the smallest go
    assert [size_at([64, 96, 128], e, 1) for e in range(1)] == [128]
    assert size_at([64, 96, 128], 5, 3) == 128  # past the plan (a plan shrunk under a running epoch)
    plan = EpochPlan(full_epochs=4, sizes=[64, 96, 128])
    assert [plan.train_size(e) for e in range(4)] == [64, 96, 128, 128]
    plan.full_epoch_timed(EpochCost(40.0, 12.0, 96))  # the second epoch, at 96 px; then the plan grows
    plan.full_epochs = 9  # whose share of 64 px would now reach past the third epoch: not going back down
    assert [plan.train_size(e) for e in range(2, 9)] == [96, 96, 96, 96, 128, 128, 128]


def test_training_crops_grow_while_validation_stays_at_the_models_size():
    from fastai.vision.core import PILImage

    from flowerfast.data.augment import GrowingCrop

    crop = GrowingCrop(64, min_scale=0.35)
    photo = PILImage.create(Image.open(sample_files("daisy", 1)[0]).convert("RGB"))
    assert crop(photo, split_idx=0).size == (64, 64)
    crop.set_train_size(32)
    assert crop(photo, split_idx=0).size == (32, 32)
    assert crop(photo, split_idx=1).size == (64, 64)


@pytest.mark.parametrize("policy", ["trivial", "randaugment"])
def test_an_augmentation_policy_changes_training_crops_only(policy):
    from fastai.vision.core import PILImage

    from flowerfast.data.augment import PolicyAugment

    augment = PolicyAugment(policy)
    photo = PILImage.create(Image.open(sample_files("rose", 1)[0]).convert("RGB"))
    torch.manual_seed(0)
    changed = [augment(photo, split_idx=0) for _ in range(8)]
    assert all(isinstance(c, PILImage) and c.size == photo.size for c in changed)
    assert any(c.tobytes() != photo.tobytes() for c in changed)
    assert augment(photo, split_idx=1).tobytes() == photo.tobytes()


class TrainingSizes:
    """A fastai callback noting the side of each epoch's training batches, and of validation's."""

    def __new__(cls, seen: dict):
        from fastai.callback.core import Callback

        class Sizes(Callback):
            def before_batch(self):
                key = ("train", self.epoch) if self.training else ("valid", self.epoch)
                seen.setdefault(key, set()).add(int(self.xb[0].shape[-1]))

        return Sizes()


RECIPE = dict(
    arch="resnet18",
    pretrained=False,
    size=48,
    progressive=[32, 48],
    time_budget=30.0,
    ema=True,
    ema_decay=0.9,
    mixup=0.4,
    cutmix=1.0,
    label_smoothing=0.1,
    weight_decay=0.05,
    augment="trivial",
    bs=16,
    device="cpu",
    precision="fp32",
    workers=0,
    clean_train_sample=0,
)


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory) -> tuple[Path, dict, dict]:
    """Every recipe option in one run from random weights on the embedded photos, with a budget of
    30 s; stopped (as by Ctrl-C) after two epochs, then resumed to the end."""
    out = tmp_path_factory.mktemp("runs") / "recipe"
    seen: dict = {}
    with pytest.raises(KeyboardInterrupt):
        flowerfast.train(out=out, callbacks=[StopAfterEpochs(2), TrainingSizes(seen)], **RECIPE)
    checkpoint = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
    before = {
        "epoch": checkpoint["epoch"],
        "ema_steps": checkpoint["ema"]["steps"],
        "seconds": checkpoint["seconds"],
        "weight_decay": {group["weight_decay"] for group in checkpoint["optimizer"]["param_groups"]},
    }
    flowerfast.resume(out, callbacks=[TrainingSizes(seen)])
    return out, seen, before


def test_a_budgeted_run_plans_its_epochs_to_the_budget_across_a_resume(budgeted):
    out, _, before = budgeted
    folder = RunFolder(out)
    summary, history, config = (
        folder.read_summary(),
        folder.read_history(),
        json.loads((out / "config.json").read_text()),
    )
    assert before["epoch"] == 2 and before["ema_steps"] == 2 * 10  # 160 training photos, batches of 16
    assert before["weight_decay"] == {0.05}  # AdamW's, in every parameter group
    assert config["options"]["time_budget"] == 30.0 and summary.time_budget == 30.0
    assert len(history) == summary.planned_epochs >= 4  # the plan was run to its end, not cut off
    assert [r.epoch for r in history] == list(range(1, len(history) + 1))
    assert all(0 < r.train_seconds < r.seconds for r in history)  # the resumed plan priced from these
    longest = max(r.seconds for r in history)
    assert sum(r.seconds for r in history) <= 30.0 + 2 * longest + 2.0  # both sessions together
    peak = max(r.lr for r in history)
    assert history[-1].lr < peak / 100  # the one-cycle schedule annealed by the planned end
    assert not (out / CHECKPOINT).exists()


def test_progressive_resizing_trains_small_first_and_validates_at_the_models_size(budgeted):
    out, seen, _ = budgeted
    n = len(RunFolder(out).read_history())
    train_sizes = [seen[("train", e)] for e in range(n) if ("train", e) in seen]
    assert train_sizes[0] == {32} and train_sizes[-1] == {48}
    assert all(sizes == {48} for key, sizes in seen.items() if key[0] == "valid")
    assert json.loads(RunFolder(out).best_model.with_suffix(".json").read_text())["size"] == 48


def test_the_moving_average_is_validated_and_the_better_weights_are_the_best_model(budgeted):
    out, _, _ = budgeted
    folder = RunFolder(out)
    summary, history = folder.read_summary(), folder.read_history()
    assert all(r.ema_valid_score is not None for r in history)
    best = next(r for r in history if r.epoch == summary.best_epoch)
    assert summary.best_model_is_average == best.ema_is_better
    assert summary.best_valid_accuracy == pytest.approx(max(max(r.valid_accuracy, r.ema_valid_score) for r in history))
    # rescoring the saved best model gives the best figure: it holds whichever weights scored it
    assert summary.best_valid_accuracy_rescored == pytest.approx(summary.best_valid_accuracy, abs=1e-9)


def test_a_mixed_run_predicts_its_validation_photos_as_training_scored_them(budgeted):
    """Mixing is for training batches only: the saved model, loaded for prediction, answers the
    plain validation photos as the run's own scoring did."""
    out, _, _ = budgeted
    folder = RunFolder(out)
    rows = folder.read_valid_predictions()
    model = flowerfast.load_model(folder.best_model)
    paths, probs, errors = model.probabilities([Path(folder.read_config().data) / r.file for r in rows])
    assert not errors and len(paths) == len(rows) == 40
    assert probs.sum(dim=1).tolist() == pytest.approx([1.0] * len(rows), abs=1e-5)
    agree = sum(model.classes[int(i)] == r.predicted for i, r in zip(probs.argmax(dim=1), rows))
    assert agree >= len(rows) - 1  # at most one near-tie decided the other way by another kernel


def test_lr_find_takes_the_recipe_options(runner, tmp_path):
    result = invoke(
        runner,
        ["lr-find", "--arch", "resnet18", "--no-pretrained", "--size", "32", "--bs", "16", "--num-it", "40",
         "--mixup", "0.4", "--label-smoothing", "0.1", "--wd", "0.05", "--augment", "trivial",
         "--out", str(tmp_path / "lr")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lr" / "lr_find.png").is_file()
    config = json.loads((tmp_path / "lr" / "config.json").read_text())
    assert config["mixup"] == 0.4 and config["label_smoothing"] == 0.1 and config["augment"] == "trivial"
    assert config["weight_decay"] == 0.05


def test_the_library_names_its_parameters_in_recipe_errors():
    with pytest.raises(FlowerfastError, match=r"^progressive must end at size \(64\)"):
        TrainConfig(size=64, progressive=[32, 48]).validate()
    with pytest.raises(FlowerfastError, match=r"^time_budget must be a duration"):
        TrainConfig(time_budget="soon").validate()
    with pytest.raises(FlowerfastError, match=r"^weight_decay must be at least 0 and below 1 \(got -0.1\)"):
        TrainConfig(weight_decay=-0.1).validate()

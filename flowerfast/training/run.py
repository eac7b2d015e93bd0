"""Fine-tuning, end to end: the flower report's recipe (random 80/20 split, random crop + random
erasing, Adam, one-cycle learning rate), made to work and written to a run folder.

Why it works where the report's run stalled at 80%: the normalisation the pretrained weights were
trained with, their batch-norm statistics kept, a new head trained first with the pretrained body
frozen, then the whole network with discriminative learning rates (the body at 1/40 of the
head's), all under one-cycle schedules.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from flowerfast.core.errors import FlowerfastError
from flowerfast.core.progress import NullReporter, Reporter
from flowerfast.data.split import class_counts
from flowerfast.hardware import distributed
from flowerfast.models.classifier import count_parameters, save_model
from flowerfast.runs.config import ResolvedConfig, TrainConfig, make_config
from flowerfast.runs.folder import (
    BEST,
    CONFIG,
    FINAL,
    SUMMARY,
    EpochRecord,
    RunFolder,
    RunSummary,
    ValidPrediction,
    relative_path,
)
from flowerfast.training.checkpoint import (
    CHECKPOINT,
    RESUME_MAY_CHANGE,
    Checkpoint,
    capture_rng,
    data_files,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    split_sha256,
)
from flowerfast.training.session import RunSetup, prepare_run


@dataclass
class TrainResult:
    """What a training run produced: its folder, per-epoch history, resolved configuration and
    summary (the content of ``config.json``, ``history.csv`` and ``summary.json``)."""

    run_dir: Path
    history: list[EpochRecord]
    config: ResolvedConfig
    summary: RunSummary

    @property
    def best_epoch(self) -> int:
        return self.summary.best_epoch

    @property
    def best_valid_accuracy(self) -> float:
        return self.summary.best_valid_accuracy

    @property
    def final_valid_accuracy(self) -> float:
        return self.summary.final_valid_accuracy

    @property
    def best_model(self) -> Path:
        return Path(self.summary.best_model)

    @property
    def final_model(self) -> Path:
        return Path(self.summary.final_model)

    @property
    def classes(self) -> list[str]:
        return list(self.summary.classes)

    @property
    def pretrained(self) -> bool:
        return self.summary.pretrained

    @property
    def lr(self) -> float:
        return self.summary.lr

    @property
    def seconds(self) -> float:
        return self.summary.seconds


def clean_train_dl(setup: RunSetup, n: int, seed: int):
    """A DataLoader over a fixed random sample of up to ``n`` training images, with validation
    transforms (no augmentation); ``None`` when ``n`` is 0. In a job of several processes each
    takes its share of the sample (``None`` when that is empty); their counts are summed."""
    import random

    from flowerfast.hardware.distributed import shard_bounds

    if n <= 0:
        return None
    train_rows = [r for r in setup.data.rows if not r.is_valid]
    sample = random.Random(seed).sample(train_rows, min(n, len(train_rows)))
    procs = distributed.current()
    start, stop = shard_bounds(len(sample), procs.world_size, procs.rank, even=False)
    if start == stop:
        return None
    return setup.data.dls.test_dl([(str(r.file), r.label) for r in sample[start:stop]], with_labels=True)


def score_best_model(setup: RunSetup) -> float:
    """Score the saved best model on the validation images and write ``valid_predictions.csv``
    (one row per image, each class's probability): what a comparison of two models on the same
    split is computed from. Returns the accuracy.

    In a job of several processes rank 0 reads the best model and hands it to the others, each
    scores its share of the validation images, and rank 0 writes every image's row, once."""
    from safetensors.torch import load_file

    from flowerfast.hardware.distributed import shard_bounds
    from flowerfast.training.learner import predict_batches

    learn, run, procs = setup.bundle.learn, setup.run, distributed.current()
    model = distributed.unwrapped(learn.model)
    if procs.is_main:
        model.load_state_dict(load_file(str(run.best_model), device=str(setup.bundle.device)))
    distributed.broadcast_module(model)
    classes = setup.data.classes
    valid_rows = [r for r in setup.data.rows if r.is_valid]
    if procs.distributed:
        start, stop = shard_bounds(len(valid_rows), procs.world_size, procs.rank, even=False)
        valid_rows = valid_rows[start:stop]
        dl = setup.data.dls.test_dl([(str(r.file), r.label) for r in valid_rows], with_labels=True)
    else:
        dl = setup.data.dls.valid
    probs, targets = predict_batches(model, dl, setup.bundle.precision)
    if len(targets) != len(valid_rows):  # photos became unreadable during the run: score the others
        valid_rows = [r for r in valid_rows if setup.data.loader.readable(r.file)]
        dl = setup.data.dls.test_dl([(str(r.file), r.label) for r in valid_rows], with_labels=True)
        probs, targets = predict_batches(model, dl, setup.bundle.precision)
        if not valid_rows or len(targets) != len(valid_rows):
            raise FlowerfastError("the validation photos changed while the best model was being scored; "
                                  "score it later with flowerfast evaluate")
    if procs.distributed:
        import torch

        parts = distributed.gather_objects((valid_rows, probs, targets))
        valid_rows = [row for rows, _, _ in parts for row in rows]
        probs, targets = torch.cat([p for _, p, _ in parts]), torch.cat([t for _, _, t in parts])
    preds = probs.argmax(dim=-1)
    if procs.is_main:
        rows = [ValidPrediction(file=relative_path(row.file, setup.data.root), label=row.label, predicted=classes[p],
                                confidence=pr[p], probabilities=dict(zip(classes, pr)))
                for row, p, pr in zip(valid_rows, preds.tolist(), probs.tolist())]
        run.write_valid_predictions(rows, classes)
    return int((preds == targets).sum()) / len(targets)


@dataclass
class FitOutcome:
    """What the epochs gave: the history, the best epoch and its accuracy, and the epoch training
    stopped at early (``--patience``), if it did."""

    history: list[EpochRecord]
    best_epoch: Optional[int]
    best_accuracy: Optional[float]
    stopped_early_at: Optional[int] = None


def fit_phases(setup: RunSetup, reporter: Reporter, callbacks: Sequence = (), listeners: Sequence = ()) -> FitOutcome:
    """Run the frozen and full one-cycle phases; ``history.csv`` is rewritten after every epoch,
    the best model saved whenever validation accuracy improves, and ``checkpoint.pt`` written
    after every epoch (and once before the first). A resumed run (``setup.checkpoint``) restores
    the model, optimizer and random generators and continues the schedule where it stopped:
    fastai's ``start_epoch`` skips the epochs already done, so the one-cycle position is the
    same as in an uninterrupted run. ``listeners`` hear of each epoch too (trackers)."""
    from fastai.torch_core import set_seed

    from flowerfast.training.callbacks import CleanTrainAccuracy, EpochStats, ReportProgress, SaveBestModel
    from flowerfast.training.sharding import data_parallel

    config, learn, run, start = setup.config, setup.bundle.learn, setup.run, setup.checkpoint
    main = distributed.current().is_main  # in a job of several processes, rank 0 alone writes
    history: list[EpochRecord] = start.records() if start else []
    done = start.epoch if start else 0
    total = sum(n for _, n in config.phases)
    loaders = (setup.data.dls.train, setup.data.dls.valid)
    clock = EpochClock(start.seconds if start else 0.0)

    def record(epoch: EpochRecord) -> None:
        history.append(epoch)
        if main:
            run.write_history(history)

    def save_best() -> None:
        if main:
            save_model(distributed.unwrapped(learn.model), setup.bundle.spec, run.model_stem(BEST))

    saver = SaveBestModel(save_best, best_accuracy=start.best_accuracy if start else None,
                          best_epoch=start.best_epoch if start else None)

    def keep(epoch: EpochRecord) -> None:
        state = snapshot(setup, epoch.epoch, history, saver, clock.seconds())  # every process: its generators
        if main:
            save_checkpoint(run.file(CHECKPOINT), state)
        reporter.checkpoint_saved(epoch.epoch, run.file(CHECKPOINT))

    def report(epoch: EpochRecord) -> None:  # an epoch is shown once everything of it is saved
        reporter.epoch_done(epoch, best=saver.best_epoch == epoch.epoch)

    snapshots = KeepEpochModels(setup) if config.options.save_every else None
    stopper = EarlyStopping(config.options.patience, saver)

    clean_dl = clean_train_dl(setup, config.clean_train_images, config.options.seed)
    reporter.epochs_started(total)
    if start is None:
        set_seed(config.options.seed + distributed.current().rank)  # each process its own augmentations
        state = snapshot(setup, 0, history, saver, 0.0)
        if main:
            save_checkpoint(run.file(CHECKPOINT), state)
        reporter.checkpoint_saved(0, run.file(CHECKPOINT))
    else:
        reporter.stage(f"resuming after epoch {done} of {total}")
        reporter.checkpoint_saved(done, run.file(CHECKPOINT))
        learn.model.load_state_dict(start.model)
    clock.start()
    restored = start is None
    offset = 0
    if stopper.due(done):  # a resumed run that had stopped early: nothing left to train
        stopper.stopped_at = done
    try:
        with data_parallel(learn, setup.bundle.device, sync_bn=config.options.sync_bn):
            for phase, n_epochs in config.phases:
                if stopper.stopped_at is not None:
                    break
                if offset + n_epochs <= done:
                    offset += n_epochs
                    continue
                skip = max(0, done - offset)
                stats = EpochStats(phase=phase, epoch_offset=offset, start_epoch=skip)
                stats.listeners += [record, saver, keep, report, *([snapshots] if snapshots else []), *listeners,
                                    stopper]
                cbs = [stats, ReportProgress(reporter, epoch_offset=offset), *callbacks]
                if config.clean_train_images > 0:  # a process whose share is empty still adds its zeros
                    cbs.append(CleanTrainAccuracy(clean_dl, setup.bundle.precision, start_epoch=skip,
                                                  reporter=reporter))
                if phase == "frozen":  # either call resets Adam's state, as between an uninterrupted run's phases
                    learn.freeze()
                else:
                    learn.unfreeze()
                if not restored:
                    if start.optimizer is not None and skip > 0:  # within a phase: Adam's moments carry on
                        learn.opt.opt.load_state_dict(start.optimizer)
                    restore_rng(start.rng_of(distributed.current().rank), loaders)
                    restored = True
                if phase == "frozen":
                    learn.fit_one_cycle(n_epochs, config.lr, pct_start=0.99, cbs=cbs, start_epoch=skip)
                else:
                    lr_max = slice(config.body_lr, config.lr) if config.pretrained else config.lr
                    learn.fit_one_cycle(n_epochs, lr_max, cbs=cbs, start_epoch=skip)
                offset += n_epochs
                diverged_at = getattr(learn, "diverged_at", None)
                if diverged_at is not None:
                    kept = (f"best.safetensors holds epoch {saver.best_epoch}, the best before it"
                            if saver.best_epoch else "no model was saved")
                    raise distributed.shared_error(
                        f"training diverged: the loss became NaN or infinite in epoch {diverged_at}; {kept}. "
                        "Lower the learning rate (--lr) or train in fp32 (--precision fp32)")
    finally:
        reporter.finished()
    return FitOutcome(history=history, best_epoch=saver.best_epoch, best_accuracy=saver.best_accuracy,
                      stopped_early_at=stopper.stopped_at)


class EarlyStopping:
    """Listener for :class:`~flowerfast.training.callbacks.EpochStats`: ends training when validation
    accuracy has not improved for ``patience`` epochs (``None``: never), after that epoch is saved.
    It stops the current fit through fastai's ``CancelFitException``; :func:`fit_phases` then
    starts no further phase."""

    def __init__(self, patience: Optional[int], saver):
        self.patience, self.saver = patience, saver
        self.stopped_at: Optional[int] = None

    def due(self, epoch: int) -> bool:
        best = self.saver.best_epoch
        return self.patience is not None and best is not None and epoch - best >= self.patience

    def __call__(self, record: EpochRecord) -> None:
        from fastai.callback.core import CancelFitException

        if self.due(record.epoch):
            self.stopped_at = record.epoch
            raise CancelFitException()


class KeepEpochModels:
    """Listener: the model of every ``save_every``-th epoch in ``checkpoints/epoch-NNN.*``, the
    newest ``keep`` of them kept (all when ``keep`` is ``None``). Each is a model file like
    ``best.safetensors``, so ``flowerfast predict runs/x/checkpoints/epoch-005.safetensors`` works."""

    def __init__(self, setup: RunSetup):
        self.setup = setup
        self.every, self.keep = setup.config.options.save_every, setup.config.options.keep

    def __call__(self, record: EpochRecord) -> None:
        if record.epoch % self.every or not distributed.current().is_main:
            return
        run = self.setup.run
        stem = run.snapshot_stem(record.epoch)
        try:
            stem.parent.mkdir(exist_ok=True)
        except OSError as exc:
            raise FlowerfastError(f"cannot create {stem.parent}: {exc.strerror}") from None
        save_model(self.setup.bundle.learn.model, self.setup.bundle.spec, stem)
        if self.keep is not None:
            for old in run.snapshots()[:-self.keep]:
                old.unlink(missing_ok=True)
                old.with_suffix(".json").unlink(missing_ok=True)


class EpochClock:
    """Training seconds across a run's sessions: what earlier sessions took plus this one's."""

    def __init__(self, before: float = 0.0):
        self.before, self.started = before, None

    def start(self) -> None:
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return self.before + (time.perf_counter() - self.started if self.started is not None else 0.0)


def snapshot(setup: RunSetup, epoch: int, history: list[EpochRecord], saver, seconds: float) -> Checkpoint:
    """The run's state after ``epoch`` completed epochs, as :class:`~flowerfast.training.checkpoint.Checkpoint`.

    A resumed run keeps the options and configuration it started with, so resuming twice checks
    against the original, not against the last resume."""
    learn, start = setup.bundle.learn, setup.checkpoint
    opt = getattr(learn, "opt", None)
    rng = capture_rng((setup.data.dls.train, setup.data.dls.valid))
    rng_ranks = distributed.gather_objects(rng) if distributed.active() else []
    return Checkpoint(
        epoch=epoch,
        model={k: v.detach().to("cpu") for k, v in distributed.unwrapped(learn.model).state_dict().items()},
        optimizer=opt.opt.state_dict() if opt is not None and epoch > 0 else None,
        rng=rng, rng_ranks=rng_ranks,
        options=start.options if start else setup.config.options.to_dict(),
        config=start.config if start else setup.config.to_dict(),
        split_sha256=split_sha256(setup.data.rows, setup.data.root),
        data_files=start.data_files if start else data_files(setup.data.files, setup.data.root),
        history=[r.__dict__.copy() for r in history],
        best_epoch=saver.best_epoch, best_accuracy=saver.best_accuracy, seconds=seconds,
    )


def train(config: Optional[TrainConfig] = None, reporter: Optional[Reporter] = None, callbacks: Sequence = (),
          **options) -> TrainResult:
    """Fine-tune ``config.arch`` on ``config.data`` and write the run folder.

    The folder holds ``config.json`` (every resolved option), ``split.csv``, ``history.csv`` (one
    row per epoch, written as each epoch ends), ``best.safetensors``/``best.json`` (highest
    validation accuracy), ``final.safetensors``/``final.json``, ``valid_predictions.csv`` and
    ``summary.json``; while it runs, ``checkpoint.pt`` (see :func:`resume`). ``options`` override
    fields of ``config``: ``train(arch="resnet18", epochs=3)``. ``callbacks`` are extra fastai
    callbacks added to every fit (both phases).
    """
    from flowerfast.training.lr_find import find_and_save_lr

    reporter = distributed.main_only(reporter or NullReporter())
    options_ = make_config(config, **options)
    with prepare_run(options_, reporter, lr_finder=find_and_save_lr) as setup:
        return finish_training(setup, reporter, callbacks)


def resume(run_dir: Path | str, reporter: Optional[Reporter] = None, callbacks: Sequence = (),
           **changes) -> TrainResult:
    """Continue an interrupted training run from its ``checkpoint.pt`` to its planned last epoch.

    The run keeps its options, split and learning-rate schedule; history and best model carry on,
    so the finished folder is what an uninterrupted run would have written. ``changes`` may give
    where and how to compute (``data`` for a moved data folder with the same photos, ``device``,
    ``workers``, ``threads``, ``cache``, ``cache_dir``); any other option that differs from the
    run's, a changed photo or a changed split is refused with a message naming it.
    """
    reporter = distributed.main_only(reporter or NullReporter())
    run = RunFolder.open(run_dir)
    checkpoint = load_resumable(run)
    options_ = resumed_options(run, checkpoint, changes)
    with prepare_run(options_, reporter, lr_finder=lambda *a: checkpoint.config["lr_find"],
                     resume=(run, checkpoint)) as setup:
        return finish_training(setup, reporter, callbacks)


def load_resumable(run: RunFolder) -> Checkpoint:
    """The run's checkpoint, or a one-line reason why the run cannot be resumed."""
    path = run.file(CHECKPOINT)
    if not path.is_file():
        if run.file(SUMMARY).is_file():
            raise FlowerfastError(f"{run.path} is a finished run (summary.json is there): nothing to resume")
        if not run.file(CONFIG).is_file():
            raise FlowerfastError(f"{run.path} is not a flowerfast run folder (no config.json)")
        raise FlowerfastError(f"{run.path} has no checkpoint: it stopped before its first epoch began "
                              "(or is an lr-find run); start it again")
    return load_checkpoint(path)


def resumed_options(run: RunFolder, checkpoint: Checkpoint, changes: dict) -> TrainConfig:
    """The run's own options, with the allowed ``changes``; a one-line refusal naming every other
    option that differs."""
    from dataclasses import fields

    stored = {f.name: checkpoint.options[f.name] for f in fields(TrainConfig) if f.name in checkpoint.options}
    resumed_options_check(run.path, stored, changes)
    allowed = {k: v for k, v in changes.items() if k in RESUME_MAY_CHANGE}
    # the split comes from the run folder and the weights from the checkpoint: neither file is
    # needed again (a --weights file may have been deleted since)
    stored.update(split_file=None, weights=None, out=str(run.path))
    return make_config(TrainConfig(), **{**stored, **allowed})


def resumed_options_check(where: Path, stored: dict, changes: dict) -> None:
    """Refuse, naming each one, ``changes`` to options a resume must keep (see
    :data:`~flowerfast.training.checkpoint.RESUME_MAY_CHANGE` for those it may change)."""
    from dataclasses import fields

    unknown = set(changes) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    from flowerfast.runs.config import parse_lr

    refused = []
    for name, value in changes.items():
        was = stored.get(name)
        value = parse_lr(value) if name == "lr" else value
        if name in RESUME_MAY_CHANGE or value == was or str(value) == str(was) and value is not None:
            continue
        refused.append(f"--{name.replace('_', '-')} {value} (the run has {'the default' if was is None else was})")
    if refused:
        raise FlowerfastError(f"cannot resume {where} with different options: {', '.join(refused)}. "
                              "A run resumes as it started; start a new run to change them")


def finish_training(setup: RunSetup, reporter: Reporter, callbacks: Sequence = ()) -> TrainResult:
    """Train (or go on training), then save the final model, score the best one and write the
    summary; the checkpoint is removed once the run is complete."""
    from flowerfast.training.pictures import BATCH, CONFUSION, CURVES, MISTAKES, draw_batch
    from flowerfast.training.trackers import close_trackers, open_trackers

    run, main = setup.run, distributed.current().is_main  # in a job of several processes, rank 0 alone writes
    if setup.checkpoint is None and main:  # the augmentation can be checked while the run goes on
        draw_batch(run.file(BATCH), setup.data, setup.config.size)
    trackers = open_trackers(setup.config.options.trackers, run.path, setup.config.to_dict(),
                             history=setup.checkpoint.records() if setup.checkpoint else ()) if main else []
    try:
        started = time.perf_counter()
        with distributed.peer_failures():
            outcome = fit_phases(setup, reporter, callbacks, listeners=[t.log_epoch for t in trackers])
            seconds = (setup.checkpoint.seconds if setup.checkpoint else 0.0) + time.perf_counter() - started
            if distributed.active():
                from flowerfast.training.sharding import check_same_weights

                check_same_weights(setup.bundle.learn.model)
            final_paths = (save_model(setup.bundle.learn.model, setup.bundle.spec, run.model_stem(FINAL)) if main
                           else (run.final_model,))
            reporter.stage("scoring the best model on the validation set")
            rescored = score_best_model(setup)
        summary = summarise(setup, outcome, rescored, seconds, final_paths[0])
        if main:
            draw_run_pictures(setup, outcome.history)
            setup.run.write_summary(summary)
    except BaseException:
        close_trackers(trackers, None)
        raise
    close_trackers(trackers, [run.file(n) for n in (CURVES, CONFUSION, MISTAKES, BATCH)]
                   + [run.best_model, run.best_model.with_suffix(".json")])
    if main:
        setup.run.file(CHECKPOINT).unlink(missing_ok=True)
    return TrainResult(run_dir=setup.run.path, history=outcome.history, config=setup.config, summary=summary)


def draw_run_pictures(setup: RunSetup, history: Sequence[EpochRecord]) -> None:
    """``curves.png``, ``confusion.png`` and ``mistakes.png`` of the finished run."""
    from flowerfast.training.pictures import draw_confusion, draw_curves, draw_mistakes

    run = setup.run
    predictions = run.read_valid_predictions()
    draw_curves(run, setup.config.options.arch, history)
    draw_confusion(run, setup.data.classes, predictions)
    draw_mistakes(run, setup.data.root, predictions)


def summarise(setup: RunSetup, outcome: FitOutcome, rescored: float, seconds: float,
              final_model: Path) -> RunSummary:
    config, history = setup.config, outcome.history
    train_seconds = sum(r.seconds for r in history)
    return RunSummary(
        arch=config.options.arch, classes=list(setup.data.classes), class_counts=class_counts(setup.data.rows),
        pretrained=config.pretrained, weights_source=config.weights_source, epochs=len(history),
        best_epoch=outcome.best_epoch, best_valid_accuracy=outcome.best_accuracy,
        best_valid_accuracy_rescored=rescored,
        final_valid_accuracy=history[-1].valid_accuracy, final_train_loss=history[-1].train_loss, lr=config.lr,
        lr_find=config.lr_find, seconds=seconds, seconds_per_epoch=train_seconds / len(history),
        train_images_per_second=setup.data.n_train * len(history) / train_seconds if train_seconds else None,
        parameters=count_parameters(setup.bundle.learn.model), device=config.device,
        skipped_files=len(setup.data.skipped) + len(setup.data.loader.skipped if setup.data.loader else ()),
        best_model=str(setup.run.best_model), final_model=str(final_model),
        stopped_early_at=outcome.stopped_early_at, planned_epochs=sum(n for _, n in config.phases),
    )

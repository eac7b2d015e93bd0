"""Setting up a run: options checked, data scanned and split, the Learner built, the run folder
created and the configuration resolved, in that order, for training and lr-find alike.

Every check that can fail on user input runs before the run folder is created, so a bad option
leaves nothing behind; the Learner's scratch folder lives exactly as long as the ``with`` block.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from flowerfast.core.errors import FlowerfastError
from flowerfast.core.files import check_free_space, default_run_dir
from flowerfast.core.progress import Reporter
from flowerfast.data.checks import DuplicatePhotoWarning, duplicate_warnings
from flowerfast.data.imagecache import default_cache_dir
from flowerfast.data.loaders import FlowerData, load_data
from flowerfast.data.split import ThinClassWarning, balanced_class_weights, class_counts, thin_class_warnings
from flowerfast.hardware import distributed
from flowerfast.hardware.devices import resolve_device, resolve_precision, resolve_workers, use_threads
from flowerfast.models.archs import folder_name, normalisation, resolve_arch
from flowerfast.models.classifier import library_versions
from flowerfast.models.pretrained import WeightsInfo
from flowerfast.runs.config import TrainConfig, crop_min_scale
from flowerfast.runs.folder import SPLIT, RunFolder
from flowerfast.runs.resolved import ResolvedConfig, resolve
from flowerfast.training.checkpoint import (
    RESOLVED_DEFAULTS,
    RESOLVED_MUST_MATCH,
    Checkpoint,
    data_files,
    describe_data_change,
    split_sha256,
)
from flowerfast.training.learner import LearnerBundle, create_learner, learner_workspace

LRFinder = Callable[[LearnerBundle, RunFolder, Reporter], dict]
"""Runs lr-find on the learner, saves its files into the run folder, returns the suggestions."""


@dataclass
class RunSetup:
    """Data, learner, run folder and the resolved configuration, ready for lr-find or training.
    ``checkpoint`` is the state a resumed run continues from (``None`` for a new run)."""

    config: ResolvedConfig
    data: FlowerData
    bundle: LearnerBundle
    run: RunFolder
    checkpoint: Optional[Checkpoint] = None

    @property
    def options(self) -> TrainConfig:
        return self.config.options


@contextlib.contextmanager
def prepare_run(
    options: TrainConfig,
    reporter: Reporter,
    prefix: str = "",
    training: bool = True,
    lr_finder: Optional[LRFinder] = None,
    resume: Optional[tuple[RunFolder, Checkpoint]] = None,
) -> Iterator[RunSetup]:
    """Set up a run of ``options`` (validated) in a new run folder (default
    ``runs/<prefix><arch>-<timestamp>``) and write ``split.csv`` and ``config.json``.

    ``lr_finder`` is used for ``lr="auto"`` on a training run. The Learner's scratch folder is
    removed when the block ends, however it ends.

    ``resume`` (a run folder and its checkpoint) sets up that run again instead: its own
    ``split.csv``, no backbone weights loaded (the checkpoint has the model), the learning rate
    it found, and a refusal naming what changed when the photos, the split or a resolved value
    that decides the arithmetic differ from the checkpoint's.
    """
    options, ref = checked_options(options, resume, training)
    procs = distributed.current()
    device = join_job(options, procs)
    if resume is None:  # rank 0 names the folder (a timestamp): every process takes its name
        run_dir = distributed.agree(
            lambda: RunFolder.check_new(options.out or default_run_dir(f"{prefix}{folder_name(ref.name)}"))
        )
    workers = resolve_workers(options.workers, device)
    resolve_precision(options.precision, device)  # a precision this device cannot run is refused before any work
    threads = use_threads(options.threads)
    cache_dir = (options.cache_dir or default_cache_dir()) if options.cache else None
    data, notes = scan_and_split(options, ref, device, workers, cache_dir, resume, reporter)
    weights_per_class = loss_class_weights(options, data)
    with learner_workspace() as scratch:
        reporter.stage(f"building {options.arch}")
        bundle = build_learner(options, data, device, scratch, weights_per_class, resumed=resume is not None)
        if resume is None:
            run = open_run_folder(run_dir, data, bundle, new_name=options.out is None, training=training)
            weights = bundle.weights
        else:
            run, weights = resume[0], resumed_weights_info(resume[1])
        config = resolve(
            options,
            data=data,
            run_dir=run.path,
            device=device,
            workers=workers,
            threads=threads,
            precision=bundle.precision,
            channels_last=bundle.channels_last,
            cache_dir=cache_dir,
            weights=weights,
            versions=library_versions(),
            training=training,
            lr_finder=lr_source(lr_finder, bundle, run, reporter, resume),
            class_counts=class_counts(data.rows, data.multi_label),
            class_weights=weights_per_class,
            processes=procs.world_size,
            fixed_bn=bundle.fixed_bn,
        )
        config.warnings += notes
        if resume is None:
            if procs.is_main:
                run.write_config(config)
        else:
            check_same_resolution(resume, config)
        reporter.run_ready(config)
        yield RunSetup(config=config, data=data, bundle=bundle, run=run, checkpoint=resume[1] if resume else None)


def loss_class_weights(options: TrainConfig, data) -> Optional[list[float]]:
    """The loss's weight per class for ``--class-weights balanced`` (``None``: unweighted)."""
    if options.class_weights != "balanced":
        return None
    return balanced_class_weights(data.rows, data.classes, data.multi_label)


def build_learner(options: TrainConfig, data, device, scratch: Path, class_weights, resumed: bool):
    """The run's learner in its scratch folder; a resumed run loads no starting weights (its
    checkpoint holds the model). With ``--mixup`` or ``--cutmix`` the learner mixes every batch it
    trains on, lr-find's too, so the learning rate found is the one for the loss it will train on."""
    bundle = create_learner(
        data,
        arch=options.arch,
        size=data.size,
        pretrained=False if resumed else options.pretrained,
        weights=None if resumed else options.weights,
        device=device,
        precision=options.precision,
        compile=options.compile,
        path=scratch,
        class_weights=class_weights,
        fixed_bn=options.fixed_bn,
        label_smoothing=options.label_smoothing,
        weight_decay=options.weight_decay,
    )
    if options.mixup > 0 or options.cutmix > 0:
        from flowerfast.training.mixing import MixBatches

        bundle.learn.add_cb(MixBatches(options.mixup, options.cutmix, len(data.classes)))
    return bundle


def resumed_weights_info(checkpoint: Checkpoint) -> WeightsInfo:
    """Where a resumed run's starting weights came from, as its first session recorded it."""
    return WeightsInfo(pretrained=checkpoint.config["pretrained"], source=checkpoint.config["weights_source"])


def lr_source(lr_finder: Optional[LRFinder], bundle, run: RunFolder, reporter: Reporter, resume):
    """What ``lr="auto"`` calls for its learning-rate finder's result: a resumed run's own, else
    ``lr_finder`` run on the new run (``None``: no finder, as for lr-find's own run)."""
    if lr_finder is None:
        return None

    def find() -> dict:
        if resume is not None:
            return resume[1].config["lr_find"]
        reporter.stage("running the learning-rate finder (--lr auto)")
        return lr_finder(bundle, run, reporter)

    return find


def checked_options(options: TrainConfig, resume, training: bool):
    """The options with the architecture's one spelling (in config.json, run names and model
    files) and a resumed run's own values; trackers checked, so a missing extra is found before
    any work. Returns them with the architecture."""
    ref = resolve_arch(options.arch)
    if ref.name != options.arch:
        options = options.with_options(arch=ref.name)
    if resume is not None:
        options = with_resumed_values(options, resume[1])
    if training:
        from flowerfast.training.trackers import check_trackers

        check_trackers(options.trackers)
    return options, ref


def join_job(options: TrainConfig, procs):
    """The device this process computes on; in a job of several processes (one per GPU, or
    several CPU processes) the process group is joined first."""
    device = resolve_device(options.device)
    if procs.distributed and options.sync_bn and device.type != "cuda":
        raise FlowerfastError(
            "$sync_bn needs CUDA GPUs (PyTorch's SyncBatchNorm runs on GPUs only); on "
            f"{device.type} every process keeps batch-norm statistics of its own batches",
            parameters=("sync_bn",),
        )
    if procs.distributed:
        device = distributed.process_device(device, procs)
        distributed.start(device)
    return device


def scan_and_split(options: TrainConfig, ref, device, workers: int, cache_dir, resume, reporter: Reporter):
    """The run's photos scanned, split (a resumed run's own ``split.csv``, checked unchanged) and
    loaded as the network's weights expect; with the sentences about classes it can hardly learn,
    each also warned."""
    mean, std = normalisation(ref)
    reporter.stage(f"scanning {options.data or 'the embedded sample photos'}")
    with distributed.each_ready():  # a folder missing on one machine stops every process, named by rank 0
        data = load_data(
            options.data,
            labels=options.labels,
            multi_label=options.multi_label,
            size=options.size if options.size is not None or not options.progressive else options.progressive[-1],
            bs=options.bs,
            valid_pct=options.valid_pct,
            seed=options.seed,
            workers=workers,
            device=device,
            split_file=resume[0].file(SPLIT) if resume else options.split_file,
            cache_dir=cache_dir,
            stratify=options.stratify,
            reporter=reporter,
            shards=distributed.current().world_size,
            check_folder=(lambda folder: check_same_photos(resume, folder)) if resume else None,
            mean=mean,
            std=std,
            min_scale=crop_min_scale(options),
            augment=options.augment,
            batch_crop=options.batch_crop,
        )
        if resume is not None:
            check_same_split(resume, data)
    notes = thin_class_warnings(data.rows, data.classes, data.multi_label)
    for note in notes:
        warnings.warn(note, ThinClassWarning, stacklevel=4)
    if resume is None:  # the cheap checks of flowerfast check: copies across the split or under two labels
        copies = duplicate_warnings(data.rows, data=options.data)
        for note in copies:
            warnings.warn(note, DuplicatePhotoWarning, stacklevel=4)
        notes += copies
    return data, notes


def open_run_folder(run_dir: Path, data, bundle, new_name: bool, training: bool) -> RunFolder:
    """The new run folder with its ``split.csv``, created by rank 0 alone once there is room for
    the run's files; every process gets its path."""

    def create() -> Path:
        check_room_for_run(run_dir, bundle.learn.model, training)
        created = RunFolder.create(run_dir, unique=new_name)
        created.write_split(data.rows, data.root)
        return created.path

    return RunFolder(distributed.agree(create))


RESUMED_AS_RESOLVED = ("body_lr", "fixed_bn", "min_scale")
"""Options whose default can change between versions: a resumed run that left them open takes the
values it resolved when it started (``RESOLVED_DEFAULTS`` for a checkpoint older than the option)."""


def resolved_at_start(checkpoint: Checkpoint, name: str):
    """What ``name`` resolved to when the checkpoint's run started (``RESOLVED_DEFAULTS`` where the
    checkpoint is older than that value)."""
    return checkpoint.config.get(name, RESOLVED_DEFAULTS.get(name))


def with_resumed_values(options: TrainConfig, checkpoint: Checkpoint) -> TrainConfig:
    """``options`` with each of :data:`RESUMED_AS_RESOLVED` left open set to the checkpoint's
    resolved value, so a run goes on as it started, whatever today's defaults."""
    stored = {name: resolved_at_start(checkpoint, name) for name in RESUMED_AS_RESOLVED}
    return options.with_options(
        **{name: value for name, value in stored.items() if getattr(options, name) is None and value is not None}
    )


def check_room_for_run(run_dir, model, training: bool) -> None:
    """Refuse, before the first epoch, a run whose files cannot fit on the disk: two models
    (best and final) and the checkpoint (the model and Adam's two moments), each of which is
    briefly there twice while its new version is written beside the old one."""
    if not training:
        return
    model_bytes = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    check_free_space(run_dir, int(9 * model_bytes) + 10_000_000, "a training run of this model")


def check_same_photos(resume: tuple[RunFolder, Checkpoint], folder) -> None:
    run, checkpoint = resume
    change = describe_data_change(checkpoint.data_files, data_files(folder.files, folder.root))
    if change:
        raise FlowerfastError(
            f"cannot resume {run.path}: the photos in {folder.root} changed since the run "
            f"started: {change}. Put them back, or start a new run"
        )


def check_same_split(resume: tuple[RunFolder, Checkpoint], data: FlowerData) -> None:
    run, checkpoint = resume
    if split_sha256(data.rows, data.root) != checkpoint.split_sha256:
        raise FlowerfastError(
            f"cannot resume {run.path}: its {SPLIT} was changed since the run started "
            "(the split must stay as it was): restore it, or start a new run"
        )


def check_same_resolution(resume: tuple[RunFolder, Checkpoint], config: ResolvedConfig) -> None:
    run, checkpoint = resume
    now = config.to_dict()
    was = {name: resolved_at_start(checkpoint, name) for name in RESOLVED_MUST_MATCH}
    changed = [
        f"{name} is now {now.get(name)!r}, was {was[name]!r}"
        for name in RESOLVED_MUST_MATCH
        if now.get(name) != was[name]
    ]
    if changed:
        raise FlowerfastError(f"cannot resume {run.path}: {'; '.join(changed)}")

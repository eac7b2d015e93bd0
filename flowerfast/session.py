"""Setting up a run: options checked, data scanned and split, the Learner built, the run folder
created and the configuration resolved, in that order, for training and lr-find alike.

Every check that can fail on user input runs before the run folder is created, so a bad option
leaves nothing behind; the Learner's scratch folder lives exactly as long as the ``with`` block.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from .archs import check_arch
from .config import ResolvedConfig, TrainConfig, resolve
from .data import FlowerData, ThinClassWarning, load_data, thin_class_warnings
from .devices import resolve_device, resolve_precision, resolve_workers, use_threads
from .imagecache import default_cache_dir
from .learner import LearnerBundle, create_learner, learner_workspace
from .model import library_versions
from .progress import Reporter
from .runfolder import RunFolder
from .runs import default_run_dir

LRFinder = Callable[[LearnerBundle, RunFolder, Reporter], dict]
"""Runs lr-find on the learner, saves its files into the run folder, returns the suggestions."""


@dataclass
class RunSetup:
    """Data, learner, run folder and the resolved configuration, ready for lr-find or training."""

    config: ResolvedConfig
    data: FlowerData
    bundle: LearnerBundle
    run: RunFolder

    @property
    def options(self) -> TrainConfig:
        return self.config.options


@contextlib.contextmanager
def prepare_run(options: TrainConfig, reporter: Reporter, prefix: str = "", training: bool = True,
                lr_finder: Optional[LRFinder] = None) -> Iterator[RunSetup]:
    """Set up a run of ``options`` (validated) in a new run folder (default
    ``runs/<prefix><arch>-<timestamp>``) and write ``split.csv`` and ``config.json``.

    ``lr_finder`` is used for ``lr="auto"`` on a training run. The Learner's scratch folder is
    removed when the block ends, however it ends.
    """
    check_arch(options.arch)
    run_dir = RunFolder.check_new(options.out or default_run_dir(f"{prefix}{options.arch}"))
    device = resolve_device(options.device)
    workers = resolve_workers(options.workers, device)
    precision = resolve_precision(options.precision, device)
    threads = use_threads(options.threads)
    cache_dir = (options.cache_dir or default_cache_dir()) if options.cache else None

    reporter.stage(f"scanning {options.data or 'the embedded sample photos'}")
    data = load_data(options.data, size=options.size, bs=options.bs, valid_pct=options.valid_pct,
                     seed=options.seed, workers=workers, device=device, split_file=options.split_file,
                     cache_dir=cache_dir)
    notes = thin_class_warnings(data.rows, data.classes)
    for note in notes:
        warnings.warn(note, ThinClassWarning, stacklevel=3)
    with learner_workspace() as scratch:
        reporter.stage(f"building {options.arch}")
        bundle = create_learner(data, arch=options.arch, size=options.size, pretrained=options.pretrained,
                                weights=options.weights, device=device, precision=precision,
                                compile=options.compile, path=scratch)
        run = RunFolder.create(run_dir, unique=options.out is None)
        run.write_split(data.rows, data.root)

        def find() -> dict:
            reporter.stage("running the learning-rate finder (--lr auto)")
            return lr_finder(bundle, run, reporter)

        config = resolve(options, data=data, run_dir=run.path, device=device, workers=workers,
                         threads=threads, precision=bundle.precision, channels_last=bundle.channels_last,
                         cache_dir=cache_dir, weights=bundle.weights, versions=library_versions(),
                         training=training, lr_finder=find if lr_finder is not None else None)
        config.warnings += notes
        run.write_config(config)
        reporter.run_ready(config)
        yield RunSetup(config=config, data=data, bundle=bundle, run=run)

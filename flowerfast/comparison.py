"""Train several architectures on one identical split and report how they compare.

The first architecture is trained as usual and makes the split; every other one is trained with
``split_file`` set to the first run's ``split.csv`` and otherwise the same options (seed,
transforms, epochs, learning-rate schedule), so the only thing that differs between the runs is
the architecture. Run folders go side by side in one comparison folder, with the report beside them:

    compare-<timestamp>/
        resnet152/   (a full run folder)
        vgg11_bn/
        report.md  report.json  report.html  *.png
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from .archs import check_arch
from .config import TrainConfig, make_config
from .errors import FlowerfastError
from .progress import NullReporter, Reporter
from .reporting import ComparisonReport, build_report, write_report
from .runfolder import SPLIT, RunFolder
from .runs import check_output_dir, create_run_dir, default_run_dir


def parse_archs(archs: Union[str, Sequence[str]]) -> list[str]:
    """``"resnet152,vgg11_bn"`` or a list, to a checked list of at least two distinct names."""
    names = [a.strip() for a in (archs.split(",") if isinstance(archs, str) else archs)]
    names = [a for a in names if a]
    if len(names) < 2:
        raise FlowerfastError(f"--archs needs at least 2 architectures to compare, separated by commas "
                              f"(got {', '.join(names) or 'none'})")
    dupes = sorted({a for a in names if names.count(a) > 1})
    if dupes:
        raise FlowerfastError(f"--archs names {', '.join(dupes)} more than once: each architecture is trained once")
    for name in names:
        check_arch(name)
    return names


def compare(archs: Union[str, Sequence[str]], config: Optional[TrainConfig] = None,
            reporter: Optional[Reporter] = None, **train_options) -> ComparisonReport:
    """Train each of ``archs`` on the same split and write the comparison report.

    ``config``/``train_options`` are the training options shared by every run (as for
    :func:`flowerfast.train`; ``arch`` is ignored). ``out`` is the comparison folder (default
    ``runs/compare-<timestamp>``); each run goes into ``<out>/<arch>/``. Every option is checked,
    and the folder is known to be free, before the first epoch.
    """
    from .training import train

    reporter = reporter or NullReporter()
    names = parse_archs(archs)
    base = make_config(config, **train_options)
    if base.weights is not None:
        raise FlowerfastError("--weights holds one backbone's state dict and cannot serve several architectures")
    out = create_run_dir(check_output_dir(base.out or default_run_dir("compare")))

    split_file = base.split_file
    run_dirs = []
    for i, arch in enumerate(names, 1):
        reporter.stage(f"model {i}/{len(names)}: {arch}")
        result = train(base.with_options(arch=arch, out=out / arch, split_file=split_file), reporter=reporter)
        run_dirs.append(result.run_dir)
        if split_file is None:
            split_file = RunFolder(result.run_dir).file(SPLIT)
    reporter.stage("writing the comparison report")
    return write_report(build_report(run_dirs, reporter), out)

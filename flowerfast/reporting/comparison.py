"""Train several architectures on one identical split and report how they compare.

The first architecture is trained as usual and makes the split; every other one is trained with
``split_file`` set to the first run's ``split.csv`` and otherwise the same options (seed,
transforms, epochs, learning-rate schedule), so the only thing that differs between the runs is
the architecture. Run folders go side by side in one comparison folder, with the report beside them:

    compare-<timestamp>/
        compare.json (the architectures and options, for --resume)
        resnet152/   (a full run folder)
        vgg11_bn/
        report.md  report.json  report.html  *.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from flowerfast.core.errors import FlowerfastError
from flowerfast.core.files import TEMP_SUFFIX, check_output_dir, create_run_dir, default_run_dir, read_json, write_json
from flowerfast.core.progress import NullReporter, Reporter
from flowerfast.hardware import distributed
from flowerfast.models.archs import check_arch, folder_name
from flowerfast.reporting.report import ComparisonReport, build_report, write_report
from flowerfast.runs.config import TrainConfig, make_config
from flowerfast.runs.folder import (
    CHECKPOINT,
    CONFIG,
    LR_FIND_CSV,
    LR_FIND_JSON,
    LR_FIND_PLOT,
    SPLIT,
    SUMMARY,
    RunFolder,
)
from flowerfast.training.checkpoint import RESUME_MAY_CHANGE


def parse_archs(archs: Union[str, Sequence[str]]) -> list[str]:
    """``"resnet152,vgg11_bn"`` or a list, to a checked list of at least two distinct names."""
    names = [a.strip() for a in (archs.split(",") if isinstance(archs, str) else archs)]
    names = [check_arch(a) for a in names if a]  # one spelling per network: resnet50 and timm/resnet50 differ
    if len(names) < 2:
        raise FlowerfastError(
            f"$archs needs at least 2 architectures to compare, separated by commas (got {', '.join(names) or 'none'})",
            parameters=("archs",),
        )
    dupes = sorted({a for a in names if names.count(a) > 1})
    if dupes:
        raise FlowerfastError(
            f"$archs names {', '.join(dupes)} more than once: each architecture is trained once", parameters=("archs",)
        )
    return names


COMPARE_PLAN = "compare.json"


def compare(
    archs: Union[str, Sequence[str]],
    config: Optional[TrainConfig] = None,
    reporter: Optional[Reporter] = None,
    on_folder=None,
    **train_options,
) -> Optional[ComparisonReport]:
    """Train each of ``archs`` on the same split and write the comparison report.

    ``config``/``train_options`` are the training options shared by every run (as for
    :func:`flowerfast.train`; ``arch`` is ignored). ``out`` is the comparison folder (default
    ``runs/compare-<timestamp>``); each run goes into ``<out>/<arch>/``. Every option is checked,
    and the folder is known to be free, before the first epoch. An interrupted comparison goes on
    with :func:`resume_comparison`; ``on_folder`` is called with the comparison folder once it is
    created (the CLI names it in its resume hint).
    """
    reporter = distributed.main_only(reporter or NullReporter())
    names = parse_archs(archs)
    base = make_config(config, **train_options)
    from flowerfast.training.trackers import check_trackers

    check_trackers(base.trackers)  # an unknown tracker or a missing extra, before the comparison's folder
    if base.multi_label:
        raise FlowerfastError(
            "a comparison's accuracy and paired test need one label per photo: train multi-label runs one by one "
            "(flowerfast train $multi_label) and score them with flowerfast evaluate",
            parameters=("multi_label",),
        )
    if base.weights is not None:
        raise FlowerfastError(
            "$weights holds one backbone's state dict and cannot serve several architectures", parameters=("weights",)
        )
    distributed.start_job(base.device)  # under torchrun: rank 0 creates the folder, every process uses it

    def create() -> Path:
        created = create_run_dir(check_output_dir(base.out or default_run_dir("compare")))
        write_json(created / COMPARE_PLAN, {"archs": names, "options": base.with_options(out=created).to_dict()})
        return created

    out = distributed.agree(create)
    if on_folder is not None:
        on_folder(out)
    return run_comparison(out, names, base, reporter)


def resume_comparison(
    out: Union[str, Path], reporter: Optional[Reporter] = None, **changes
) -> Optional[ComparisonReport]:
    """Finish an interrupted comparison: finished models are kept as they are, the interrupted one
    resumes from its checkpoint (see :func:`flowerfast.training.run.resume`), the rest are trained.
    ``changes`` as for that function (where and how to compute, not what)."""
    reporter = distributed.main_only(reporter or NullReporter())
    out = Path(out).expanduser().resolve()
    try:
        plan = read_json(out / COMPARE_PLAN)
        names, options = list(plan["archs"]), dict(plan["options"])
    except FileNotFoundError:
        raise FlowerfastError(f"{out} is not a comparison folder ({COMPARE_PLAN} is missing)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FlowerfastError(f"cannot read {out / COMPARE_PLAN}: {exc}") from None
    from flowerfast.training.run import resumed_options_check

    if "archs" in changes:
        asked = parse_archs(changes.pop("archs"))
        if asked != names:
            raise FlowerfastError(
                f"cannot resume {out} with different options: $archs={','.join(asked)} "
                f"(the comparison has {','.join(names)})",
                parameters=("archs",),
            )
    resumed_options_check(out, options, changes)
    allowed = {k: v for k, v in changes.items() if k in RESUME_MAY_CHANGE}
    return run_comparison(out, names, make_config(TrainConfig(), **{**options, **allowed}), reporter, resuming=allowed)


def clear_unstarted_run(run: RunFolder) -> None:
    """Remove a run folder that was set up but stopped before its first epoch (no checkpoint),
    so the model can be trained into it again; a folder holding anything else is refused."""
    if not run.path.exists():
        return
    setup_files = {CONFIG, SPLIT, LR_FIND_CSV, LR_FIND_JSON, LR_FIND_PLOT}
    found = {p.name for p in run.path.iterdir() if not (p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX))}
    if found - setup_files:
        raise FlowerfastError(
            f"{run.path} holds files of a run that cannot be resumed "
            f"({', '.join(sorted(found - setup_files))}): move it away and resume again"
        )
    for path in run.path.iterdir():
        path.unlink()
    run.path.rmdir()


def run_comparison(
    out: Path, names: list[str], base: TrainConfig, reporter: Reporter, resuming: Optional[dict] = None
) -> Optional[ComparisonReport]:
    """Train (or, when ``resuming``, finish) each architecture into ``out/<arch>`` (``timm/x`` into
    ``out/timm-x``) and report.

    In a job of several processes every process trains each model, and rank 0 alone clears a
    folder and writes the report (the others return ``None``); the comparison folder must be the
    same folder for all (one machine, or a shared file system)."""
    from flowerfast.training.run import resume, train

    split_file = base.split_file
    run_dirs = []
    for i, arch in enumerate(names, 1):
        run = RunFolder(out / folder_name(arch))
        if resuming is not None and run.file(SUMMARY).is_file():
            reporter.stage(f"model {i}/{len(names)}: {arch} is finished, kept as it is")
        elif resuming is not None and run.file(CHECKPOINT).is_file():
            reporter.stage(f"model {i}/{len(names)}: {arch}, resumed")
            resume(run.path, reporter=reporter, **resuming)
        else:
            if resuming is not None:
                distributed.agree(lambda run=run: clear_unstarted_run(run))
            reporter.stage(f"model {i}/{len(names)}: {arch}")
            train(base.with_options(arch=arch, out=run.path, split_file=split_file), reporter=reporter)
        run_dirs.append(run.path)
        if split_file is None:
            split_file = run.file(SPLIT)
    if not distributed.current().is_main:
        return None
    reporter.stage("writing the comparison report")
    return write_report(build_report(run_dirs, reporter), out)

"""Terminal output for the CLI: progress reporters, one-line errors and warnings.

In a terminal a rich progress bar runs under the epoch rows; in logs, pipes and CI only the epoch
rows are printed, one clean line each, so logs stay readable and greppable.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.markup import escape

from flowerfast.core.progress import Reporter
from flowerfast.runs.folder import EpochRecord

if TYPE_CHECKING:
    from flowerfast.runs.resolved import ResolvedConfig

console = Console(highlight=False, soft_wrap=True)  # log lines are never wrapped
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def process_label() -> Optional[str]:
    """``None`` in rank 0 (or a run of one process), else ``process N of M``: in a job started
    with torchrun, rank 0 alone prints (see :func:`quiet_other_processes`)."""
    from flowerfast.hardware.distributed import current

    procs = current()
    return None if procs.is_main else f"process {procs.rank} of {procs.world_size}"


def quiet_other_processes() -> None:
    """In a job of several processes, every process but rank 0 prints nothing on stdout (results,
    progress, JSON) and no warnings; only an error of its own, naming the process."""
    if process_label() is not None:
        console.quiet = True


def interactive() -> bool:
    """Live bars only for a person at a terminal; CI and pipes get plain lines."""
    return console.is_terminal and not os.environ.get("CI")


def format_epoch(record: EpochRecord, total: int, best: bool) -> str:
    """One log line per epoch, the same in a terminal and in CI."""
    width = len(str(total))
    clean = record.train_accuracy_clean
    return (
        f"epoch {record.epoch:>{width}}/{total} {record.phase:<6} "
        f"train_loss {record.train_loss:.4f}  train_acc(aug) {record.train_accuracy_aug:6.1%}  "
        + (f"train_acc(clean) {clean:6.1%}  " if clean is not None else "")
        + f"valid_loss {record.valid_loss:.4f}  valid_acc {record.valid_accuracy:6.1%}  "
        + (
            f"valid_f1 {record.valid_f1:.3f}  valid_mAP {record.valid_map:.3f}  "
            if record.valid_map is not None
            else ""
        )
        + (f"ema {record.ema_valid_score:.3f}  " if record.ema_valid_score is not None else "")
        + f"lr {record.lr:.2e}  {record.seconds:5.1f}s"
        + ("  *best" if best else "")
    )


def print_run_header(config: "ResolvedConfig", out: Console = console) -> None:
    """What the run is about to do: data, split, classes, skipped files, weights."""
    if config.options.split_file is not None:
        split = f"split from {config.options.split_file}"
    elif config.preset_split:
        split = "the folder's own train/valid split"
    else:
        kind = "stratified random split" if config.options.stratify else "random split"
        split = f"{kind}, seed {config.options.seed}"
    how = "" if config.options.size else ", the photos' own size"
    out.print(
        f"data: {config.data}  ({config.n_train} train / {config.n_valid} valid, {split}; {config.size} px{how})",
        markup=False,
    )
    counts = config.class_counts
    listed = ", ".join(f"{c} {counts[c]['train']}/{counts[c]['valid']}" if c in counts else c for c in config.classes)
    weighted = "; loss weighted by class (balanced)" if config.class_weights else ""
    out.print(f"classes ({len(config.classes)}, train/valid): {listed}{weighted}", markup=False)
    if config.skipped:
        out.print(f"[yellow]skipped {len(config.skipped)} unreadable file(s):[/yellow]")
        for s in config.skipped[:10]:
            out.print(f"  {s['file']}: {s['reason']}", markup=False)
        if len(config.skipped) > 10:
            out.print(f"  ... and {len(config.skipped) - 10} more (all listed in config.json)")
    if config.lr is not None:
        if config.lr_find:
            how = "chosen by lr-find (valley)"
        elif config.options.lr is not None:
            how = "as given"
        else:
            how = f"default for {'pretrained' if config.pretrained else 'random'} weights"
        body = f", body from {config.body_lr:.1e}" if config.pretrained and config.body_lr else ""
        frozen = f"; {config.freeze_epochs} frozen epoch(s) first" if config.freeze_epochs else ""
        fixed = "; body batch-norm statistics fixed" if config.fixed_bn else ""
        out.print(f"learning rate: {config.lr:.2e} ({how}){body}{frozen}{fixed}", markup=False)
    layout = ", channels-last" if config.channels_last else ""
    compiled = ", compiled" if config.compile else ""
    out.print(
        f"model: {config.options.arch} from {config.weights_source} on {config.device} "
        f"({config.precision}{layout}{compiled}, {config.threads} threads)",
        markup=False,
    )
    processes = getattr(config, "processes", 1)
    if processes > 1:
        from flowerfast.hardware.distributed import backend_for

        sync = ", batch norms synchronised" if config.options.sync_bn else ""
        out.print(
            f"processes: {processes} (DDP over {backend_for(config.device.split(':')[0])}{sync}); batch "
            f"{config.bs} per process, effective batch {config.effective_bs}",
            markup=False,
        )


class LineReporter(Reporter):
    """One line per stage and per epoch: for logs, pipes and CI."""

    def __init__(self, out: Console = console):
        self.out = out
        self.total = 0
        self.run_dir: Optional[str] = None  # the run being set up or trained, for the resume hint
        self.checkpoint_epoch: Optional[int] = None  # epochs the run's checkpoint holds

    def stage(self, text: str) -> None:
        self.out.print(f"[dim]{escape(text)}...[/dim]")

    def run_ready(self, config: "ResolvedConfig") -> None:
        self.run_dir = config.out
        print_run_header(config, self.out)

    def epochs_started(self, total_epochs: int) -> None:
        self.total = total_epochs

    def batches_started(self, kind: str, total: int, epoch: Optional[int] = None) -> None:
        self.loop = [kind, total, 0]

    LOGGED = {
        "predict": ("batches", 8),
        "grad-cam": ("batches", 8),
        "lr-find": ("batches", 8),
        "scan": ("images", 1000),
        "hash": ("images", 1000),
    }
    """Loops that log a line at each quarter in logs (unit, smallest total worth it); an epoch's
    loops have their own line, and the clean-train pass is short (a bar only)."""

    def batch_done(self, kind: str) -> None:
        """Long loops other than an epoch's (predicting many files, lr-find, scanning a big
        folder) log a line at each quarter, so a log shows they are moving."""
        loop = getattr(self, "loop", None)
        if loop is None or kind not in self.LOGGED or loop[0] != kind:
            return
        loop[2] += 1
        (unit, smallest), total, done = self.LOGGED[kind], loop[1], loop[2]
        if total >= smallest and done in {total * q // 4 for q in (1, 2, 3, 4)}:
            self.out.print(f"{kind}: {done}/{total} {unit}", markup=False)

    def epoch_done(self, record: EpochRecord, best: bool) -> None:
        self.out.print(format_epoch(record, self.total, best), markup=False)

    def checkpoint_saved(self, epoch: int, path) -> None:
        self.checkpoint_epoch = epoch


class RichReporter(LineReporter):
    """Epoch lines plus a live rich progress bar over the batches of the current loop."""

    def __init__(self, out: Console = console):
        super().__init__(out)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=out,
            transient=True,
        )
        self.task = None

    def batches_started(self, kind: str, total: int, epoch: Optional[int] = None) -> None:
        label = f"epoch {epoch}/{self.total} {kind}" if epoch is not None else kind
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task(label, total=total)
        else:
            self.progress.reset(self.task, total=total, description=label)

    def batch_done(self, kind: str) -> None:
        if self.task is not None:
            self.progress.advance(self.task)

    def epoch_done(self, record: EpochRecord, best: bool) -> None:
        self.progress.console.print(format_epoch(record, self.total, best), markup=False)

    def finished(self) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        self.progress.stop()


def make_reporter(to_stderr: bool = False) -> Reporter:
    """A rich bar for a person at a terminal, else plain lines. ``to_stderr`` (with ``--json``)
    keeps stdout for the JSON alone."""
    out = err_console if to_stderr else console
    return RichReporter(out) if out.is_terminal and not os.environ.get("CI") else LineReporter(out)


def print_json(data) -> None:
    """Machine-readable output: JSON on stdout, nothing else there (from rank 0 alone)."""
    import json

    if process_label() is not None:
        return
    from flowerfast.core.files import json_default

    typer.echo(json.dumps(data, indent=2, default=json_default))


def resume_hint(reporter: Optional[LineReporter], command: str = "train", folder: Optional[str] = None) -> str:
    """The rest of the line an interrupted training command ends with: what is kept and the
    command that goes on (``folder``: what to resume, by default the run being trained)."""
    run_dir = reporter.run_dir if reporter is not None else None
    saved = reporter.checkpoint_epoch if reporter is not None else None
    if saved is None and folder is None:
        where = f" in {run_dir}" if run_dir else ""
        return f"no training had begun; files already written{where} are complete"
    kept = ("epoch 1 is kept" if saved == 1 else f"epochs 1-{saved} are kept") if saved else "no epoch was finished"
    return f"{kept}; resume with: {launcher()}flowerfast {command} --resume {folder or run_dir}"


def launcher() -> str:
    """How to start the command again: as it was, with torchrun in a job of several processes
    (a job that ran on several machines is started there again with the same options)."""
    from flowerfast.hardware.distributed import current

    procs = current()
    if not procs.distributed:
        return ""
    if int(os.environ.get("LOCAL_WORLD_SIZE", procs.world_size)) == procs.world_size:
        return f"torchrun --nproc_per_node={procs.world_size} -m "
    return "torchrun (with the job's options) -m "

"""Terminal output for the CLI: progress reporters, one-line errors and warnings.

In a terminal a rich progress bar runs under the epoch rows; in logs, pipes and CI only the epoch
rows are printed, one clean line each, so logs stay readable and greppable.
"""

from __future__ import annotations

import contextlib
import os
import signal
import warnings
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape

from flowerfast.core.errors import FlowerfastError, ProcessLost, ReportedByRankZero
from flowerfast.core.progress import Reporter
from flowerfast.runs.folder import EpochRecord

if TYPE_CHECKING:
    from flowerfast.runs.config import ResolvedConfig

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
    return (f"epoch {record.epoch:>{width}}/{total} {record.phase:<6} "
            f"train_loss {record.train_loss:.4f}  train_acc(aug) {record.train_accuracy_aug:6.1%}  "
            + (f"train_acc(clean) {clean:6.1%}  " if clean is not None else "")
            + f"valid_loss {record.valid_loss:.4f}  valid_acc {record.valid_accuracy:6.1%}  "
            f"lr {record.lr:.2e}  {record.seconds:5.1f}s" + ("  *best" if best else ""))


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
    out.print(f"data: {config.data}  ({config.n_train} train / {config.n_valid} valid, {split}; {config.size} px"
              f"{how})", markup=False)
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
    out.print(f"model: {config.options.arch} from {config.weights_source} on {config.device} "
              f"({config.precision}{layout}{compiled}, {config.threads} threads)", markup=False)
    processes = getattr(config, "processes", 1)
    if processes > 1:
        from flowerfast.hardware.distributed import backend_for

        sync = ", batch norms synchronised" if config.options.sync_bn else ""
        out.print(f"processes: {processes} (DDP over {backend_for(config.device.split(':')[0])}{sync}); batch "
                  f"{config.bs} per process, effective batch {config.effective_bs}", markup=False)


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

    LOGGED = {"predict": ("batches", 8), "lr-find": ("batches", 8), "scan": ("images", 1000)}
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

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=out, transient=True)
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


def fail(message: str, code: int = 1) -> None:
    """Print ``error: message`` on one line to stderr and exit non-zero. Another process than rank
    0 of a job names itself, and prints only an error of its own: one rank 0 reports for every
    process (:class:`ReportedByRankZero`), or one met before the processes joined (options, which
    every process checks alike), ends it silently."""
    label = process_label()
    if label is None:
        err_console.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True)
    else:
        from flowerfast.hardware.distributed import active

        if active():
            err_console.print(f"[bold red]error ({label}):[/bold red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if process_label() is not None:  # rank 0 warns for the job
        return
    text = str(message).strip().splitlines()[0]
    err_console.print(f"[bold yellow]warning:[/bold yellow] {escape(text)}", soft_wrap=True)


def _is_usage_error(exc: BaseException) -> bool:
    """click's UsageError, whether from click itself or from the copy newer typer versions carry."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    usage = "UsageError" in names and hasattr(exc, "format_message")
    return usage and "NoArgsIsHelpError" not in names  # a bare command shows its help


def _help_path(group_ctx) -> str:
    """The command an error without a context is about: the subcommand being parsed, if any."""
    if group_ctx is None:
        return "flowerfast"
    sub = getattr(group_ctx, "invoked_subcommand", None)
    return f"{group_ctx.command_path} {sub}" if sub else group_ctx.command_path


@contextlib.contextmanager
def one_line_usage_errors(group_ctx=None) -> Iterator[None]:
    """A usage mistake (unknown option, bad value, missing argument) as one ``error:`` line that
    says where help is, like every other error, instead of click's boxed usage panel.

    ``group_ctx`` (the command group's context) names the help to point to when the error does
    not say which command it is about.
    """
    try:
        yield
    except Exception as exc:
        if not _is_usage_error(exc):
            raise
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else _help_path(group_ctx)
        message = " ".join(exc.format_message().split())
        err_console.print(f"[bold red]error:[/bold red] {escape(message)} (see {escape(where)} --help)",
                          soft_wrap=True)
        raise typer.Exit(getattr(exc, "exit_code", 2)) from None


class OneLineUsageErrors(typer.core.TyperGroup):
    """The command group: parsing and dispatch under :func:`one_line_usage_errors`."""

    def make_context(self, info_name, args, parent=None, **extra):
        with one_line_usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        with one_line_usage_errors(ctx):
            return super().invoke(ctx)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``finally`` and context manager runs.

    A ``BaseException`` like ``KeyboardInterrupt``: no ``except Exception`` (fastai wraps those in
    its callbacks) may swallow or rewrap it on the way out.
    """


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def terminate_as_exception() -> Iterator[None]:
    """While a command runs, SIGTERM (a job scheduler, ``kill``) unwinds the stack like Ctrl-C
    does, so scratch folders are removed and files being written are not left half-done."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave the default behaviour
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


@contextlib.contextmanager
def user_errors(stopped: Optional[Callable[[], str]] = None) -> Iterator[None]:
    """Turn FlowerfastError into one line and an exit code; show warnings as one line each;
    Ctrl-C and SIGTERM end the command with one line and exit 130 / 143. ``stopped`` gives the
    rest of that line (how to resume), by default that files already written are complete.

    Library noise (deprecation and future warnings from dependencies) is hidden.
    """
    def after_stop() -> str:
        return escape(stopped() if stopped is not None else "files already written in the run folder are complete")

    def stop_word(word: str) -> str:
        from flowerfast.hardware.distributed import current

        if current().distributed:  # torchrun stops every process when one fails, and on a cancelled job
            word += (" (the launcher stopped every process of the job: one of them failed, or the job was "
                     "cancelled)") if word == "terminated" else ""
        return word

    with warnings.catch_warnings(), terminate_as_exception():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        previous = warnings.showwarning
        warnings.showwarning = _show_warning
        try:
            yield
        except ReportedByRankZero:
            raise typer.Exit(1)
        except ProcessLost as exc:  # the job cannot go on; its last checkpoint can
            fail(f"{exc}; {stopped()}" if stopped is not None else str(exc))
        except FlowerfastError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            if process_label() is None:
                err_console.print(f"[bold red]{stop_word('interrupted')}[/bold red]: {after_stop()}")
            raise typer.Exit(130)
        except Terminated:
            if process_label() is None:
                err_console.print(f"[bold red]{stop_word('terminated')}[/bold red]: {after_stop()}")
            raise typer.Exit(143)
        finally:
            warnings.showwarning = previous

"""How a command ends when it cannot go on: a library error, a usage error, Ctrl-C or SIGTERM, each
as one line and an exit code; the library's parameter names written as the command's flags.
"""

from __future__ import annotations

import contextlib
import signal
import warnings
from typing import Callable, Iterator, Optional

import typer
from rich.markup import escape

from flowerfast.cli.output import err_console, process_label
from flowerfast.core.errors import FlowerfastError, ProcessLost, ReportedByRankZero


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


# Parameters whose command-line spelling is not ``--`` plus the name with dashes.
FLAG_SPELLINGS = {"trackers": "--tracker", "n": "-n", "time_budget": "--time", "weight_decay": "--wd"}


def flag_of(parameter: str) -> str:
    """How the command line spells a library parameter: ``valid_pct`` -> ``--valid-pct``."""
    return FLAG_SPELLINGS.get(parameter, "--" + parameter.replace("_", "-"))


def as_flags(exc: FlowerfastError) -> str:
    """The error's message with each parameter it names written as the command's flag.

    The library says ``epochs must be at least 1`` and ``pass pretrained=False`` to a Python
    caller; on the command line these read ``--epochs must be at least 1`` and ``pass
    --no-pretrained`` (``name=True`` is the flag alone, ``name=value`` the flag and the value).
    """
    import re

    def assigned(match: re.Match) -> str:
        flag, value = match.group(1), match.group(2).strip("'\"")
        if value == "True":
            return flag
        if value == "False":
            return "--no-" + flag[2:]
        return f"{flag} {value}"

    marked = exc.spelled(lambda name: "\0" + flag_of(name) + "\0")  # the flags, marked off from the prose
    marked = re.sub(r"\0(--[\w-]+)\0=(True|False|\"[^\"]*\"|'[^']*'|[\w.+/-]+)", assigned, marked)
    return marked.replace("\0", "")


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
        err_console.print(f"[bold red]error:[/bold red] {escape(message)} (see {escape(where)} --help)", soft_wrap=True)
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


def ignore_terminate() -> None:
    """From here the command is ending on its own line: a SIGTERM now (torchrun stops the other
    processes of a job as soon as one fails) would only cut that line short with a traceback."""
    with contextlib.suppress(ValueError):  # not the main thread: nothing was installed
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


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
            word += (
                (" (the launcher stopped every process of the job: one of them failed, or the job was cancelled)")
                if word == "terminated"
                else ""
            )
        return word

    with warnings.catch_warnings(), terminate_as_exception():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        previous = warnings.showwarning
        warnings.showwarning = _show_warning
        try:
            yield
        except ReportedByRankZero:
            raise typer.Exit(1) from None
        except ProcessLost as exc:  # the job cannot go on; its last checkpoint can
            ignore_terminate()
            fail(f"{exc}; {stopped()}" if stopped is not None else str(exc))
        except FlowerfastError as exc:
            ignore_terminate()
            fail(as_flags(exc))
        except KeyboardInterrupt:
            ignore_terminate()
            if process_label() is None:
                err_console.print(f"[bold red]{stop_word('interrupted')}[/bold red]: {after_stop()}")
            raise typer.Exit(130) from None
        except Terminated:
            ignore_terminate()
            if process_label() is None:
                err_console.print(f"[bold red]{stop_word('terminated')}[/bold red]: {after_stop()}")
            raise typer.Exit(143) from None
        finally:
            warnings.showwarning = previous

"""A process of a job of several processes that died or stopped answering, seen from the others: a
collective's failure told apart from a bug of this process, and said in one line
(:class:`~flowerfast.core.errors.ProcessLost`).
"""

from __future__ import annotations

from flowerfast.core.errors import FlowerfastError, ProcessLost, first_line


class peer_failures:
    """A collective that fails because another process died or stopped answering (gloo's
    "Connection closed by peer", NCCL's errors, a timeout) becomes :class:`ProcessLost`: one line
    saying so, instead of a traceback from deep inside torch."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, FlowerfastError):
            return False
        if is_peer_failure(exc):
            raise ProcessLost(describe_peer_failure(exc)) from None
        return False


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective's failure (torch's ``DistError`` family, or a gloo or NCCL
    RuntimeError) rather than a bug of this process."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        word in text
        for word in (
            "gloo",
            "nccl",
            "connection closed",
            "connection reset",
            "broken pipe",
            "timed out",
            "timeout",
            "process group",
        )
    )


PEER_REASONS = ("connection reset by peer", "connection closed by peer", "broken pipe", "timed out", "timeout")


def describe_peer_failure(exc: BaseException) -> str:
    """One line: which process stopped and the gist of torch's message (its first words it finds
    among :data:`PEER_REASONS`, else the start of its first line)."""
    import torch.distributed as dist

    # from the process group itself: this module sits below the job's bookkeeping it guards
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    text = first_line(exc).lower()
    reason = next((r for r in PEER_REASONS if r in text), None) or first_line(exc)[:120]
    return (
        f"another process of this {world_size}-process job stopped or stopped answering ({reason}), "
        f"so process {rank} stops too"
    )

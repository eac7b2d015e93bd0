"""How a server listens, batches and bounds its requests: :class:`ServeConfig`, checked when made.

The limits live here, next to the settings they come from, so the routes, the upload reader and
the page's ``GET /model`` all quote the same numbers.
"""

import os
from dataclasses import dataclass
from typing import Optional

from flowerfast.core.errors import FlowerfastError

API_KEY_ENV = "FLOWERFAST_API_KEY"
FILES_FIELD = "files"
MAX_DECODE_THREADS = 4


@dataclass
class ServeConfig:
    """How the server listens, batches and bounds its requests.

    ``max_batch`` images at most go through the network together, waiting at most ``max_wait_ms``
    for others to join (``max_batch=1`` turns batching off); ``max_file_mb`` and ``max_files``
    bound one request; ``api_key`` (or ``$FLOWERFAST_API_KEY``, read by the CLI) is required by
    every API call but ``/health``; ``decode_threads`` decode uploads (default: the cores, up to 4);
    below ``min_confidence`` an answer is unknown (a request may ask for another).
    A setting out of range is a :class:`~flowerfast.core.errors.FlowerfastError` naming it.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Optional[str] = None
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_file_mb: float = 20.0
    max_files: int = 32
    decode_threads: Optional[int] = None
    access_log: bool = True
    min_confidence: Optional[float] = None

    def __post_init__(self):
        checks = [
            (self.max_batch >= 1, "max_batch", f"$max_batch must be at least 1, not {self.max_batch}"),
            (self.max_wait_ms >= 0, "max_wait_ms", f"$max_wait_ms must not be negative, not {self.max_wait_ms:g}"),
            (self.max_file_mb > 0, "max_file_mb", f"$max_file_mb must be positive, not {self.max_file_mb:g}"),
            (self.max_files >= 1, "max_files", f"$max_files must be at least 1, not {self.max_files}"),
            (0 <= self.port <= 65535, "port", f"$port must be between 0 and 65535, not {self.port}"),
            (
                self.min_confidence is None or 0 <= self.min_confidence <= 1,
                "min_confidence",
                f"$min_confidence must be between 0 and 1, not {self.min_confidence}",
            ),
            (
                self.decode_threads is None or self.decode_threads >= 1,
                "decode_threads",
                f"$decode_threads must be at least 1, not {self.decode_threads}",
            ),
        ]
        for ok, parameter, message in checks:
            if not ok:
                raise FlowerfastError(message, parameters=(parameter,))
        if self.api_key is not None and self.api_key.strip() == "":
            # no parameter named: the key may come from $FLOWERFAST_API_KEY as well as api_key / --api-key
            raise FlowerfastError("the API key must not be empty")

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)

    @property
    def max_request_bytes(self) -> int:
        """A whole request: every file at its limit, plus room for the multipart headers."""
        return self.max_files * (self.max_file_bytes + 16 * 1024) + 64 * 1024

    def threads_for_decoding(self) -> int:
        return self.decode_threads or max(1, min(MAX_DECODE_THREADS, os.cpu_count() or 1))

    def limits_text(self) -> str:
        """The request limit in words, for a 413: ``12.3 MB (4 files of 3 MB)``."""
        return f"{size_text(self.max_request_bytes)} ({self.max_files} files of {self.max_file_mb:g} MB)"


def size_text(n_bytes: float) -> str:
    """A size in megabytes with one decimal, as the limits are quoted."""
    return f"{n_bytes / (1024 * 1024):.1f} MB"

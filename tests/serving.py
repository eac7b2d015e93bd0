"""A real ``flowerfast serve`` process for the tests: started on a free port, its stderr read
line by line, stopped by a signal or killed at the end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

READY = re.compile(r"^serving .* at (http://\S+)$")


class ServerProcess:
    """``flowerfast serve MODEL --port 0 --device cpu ARGS...`` in its own process."""

    def __init__(self, model: Path, *args, env: dict | None = None, cwd: Path | None = None):
        command = [
            sys.executable,
            "-m",
            "flowerfast",
            "serve",
            str(model),
            "--port",
            "0",
            "--device",
            "cpu",
            *[str(a) for a in args],
        ]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "CI": "1", **(env or {})},
            cwd=cwd,
        )
        self.lines: list[str] = []
        self.url: str | None = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            match = READY.match(self.lines[-1])
            if match and self.url is None:
                self.url = match.group(1)
                self._ready.set()
        self._ready.set()  # the process ended: wait_ready stops waiting

    def wait_ready(self, timeout: float = 120) -> str:
        self._ready.wait(timeout)
        if self.url is None:
            self.kill()
            raise AssertionError("the server did not start:\n" + self.stderr)
        return self.url

    def wait(self, timeout: float = 30) -> int:
        """The exit code once the process has ended by itself. ``timeout`` only guards against a
        hang: a process still running then is killed and fails the test, showing its stderr."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self._reader.join(timeout=5)
            raise AssertionError(f"the server did not stop within {timeout:g} s:\n{self.stderr}") from None
        self._reader.join(timeout=5)
        return code

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

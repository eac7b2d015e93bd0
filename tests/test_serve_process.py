"""``flowerfast serve`` as a user runs it: a real process on a real port, stopped by Ctrl-C and
SIGTERM, refusing a taken port, bounded in memory by bad uploads, and without the extra."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import sample_files
from tests.serving import ServerProcess

pytest.importorskip("fastapi", reason="the serve extra (pip install 'flowerfast[serve]') is not installed")

PHOTO = sample_files("rose", 1)[0]


def post_photo(url: str, path: Path) -> tuple[int, object]:
    boundary = "flowerfast-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{url}/predict",
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())


def assert_closed_by_the_server(conn: http.client.HTTPConnection) -> None:
    """The server's end of a kept-alive connection is gone: reading gives end-of-file or a reset."""
    conn.sock.settimeout(60)  # only guards against a hang: the exited process has closed it already
    try:
        assert conn.sock.recv(1) == b""
    except ConnectionResetError:
        pass
    finally:
        conn.close()


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_stops_the_server_cleanly(run_dir, sig, code, word):
    """Stopped by a signal while a client keeps an idle connection open: the process ends by
    itself (it is never killed: ``wait`` fails past its timeout, which only guards against a hang),
    with the signal's exit code and one line, and closes that connection and its port."""
    with ServerProcess(run_dir) as server:
        url = server.wait_ready()
        status, answer = post_photo(url, PHOTO)
        assert status == 200 and [a["path"] for a in answer] == [PHOTO.name]
        host = urlsplit(url)
        idle = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
        idle.request("GET", "/health")
        health = idle.getresponse()
        assert health.status == 200 and json.loads(health.read())["requests"] == 1  # kept alive, then left idle
        server.proc.send_signal(sig)
        assert server.wait(timeout=120) == code, server.stderr
        assert_closed_by_the_server(idle)
    assert server.lines[-1] == f"{word}: the server has stopped"
    assert "Traceback" not in server.stderr
    assert '"POST /predict HTTP/1.1" 200' in server.stderr  # the access log: one line per request
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host.hostname, host.port), timeout=60).close()


def test_a_taken_port_is_one_clear_error(run_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "flowerfast", "serve", str(run_dir), "--port", str(port), "--device", "cpu"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads memory use from /proc (Linux)")
def test_oversized_uploads_do_not_grow_the_server(run_dir):
    """Twenty 30 MB uploads, streamed without a Content-Length, against a 1 MB limit: each is
    refused once its first megabytes are in, and the server's memory stays where it was."""
    with ServerProcess(run_dir, "--max-file-mb", "1", "--max-files", "2", "--no-access-log") as server:
        url = server.wait_ready()
        assert post_photo(url, PHOTO)[0] == 200
        before = rss_mb(server.proc.pid)
        host = urlsplit(url)
        chunk = b"\xff" * (1024 * 1024)
        for _ in range(20):
            conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
            conn.putrequest("POST", "/predict")
            conn.putheader("Content-Type", "multipart/form-data; boundary=b")
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            head = b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n\r\n'
            conn.send(b"%x\r\n%s\r\n" % (len(head), head))
            try:
                for _ in range(30):
                    conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                conn.send(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and closed while the rest was still on its way
            response = conn.getresponse()
            assert response.status == 413 and "over this server's limit" in json.loads(response.read())["error"]
            conn.close()
        after = rss_mb(server.proc.pid)
        assert post_photo(url, PHOTO)[0] == 200
    assert after - before < 50, f"memory grew from {before:.0f} MB to {after:.0f} MB"


def test_without_the_serve_extra_the_error_names_it(run_dir):
    hide = (
        "import sys; sys.modules['fastapi'] = None; "
        "import importlib.util; real = importlib.util.find_spec; "
        "importlib.util.find_spec = lambda name, *a: None if name == 'fastapi' else real(name, *a); "
        "from flowerfast.cli import main; sys.argv = ['flowerfast', 'serve', sys.argv[1]]; main()"
    )
    result = subprocess.run([sys.executable, "-c", hide, str(run_dir)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == 'error: flowerfast serve needs the serve extra: pip install "flowerfast[serve]"'

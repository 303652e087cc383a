"""Debian's Caddy in front of test servers, as deploy/Caddyfile puts it in
front of production: the shipped site block under test-only global options
(its internal CA for localhost, the CA not installed into the system's
trust store, no admin endpoint, loopback only, free ports) and its data in a
folder of the test's. Every wait is bounded."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from tests.support.pgserver import free_port

CADDY = "/usr/bin/caddy"
START_WITHIN_S = 30.0
STOP_WITHIN_S = 10.0
DEPLOYED_CADDYFILE = Path(__file__).resolve().parents[2] / "deploy" / "Caddyfile"


def site_blocks(caddyfile: str) -> str:
    """What follows the global options block: the sites."""
    lines = caddyfile.splitlines()
    start = lines.index("{")
    end = lines.index("}", start)
    return "\n".join(lines[end + 1 :]) + "\n"


def hash_password(plaintext: str) -> str:
    return subprocess.run(
        [CADDY, "hash-password", "--plaintext", plaintext],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()


class CaddyProxy:
    """``caddy run`` with deploy/Caddyfile's sites at https://localhost:<port>;
    ``variables`` are the Caddyfile's ``{$NAME}`` placeholders, besides
    ``PLASMAART_DOMAIN``, which this sets."""

    def __init__(self, workdir: Path, variables: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"https://localhost:{self.port}"
        data = workdir / "caddy-data"
        config = workdir / "caddy-config"
        self.ca_file = data / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        self.caddyfile = workdir / "Caddyfile"
        self.caddyfile.write_text(
            "{\n"
            "\tadmin off\n"
            "\tlocal_certs\n"
            "\tskip_install_trust\n"
            "\tauto_https disable_redirects\n"
            "\tdefault_bind 127.0.0.1\n"
            f"\thttp_port {free_port()}\n"
            f"\thttps_port {self.port}\n"
            "}\n\n" + site_blocks(DEPLOYED_CADDYFILE.read_text())
        )
        self.env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(workdir),
            "XDG_DATA_HOME": str(data),
            "XDG_CONFIG_HOME": str(config),
            **variables,
            "PLASMAART_DOMAIN": f"localhost:{self.port}",
        }
        self.log_path = workdir / "caddy.log"
        self._log: IO[bytes] = self.log_path.open("ab")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [CADDY, "run", "--config", str(self.caddyfile), "--adapter", "caddyfile"],
            env=self.env,
            cwd=self.workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_WITHIN_S
        while not self._handshakes():
            assert self.process.poll() is None, f"caddy exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"caddy not serving TLS:\n{self.log()}"
            time.sleep(0.05)

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts Caddy's local root certificate and nothing else."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _handshakes(self) -> bool:
        if not self.ca_file.exists():
            return False
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw,
                self.ssl_context().wrap_socket(raw, server_hostname="localhost"),
            ):
                return True
        except (OSError, ssl.SSLError):
            return False

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_WITHIN_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_WITHIN_S)
        self._log.close()

"""A throw-away PostgreSQL server for tests: ``initdb`` and ``pg_ctl`` in a temporary folder, on a free port.

The server runs as the unprivileged ``postgres`` user when the tests run as root (PostgreSQL refuses
to run as root) and listens only on a Unix socket in that folder. Without the binaries the test is
skipped, unless CI is set: there, .ci/run installs them and their absence is a failure.
"""
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def postgres_bin() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(candidates[-1]).parent if candidates else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def postgres_url():
    """``postgresql://postgres@/postgres?host=<socket folder>&port=<port>`` of a fresh server."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL (initdb, pg_ctl) is not installed; .ci/run installs the postgresql package")
        pytest.skip("PostgreSQL (initdb, pg_ctl) is not installed")
    root = Path(tempfile.mkdtemp(prefix="pg_"))  # /tmp itself: pytest's folders are closed to other users
    as_server_user = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_server_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def server(*args: str, check: bool = True) -> None:
        subprocess.run([*as_server_user, *args], cwd=root, check=check, capture_output=True, timeout=120)

    try:
        server(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        server(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-o",
               f"-p {port} -k {root} -c listen_addresses=''", "start")
        yield f"postgresql://postgres@/postgres?host={root}&port={port}"
        server(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)

"""A throwaway CA, a server certificate for localhost/127.0.0.1 and a client certificate.

Made once per test process with trustme and written to PEM files that brokers and tests read.
``session_tls()`` returns the shared set (removed at interpreter exit); ``make_tls(directory)``
writes a fresh set into a directory of your choice.
"""

from __future__ import annotations

import atexit
import shutil
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import trustme

from tests.harness import _process

__all__ = ["TLSFiles", "make_tls", "session_tls"]


@dataclass(frozen=True)
class TLSFiles:
    """Paths of the PEM files of one throwaway PKI."""

    directory: Path
    ca_file: Path  # the CA certificate: trust this
    server_cert: Path  # leaf certificate then the chain up to (not including) the CA
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_context(self, *, with_client_cert: bool = False) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` that trusts the CA (and presents the client cert if asked)."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        if with_client_cert:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx

    def copy_to(self, directory: Path) -> TLSFiles:
        """Copy the files into ``directory`` (e.g. inside a chroot) and return the new paths."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = {}
        for field in ("ca_file", "server_cert", "server_key", "client_cert", "client_key"):
            src: Path = getattr(self, field)
            dst = directory / src.name
            shutil.copyfile(src, dst)
            dst.chmod(0o644)
            paths[field] = dst
        return TLSFiles(directory=directory, **paths)


def make_tls(directory: Path) -> TLSFiles:
    """Write a fresh CA, a server cert (localhost, 127.0.0.1, ::1) and a client cert."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="aiobus test CA")
    server = ca.issue_cert("localhost", "127.0.0.1", "::1", common_name="localhost")
    client = ca.issue_cert("aiobus-test-client@example.invalid", common_name="aiobus-test-client")
    files = TLSFiles(
        directory=directory,
        ca_file=directory / "ca.pem",
        server_cert=directory / "server-cert.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client-cert.pem",
        client_key=directory / "client-key.pem",
    )
    ca.cert_pem.write_to_path(str(files.ca_file))
    with files.server_cert.open("wb") as f:
        for blob in server.cert_chain_pems:
            f.write(blob.bytes())
    server.private_key_pem.write_to_path(str(files.server_key))
    with files.client_cert.open("wb") as f:
        for blob in client.cert_chain_pems:
            f.write(blob.bytes())
    client.private_key_pem.write_to_path(str(files.client_key))
    # Brokers may drop privileges or run in a chroot: the files are throwaway, keep them readable.
    for path in (files.ca_file, files.server_cert, files.server_key):
        path.chmod(0o644)
    return files


_PREFIX = "aiobus-tls-"
_lock = threading.Lock()


def _sweep_stale(base: Path) -> None:
    """Remove session PKI directories of test processes that died without cleaning up."""
    for directory in base.glob(_PREFIX + "*"):
        owner = _process.read_owner(directory)
        if owner is None:
            # No owner file: written by an older harness, or being set up right now.
            if time.time() - directory.stat().st_mtime > 3600:
                shutil.rmtree(directory, ignore_errors=True)
        elif not _process.owner_alive(owner):
            shutil.rmtree(directory, ignore_errors=True)


_session: TLSFiles | None = None


def session_tls() -> TLSFiles:
    """The process-wide throwaway PKI (made on first use, deleted at interpreter exit)."""
    global _session
    with _lock:
        if _session is None:
            _sweep_stale(Path(tempfile.gettempdir()))
            directory = Path(tempfile.mkdtemp(prefix=_PREFIX))
            _process.write_owner(directory)
            atexit.register(shutil.rmtree, directory, True)
            _session = make_tls(directory)
        return _session

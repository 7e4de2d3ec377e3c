"""One place that turns the TLS options into an ``ssl.SSLContext`` for every protocol."""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from .errors import ConfigError
from .settings import CommonOptions

if TYPE_CHECKING:
    from .url import Settings

log = logging.getLogger("aiobus.tls")


def client_context(options: CommonOptions) -> ssl.SSLContext:
    """Verify the server against ``ca_file`` (or the system store) unless ``verify=False`` is
    asked for explicitly; present ``certfile``/``keyfile`` when given."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=options.ca_file)
        if options.certfile:
            context.load_cert_chain(options.certfile, options.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS files: {exc}") from None
    if not options.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def warn_if_unverified(settings: Settings) -> bool:
    """Log one WARNING naming the endpoints when this connection's TLS skips verifying the
    server (``verify=False``, a keyword only: a URL cannot ask for it). Call once per
    connection, not per attempt, so the warning is seen, not drowned. True if it warned."""
    if not settings.tls or settings.options.verify:
        return False
    endpoints = ", ".join(str(e) for e in settings.endpoints)
    log.warning(
        "aiobus %s: TLS certificate verification is OFF (verify=False) for %s: the broker's "
        "identity is not checked, so anyone on the network path can impersonate it and read "
        "the traffic (and the password); give ca_file= instead",
        settings.redacted_url(),
        endpoints,
    )
    return True

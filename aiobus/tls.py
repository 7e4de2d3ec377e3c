"""One place that turns the TLS options into an ``ssl.SSLContext`` for every protocol."""

from __future__ import annotations

import ssl

from .errors import ConfigError
from .settings import CommonOptions


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

"""TLS for ``python <bundle> serve``: the certificate and key checked before the server binds.

uvicorn loads the files only once it starts, and a bad file there ends in a traceback after the
model has loaded; here each file is read and the pair loaded into an ``ssl.SSLContext`` first, so
that a problem is one line naming the file.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

CERTFILE_ENV = "GPUXC_SSL_CERTFILE"
KEYFILE_ENV = "GPUXC_SSL_KEYFILE"


class TLSConfigError(ValueError):
    """A TLS setting that cannot work: the CLI reports it as bad usage (exit 2)."""


def _pem(path: str, what: str, marker: bytes) -> None:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"cannot read the TLS {what} file {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data or marker not in data:
        raise TLSConfigError(f"the TLS {what} file {path} is not a PEM {what}")


def _no_password() -> str:
    # An encrypted key without a password: fail instead of OpenSSL prompting on the terminal.
    raise TLSConfigError("no password")


def ssl_options(certfile: str | None, keyfile: str | None, password_env: str | None = None) -> dict[str, Any]:
    """uvicorn's ``ssl_*`` keyword arguments, or ``{}`` without TLS; ``TLSConfigError`` if they cannot work.

    The flags fall back to ``GPUXC_SSL_CERTFILE``/``GPUXC_SSL_KEYFILE``. The key's password is read
    from the environment variable named by ``password_env``, never from the command line (where
    ``ps`` shows it).
    """
    certfile = certfile or os.environ.get(CERTFILE_ENV) or None
    keyfile = keyfile or os.environ.get(KEYFILE_ENV) or None
    if certfile is None and keyfile is None:
        if password_env:
            raise TLSConfigError("--ssl-keyfile-password-env needs --ssl-certfile and --ssl-keyfile")
        return {}
    if certfile is None or keyfile is None:
        missing = "--ssl-certfile" if certfile is None else "--ssl-keyfile"
        raise TLSConfigError(f"TLS needs both --ssl-certfile and --ssl-keyfile; {missing} is missing")
    password = None
    if password_env:
        password = os.environ.get(password_env)
        if password is None:
            raise TLSConfigError(f"--ssl-keyfile-password-env: the environment variable {password_env} is not set")
    _pem(certfile, "certificate", b"CERTIFICATE-----")
    _pem(keyfile, "key", b"PRIVATE KEY-----")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile, password if password is not None else _no_password)
    except TLSConfigError:
        raise TLSConfigError(f"the TLS key file {keyfile} is encrypted: name the variable holding its "
                             "password with --ssl-keyfile-password-env") from None  # fmt: skip
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            message = f"the TLS key file {keyfile} is not the key of the certificate {certfile}"
        elif password is not None:
            message = f"cannot decrypt the TLS key file {keyfile} with the password in ${password_env}"
        else:
            message = f"cannot load the TLS certificate {certfile} with the key {keyfile} ({exc.reason or exc})"
        raise TLSConfigError(message) from None
    return {"ssl_certfile": certfile, "ssl_keyfile": keyfile, "ssl_keyfile_password": password}

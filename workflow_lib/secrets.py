"""Passwords in URLs: kept out of every string the workflow or Snakemake prints or stores.

A dataset's ``path`` with a user and password before its host (http or https, also after GDAL's
``/vsicurl/`` or a chain of ``/vsi...`` prefixes) and a
``database.url`` with a password are rewritten, when the config is validated (at parse time, before
Snakemake sees a rule), with ``***`` in place of the password: plans, dataset records, the status
database, logs, messages and Snakemake's own records carry that form. The password itself goes
into this process's environment, which the jobs inherit (as GDAL's own ``GDAL_HTTP_USERPWD``
would): the input's into ``WORKFLOW_URL_CREDENTIALS``, handed to GDAL as an option of that URL alone
(never a global one, never through rasterio's logged options); the database's is put back
(``reveal``) only where the status database is opened.
"""

from __future__ import annotations

import json
import os
import re
from urllib.parse import unquote

MASK = "***"
# {URL without user info: its user info as written}, JSON. Keyed by URL, so that a masked URL is
# only ever given back its own password.
CREDENTIALS_ENV = "WORKFLOW_URL_CREDENTIALS"
_USERINFO = re.compile(r"^(?P<prefix>(?:/vsi[a-z0-9_]+/+)*)(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://"
                       r"(?P<user>[^:@/]*)(?::(?P<password>[^@/]*))?@(?P<rest>.*)$", re.DOTALL)


def redact(url: str) -> str:
    """The URL with its password masked, for logs and messages; other strings unchanged."""
    m = _USERINFO.match(url)
    if not m or m.group("password") is None:
        return url
    userinfo = f"{m.group('user')}:{MASK}"
    return f"{m.group('prefix')}{m.group('scheme')}://{userinfo}@{m.group('rest')}"


def without_userinfo(url: str) -> str:
    """The URL without its user and password (``https://host/x.tif``): the URL GDAL is given."""
    m = _USERINFO.match(url)
    return f"{m.group('prefix')}{m.group('scheme')}://{m.group('rest')}" if m else url


def hide(url: str) -> str:
    """The URL with its password masked, the password kept in the environment (for ``reveal`` and
    ``credentials``). A URL already masked, or without a password, is unchanged."""
    m = _USERINFO.match(url)
    if not m or m.group("password") in (None, MASK):
        return url
    known = _stored()
    known[without_userinfo(url)] = f"{m.group('user')}:{m.group('password')}"
    os.environ[CREDENTIALS_ENV] = json.dumps(known)
    return redact(url)


def reveal(url: str) -> str:
    """A masked URL with its kept password back (to connect to a database); others unchanged."""
    m = _USERINFO.match(url)
    userinfo = _stored().get(without_userinfo(url)) if m and m.group("password") == MASK else None
    return f"{m.group('prefix')}{m.group('scheme')}://{userinfo}@{m.group('rest')}" if userinfo else url


def credentials() -> dict[str, str]:
    """Every URL with a kept password: {URL without user info: "user:password", decoded}, as
    curl takes them (GDAL_HTTP_USERPWD)."""
    return {url: ":".join(unquote(part) for part in userinfo.split(":", 1)) for url, userinfo in _stored().items()}


def _stored() -> dict[str, str]:
    try:
        return dict(json.loads(os.environ.get(CREDENTIALS_ENV) or "{}"))
    except ValueError:
        return {}

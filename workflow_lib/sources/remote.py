"""Inputs on a web server or in object storage, read by GDAL's range requests.

``https://host/dem.tif`` is read through GDAL's ``/vsicurl/``, ``s3://bucket/key`` through
``/vsis3/`` (``gs://`` and ``az://`` likewise): a header at planning, and in tile jobs only the
bytes of the blocks a window needs, never the whole object. Credentials come from where GDAL looks
for them (AWS_ACCESS_KEY_ID and friends, AWS_PROFILE, ~/.aws/credentials and config, instance
roles): the workflow never reads, prints or logs them, and paths carry none. A password written in
an http(s) URL is masked in the config (secrets.py) and handed to GDAL for that URL alone.

A remote object is no Snakemake input (a storage plugin would download it whole). Its identity is
the server's answer to a HEAD request: size, ETag and Last-Modified. The plan's cache is keyed by
them, so a changed object is planned again and its tiles are made again.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import socket
from urllib.parse import urlsplit
from functools import lru_cache

from workflow_lib import secrets

_SCHEMES = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/"}
_URL = re.compile(r"^(?P<scheme>https?|s3|gs|az)://(?P<rest>.+)$", re.IGNORECASE)
_VSI = re.compile(r"^/vsi(curl|s3|gs|az|adls|oss|swift|webhdfs)(_streaming)?/", re.IGNORECASE)

# GDAL's settings for reading over a network, unless the environment sets them: transient errors
# (429, 5xx, timeouts) retried with a growing delay, and one GET for neighbouring blocks. They
# touch only network reads, so they are on for every input (the files of a VRT may be remote).
NETWORK_DEFAULTS = {
    "GDAL_HTTP_MAX_RETRY": "8",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_CONNECTTIMEOUT": "20",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
}
# For a remote input itself: no listing of its "folder" on open (one request per page of
# siblings, in search of side-car files). Not for local files, whose .aux.xml and .msk count.
REMOTE_DEFAULTS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


# GDAL's archive handlers: /vsizip/{archive}/{member}, where the archive is a local file
# (/vsizip//data/a.zip/x.tif, /vsizip/data/a.zip/x.tif) or a remote one (/vsizip//vsicurl/https://...).
# GDAL itself finds where the archive ends by its extension.
_ARCHIVE = re.compile(r"^(?P<handler>/vsi(?:zip|tar|gzip|7z|rar)/)(?P<archive>.+?\.(?:zip|tar|tgz|tar\.gz|gz|7z|rar))"
                      r"(?P<member>/.*)?$", re.IGNORECASE)


def split_archive(path: str) -> tuple[str, str, str] | None:
    """(handler, archive, member) of a path into an archive, e.g. ("/vsizip/", "/data/a.zip",
    "/x.tif"); None for any other path."""
    m = _ARCHIVE.match(path)
    return (m.group("handler"), m.group("archive"), m.group("member") or "") if m else None


def is_remote(path: str) -> bool:
    """A URL or a GDAL network file, or an archive that is one."""
    archive = split_archive(path)
    if archive:
        path = archive[1]
    return bool(_URL.match(path) or _VSI.match(path))


def to_gdal(path: str) -> str:
    """The GDAL file name of a URL (``s3://b/k`` -> ``/vsis3/b/k``), without user info (its
    password reaches GDAL as an option of that file, ``network_options``); other paths unchanged."""
    m = _URL.match(path)
    if not m:
        return secrets.without_userinfo(path)  # a /vsicurl/ URL with user info: as written, less the user info
    scheme = m.group("scheme").lower()
    prefix = _SCHEMES[scheme]
    return prefix + (secrets.without_userinfo(path) if prefix == "/vsicurl/" else m.group("rest"))


def network_options(remote: bool = True) -> dict[str, str]:
    """The defaults above (REMOTE_DEFAULTS too when ``remote``), less what the environment sets
    itself: the user's choice wins."""
    _install_credentials()
    defaults = {**NETWORK_DEFAULTS, **(REMOTE_DEFAULTS if remote else {})}
    return {k: v for k, v in defaults.items() if k not in os.environ}


_installed: dict[str, str] = {}


def _install_credentials() -> None:
    """The passwords of input URLs (secrets.py), given to GDAL as options of each URL's own file
    (VSISetPathSpecificOption, GDAL >= 3.6), once per process: never a process-wide option, never
    through rasterio.Env, whose options are logged."""
    for url, userpwd in secrets.credentials().items():
        name = to_gdal(url)
        if not name.startswith("/vsicurl/"):
            # Inside an archive or another handler (/vsizip//vsicurl/https://host/a.zip/x.tif): the
            # part GDAL fetches over HTTP is not known here, so the option covers the host.
            at = name.find("/vsicurl/")
            if at < 0:
                continue
            scheme, _, rest = name[at + len("/vsicurl/"):].partition("://")
            name = f"/vsicurl/{scheme}://{rest.split('/', 1)[0]}/"
        if _installed.get(name) == userpwd:
            continue
        lib = _gdal()
        lib.VSISetPathSpecificOption(name.encode(), b"GDAL_HTTP_USERPWD", userpwd.encode())
        _installed[name] = userpwd


def gdal_options(path: str) -> dict[str, str]:
    """GDAL config options for reading ``path`` (local or remote)."""
    return network_options(is_remote(path))


@lru_cache(maxsize=1)
def _gdal():
    """GDAL's C library, the one rasterio's wheel bundles (already loaded by importing rasterio):
    the HEAD answer of an object is not reachable through rasterio."""
    import rasterio  # noqa: F401 - loads libgdal

    with open("/proc/self/maps") as f:
        libs = sorted({line.split()[-1] for line in f if "/libgdal" in line})
    lib = ctypes.CDLL(libs[0])
    lib.VSIGetFileMetadata.restype = ctypes.POINTER(ctypes.c_char_p)
    lib.VSIGetFileMetadata.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
    lib.CSLDestroy.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
    lib.VSICurlClearCache.argtypes = []
    lib.VSISetPathSpecificOption.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
    return lib


def head(path: str) -> dict[str, str] | None:
    """The server's headers for ``path`` (a GDAL remote file name), through GDAL itself (its
    credentials, endpoint and retry settings); None if it has no such object or refused."""
    import rasterio

    lib = _gdal()
    with rasterio.Env(**network_options()):
        lib.VSICurlClearCache()  # the answer now, not one GDAL remembers from earlier in this process
        items = lib.VSIGetFileMetadata(path.encode(), b"HEADERS", None)
    if not items:
        return None
    out = {}
    i = 0
    while items[i] is not None:
        key, _, value = items[i].decode("utf-8", "replace").partition("=")
        out[key.strip().lower()] = value.strip()
        i += 1
    lib.CSLDestroy(items)
    return out


def remote_identity(path: str) -> dict | None:
    """A remote object's (or its archive's) size, ETag and Last-Modified, as its server says them
    ("" where it says none); None if the server has no such object (or refused)."""
    archive = split_archive(path)
    headers = head(to_gdal(archive[1] if archive else path))
    if headers is None:
        return None
    return {"size": int(headers.get("content-length") or headers.get("x-goog-stored-content-length") or -1),
            "etag": headers.get("etag", ""), "last-modified": headers.get("last-modified", "")}


def remote_stamp(path: str) -> tuple[int, int] | None:
    """(size, a number made from ETag and Last-Modified) of a remote object (of the archive it is
    in); None if the server has no such object (or refused: the header read says which)."""
    found = remote_identity(path)
    if found is None:
        return None
    identity = f"{found['etag']}|{found['last-modified']}"
    return found["size"], int(hashlib.sha256(identity.encode()).hexdigest()[:15], 16)


def explain(url: str, message: str) -> str:
    """GDAL's error for a remote read, said for people: what the HTTP status means and what to do."""
    m = re.search(r"HTTP response code: (\d+)", message)
    code = int(m.group(1)) if m else None
    unreachable = _unreachable(url) if code is None else None
    if unreachable:
        return f"{unreachable}: check the URL and that its server is up"
    if code == 404 or "does not exist in the file system" in message or "No such file" in message:
        return f"the server has no such object (HTTP 404): check the URL {url}"
    if code in (401, 403) and urlsplit(url).scheme.lower() in ("http", "https"):
        return (f"access denied (HTTP {code}) to {url}: check the user and password (in the URL, "
                "before the host, or in ~/.netrc)")
    if code in (401, 403):
        return (f"access denied (HTTP {code}) to {url}: check the credentials in the environment "
                "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws) and the object's permissions")
    if code is not None:
        return f"the server answered HTTP {code} for {url} after GDAL's retries ({message})"
    return f"cannot be read from {url}: {message}"


def _unreachable(url: str) -> str | None:
    """Why an http(s) server cannot be reached at all (GDAL then says only that the file does not
    exist), or None when it can be (or the URL is not http)."""
    parts = urlsplit(secrets.without_userinfo(url))
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=10).close()
    except socket.gaierror:
        return f"host not found: {parts.hostname}"
    except ConnectionRefusedError:
        return f"connection refused by {parts.hostname}:{port}"
    except OSError as exc:
        return f"cannot connect to {parts.hostname}:{port} ({exc.strerror or exc})"
    return None

"""What the MONAI Label server accepts: plain ids, an explicit CORS allow-list, no deletes unless
allowed, an upload size limit, labels that fit their film (docs/monailabel.md, "Security").

- :func:`plain_name_problem`: ids and tags are plain names, never paths;
- :class:`ServerPolicy`: the settings ``spine-app monailabel serve`` hands the server through the
  environment (``SPINE_APP_MONAILABEL_*``);
- :class:`RequestGuard`: an ASGI middleware in front of MONAI Label's routes (installed by
  :mod:`spine_app.monailabel.server`), so a refused request is answered before MONAI Label writes
  anything;
- :func:`label_problem`: a saved label must decode as an image of its film's size.

Nothing here imports ``monailabel`` or ``starlette`` at module level: the command line uses it too.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

MAX_NAME = 128
#: query parameters of MONAI Label's routes that name a datastore image, label, tag or session
ID_PARAMS = ("image", "id", "label", "tag", "session_id")
#: keys a client's infer ``params`` may not set: they would replace the film, label or model the query names
RESERVED_INFER_PARAMS = ("image", "label", "session", "session_id", "model")
#: DELETE routes that remove a user's film or label (MONAI Label's deprecated ``/datastore/`` included)
DELETE_ROUTES = ("/datastore", "/datastore/image", "/datastore/label")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
ENV_CORS, ENV_DELETE, ENV_UPLOAD = (
    "SPINE_APP_MONAILABEL_CORS_ORIGINS",
    "SPINE_APP_MONAILABEL_ALLOW_DELETE",
    "SPINE_APP_MONAILABEL_MAX_UPLOAD_MB",
)
DEFAULT_MAX_UPLOAD_MB = 64.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def plain_name_problem(value: str) -> str | None:
    """Why ``value`` is not a plain datastore name (None when it is): empty, longer than 128
    characters, or holding ``/``, ``\\``, ``..``, NUL or another control character."""
    if not value:
        return "is empty"
    if len(value) > MAX_NAME:
        return f"is longer than {MAX_NAME} characters"
    if "/" in value or "\\" in value:
        return "holds a path separator"
    if ".." in value or value == ".":
        return "holds '..'"
    if _CONTROL.search(value):
        return "holds a control character"
    return None


def check_plain_name(what: str, value: str) -> str:
    """``value`` if it is a plain name, else ValueError naming ``what`` and the reason (one line)."""
    problem = plain_name_problem(value)
    if problem:
        raise ValueError(f"{what} {value[:80]!r} {problem}: give a plain datastore id, not a path")
    return value


def parse_origins(values: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """``--cors-origin`` values (repeated or comma-separated) -> origins ``scheme://host[:port]``.

    Raises:
        ValueError: ``*``, or a value that is not an http(s) origin (a path or query is not an origin).
    """
    if values is None or values == "":
        return ()
    items = [values] if isinstance(values, str) else [str(v) for v in values]
    origins: list[str] = []
    for item in items:
        for origin in (part.strip().rstrip("/") for part in item.split(",")):
            if origin == "*":
                raise ValueError("--cors-origin '*' would let every web page use the server; name the viewer's origin")
            if origin and not _ORIGIN.match(origin):
                raise ValueError(f"--cors-origin {origin!r} is not an origin like http://viewer.local:3000")
            if origin and origin not in origins:
                origins.append(origin)
    return tuple(origins)


@dataclass(frozen=True)
class ServerPolicy:
    """Who may call the server from a browser, whether deletes are allowed, the largest upload."""

    cors_origins: tuple[str, ...] = ()
    allow_delete: bool = False
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20)

    def host_names(self) -> tuple[str, ...]:
        """Names a request that reached a loopback address may carry as ``Host``: loopback names and the
        hosts of the allow-listed origins (a reverse proxy on this machine that keeps the public name)."""
        return LOOPBACK_NAMES + tuple(_host_name(urlsplit(origin).netloc) for origin in self.cors_origins)

    def environment(self) -> dict[str, str]:
        """The ``SPINE_APP_MONAILABEL_*`` variables that carry this policy to the server process."""
        return {
            ENV_CORS: json.dumps(list(self.cors_origins)),
            ENV_DELETE: "1" if self.allow_delete else "0",
            ENV_UPLOAD: str(self.max_upload_bytes / 2**20),
        }

    @classmethod
    def from_environment(cls, env: MutableMapping[str, str] | None = None) -> ServerPolicy:
        """The policy in ``env`` (default ``os.environ``); unset variables keep the safe defaults."""
        env = os.environ if env is None else env
        origins = json.loads(env.get(ENV_CORS) or "[]")
        megabytes = float(env.get(ENV_UPLOAD) or DEFAULT_MAX_UPLOAD_MB)
        return cls(
            parse_origins(origins), env.get(ENV_DELETE, "0").lower() in ("1", "true", "yes"), int(megabytes * 2**20)
        )


def _host_name(host_header: str) -> str:
    """``"[::1]:8000"`` -> ``"::1"``, ``"localhost:8000"`` -> ``"localhost"``."""
    return (urlsplit(f"//{host_header}").hostname or "").lower()


class RequestGuard:
    """ASGI middleware that refuses, before MONAI Label's handlers run (so before any upload is written):

    - 403 a request that reached a loopback address with a ``Host`` that is not a loopback name (DNS
      rebinding: a web page whose name resolves to 127.0.0.1) or with an ``Origin`` that is neither
      the server's own nor on the allow-list (a web page posting to the server);
    - 422 an id, tag or path segment that is not a plain name (``/``, ``\\``, ``..``, NUL, empty, > 128);
    - 403 ``DELETE`` of a film or label unless the policy allows deletes;
    - 413 a body larger than the upload limit (by ``Content-Length``, or counted as it arrives).
    """

    def __init__(self, app: Callable[..., Awaitable[None]], policy: ServerPolicy | None = None) -> None:
        self.app = app
        self.policy = policy or ServerPolicy.from_environment()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal:
            await _answer(send, *refusal)
            return
        await self.app(scope, self._counting(receive), send)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, one-line reason) when the request is refused, else None."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method, path = scope["method"].upper(), scope["path"]
        caller = self._caller_problem(scope, headers)
        if caller:
            return 403, caller
        names = _names_problem(method, path, scope.get("query_string", b"").decode("latin-1"))
        if names:
            return 422, names
        if method == "DELETE" and path.rstrip("/") in DELETE_ROUTES and not self.policy.allow_delete:
            return 403, "deleting films and labels is off: start the server with --allow-delete to allow it"
        length, limit = headers.get("content-length", ""), self.policy.max_upload_bytes
        if length.isdigit() and int(length) > limit:
            return 413, f"upload of {int(length)} bytes is over the limit of {limit} bytes (--max-upload-mb)"
        return None

    def _caller_problem(self, scope: Scope, headers: dict[str, str]) -> str | None:
        """Why a browser-borne request is refused: a foreign ``Host`` on a loopback connection (DNS
        rebinding) or an ``Origin`` that is neither the server's own nor allow-listed."""
        host = headers.get("host", "")
        server = (scope.get("server") or ("", 0))[0]
        if server in ("127.0.0.1", "::1") and host and _host_name(host) not in self.policy.host_names():
            return f"Host {host[:80]!r} is not this machine: the server answers loopback names only"
        origin = headers.get("origin")
        if origin is not None and origin not in self.policy.cors_origins and origin != f"{scope['scheme']}://{host}":
            return f"cross-origin request from {origin[:80]!r} refused (allow a viewer with --cors-origin)"
        return None

    def _counting(self, receive: Receive) -> Receive:
        """``receive`` that raises HTTP 413 once the body passes the limit (bodies without a length)."""
        from starlette.exceptions import HTTPException

        limit, seen = self.policy.max_upload_bytes, 0

        async def counted() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, f"upload is over the limit of {limit} bytes (--max-upload-mb)")
            return message

        return counted


def _names_problem(method: str, path: str, query_string: str) -> str | None:
    """Why the path segments or the id/tag query parameters are not plain names (None when they are).
    An empty ``image`` is allowed where MONAI Label takes the film from the upload instead."""
    for segment in path.split("/"):
        if segment in ("..", ".") or "\\" in segment or _CONTROL.search(segment):
            return f"path segment {segment[:80]!r} is not a plain name"
    upload_names_film = (method == "POST" and path.startswith("/infer/")) or (
        method == "PUT" and path.rstrip("/") in ("/datastore", "/datastore/image")
    )
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        if name in ID_PARAMS and not (name == "image" and value == "" and upload_names_film):
            problem = plain_name_problem(value)
            if problem:
                return f"{name} {value[:80]!r} {problem}: give a plain datastore id, not a path"
    return None


async def _answer(send: Send, status: int, detail: str) -> None:
    """Send ``{"detail": detail}`` with ``status`` (MONAI Label's and FastAPI's error shape)."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def label_problem(label: str | Path, film: str | Path, view: str | None = None) -> str | None:
    """Why an uploaded ``label`` cannot be saved for ``film`` (None when it can): not PNG/TIFF, not
    decodable, not 2-D 8-bit, not the film's size, or (``view`` given) bits of the other view's channels."""
    import numpy as np
    from PIL import Image

    from spine_app.data.io import read_image
    from spine_app.monailabel.encoding import decode_masks

    if not str(label).lower().endswith((".png", ".tif", ".tiff")):
        return "a label must be a PNG (or TIFF) image"
    rows, cols = read_image(film)[0].shape
    try:
        with Image.open(label) as image:
            if image.size != (cols, rows):  # checked before decoding the pixels
                return f"label is {image.size[0]}x{image.size[1]} px but the film is {cols}x{rows} px"
            array = np.asarray(image)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return f"cannot decode the label as an image ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    if array.ndim != 2 or array.dtype not in (np.uint8, np.bool_):
        return f"a label must be one 8-bit grey channel (bit c = structure c), got {array.dtype} of shape {array.shape}"
    if view:
        try:
            decode_masks(array, view)
        except ValueError as err:
            return str(err).splitlines()[0]
    return None


__all__ = [
    "DELETE_ROUTES",
    "ID_PARAMS",
    "RESERVED_INFER_PARAMS",
    "RequestGuard",
    "ServerPolicy",
    "check_plain_name",
    "label_problem",
    "parse_origins",
    "plain_name_problem",
]

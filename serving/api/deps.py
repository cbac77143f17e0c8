"""Dependencies of the routes, as `Annotated` aliases: settings, the gateway, API-key checks."""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPBearer

from serving.api.errors import ApiError
from serving.gateway import Gateway
from serving.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_gateway(request: Request) -> Gateway:
    gateway = getattr(request.app.state, "gateway", None)
    if gateway is None:
        raise ApiError(503, "starting", "the gateway is still starting", {"Retry-After": "1"})
    return gateway


SettingsDep = Annotated[Settings, Depends(get_settings)]
GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def presented_keys(request: Request, allow_basic: bool = False) -> list[str]:
    """Every key a client sent, one per header: `X-API-Key`, `Authorization: Bearer <key>`, and with
    `allow_basic` (the web page and its assets only) Basic auth's password.

    A key is taken exactly as it arrived: only the spaces between the scheme and the credentials
    are skipped (RFC 7235), nothing is stripped, folded or trimmed from the key itself, so a key
    with a space, another case or a character more or less is another key. An empty header is an
    (empty, invalid) key, not an absent one.

    Basic credentials are what a browser caches and re-sends by itself, also on requests another
    site makes it send (a cross-site form POST): so they open only the pages, never the API or
    admin routes, which need a header a cross-site form cannot set.
    """
    keys = list(request.headers.getlist("x-api-key"))
    for value in request.headers.getlist("authorization"):
        scheme, _, credentials = value.partition(" ")
        credentials = credentials.lstrip(" ")
        if scheme.lower() == "bearer":
            keys.append(credentials)
        elif allow_basic and scheme.lower() == "basic":
            keys.append(_basic_password(credentials))
    return keys


def _basic_password(credentials: str) -> str:
    """The password of Basic credentials (the browser's login dialog: any user name, the key as
    password); "" when they do not decode."""
    try:
        _, _, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return password


def _matches(key: str | None, keys: list[str]) -> bool:
    if not key:
        return False
    # Compare against every key so the time taken does not say which one almost matched.
    found = False
    for candidate in keys:
        found |= hmac.compare_digest(key.encode(), candidate.encode())
    return found


def _challenge(scheme: str) -> dict[str, str]:
    return {"WWW-Authenticate": f'{scheme} realm="sceneparse"'}


def _check(request: Request, settings: Settings, admin: bool, scheme: str) -> None:
    if not settings.auth_enabled:
        return
    keys = presented_keys(request, allow_basic=scheme == "Basic")
    if len(keys) > 1:
        # Two keys (two headers, or X-API-Key and Authorization) are ambiguous: a proxy or client
        # that adds one must not make the gateway pick whichever it reads first.
        raise ApiError(401, "unauthorized", f"send one key (X-API-Key or Authorization), not {len(keys)}",
                       _challenge(scheme))
    key = keys[0] if keys else None
    if admin:
        if _matches(key, settings.admin_keys):
            return
        if _matches(key, settings.api_keys):
            raise ApiError(403, "forbidden", "this route needs an admin key")
        raise ApiError(401, "unauthorized", "an admin key is required (X-API-Key or Authorization: Bearer)",
                       _challenge(scheme))
    if not _matches(key, settings.api_keys + settings.admin_keys):
        detail = "a valid API key is required (X-API-Key or Authorization: Bearer)"
        raise ApiError(401, "unauthorized", detail if key is None else "the API key is not valid", _challenge(scheme))


# Declared as security schemes so /docs offers "Authorize"; the check itself reads the headers.
_API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key (when keys are set)")
_BEARER = HTTPBearer(auto_error=False, description="the same key as a bearer token")
DeclaredKeys = [Security(_API_KEY_HEADER), Security(_BEARER)]


def require_api_key(request: Request, settings: SettingsDep) -> None:
    """Any configured key (API or admin) when keys are configured; open otherwise."""
    _check(request, settings, admin=False, scheme="Bearer")


def require_page_key(request: Request, settings: SettingsDep) -> None:
    """As `require_api_key`, but Basic credentials (the key as password) count too, and a 401 asks
    the browser for them. Only for the web page, its assets and the API documents."""
    _check(request, settings, admin=False, scheme="Basic")


def require_admin_key(request: Request, settings: SettingsDep) -> None:
    """An admin key when keys are configured; open otherwise."""
    _check(request, settings, admin=True, scheme="Bearer")


ApiKey = Depends(require_api_key)
PageKey = Depends(require_page_key)
AdminKey = Depends(require_admin_key)
# Router-level dependency lists: the check plus the documented schemes.
API_KEY_DEPENDENCIES = [ApiKey, *DeclaredKeys]
ADMIN_KEY_DEPENDENCIES = [AdminKey, *DeclaredKeys]

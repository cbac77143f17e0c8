"""Tell the serving side that a new version (or a rollback) is there: gateway reload, Triton load."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def reload_gateway(url: str, admin_key: str | None = None, timeout: float = 30.0) -> dict:
    """POST <url>/v1/admin/reload; returns the gateway's JSON answer. Raises RuntimeError on failure."""
    request = urllib.request.Request(url.rstrip("/") + "/v1/admin/reload", data=b"", method="POST")
    if admin_key:
        request.add_header("X-API-Key", admin_key)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"gateway {url} refused the reload: HTTP {exc.code} {exc.read()[:200]!r}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError(f"gateway {url} unreachable for reload: {exc}") from exc
    try:
        return json.loads(body or b"{}")
    except ValueError:
        return {"raw": body.decode(errors="replace")}


def load_on_triton(url: str, name: str, protocol: str = "http") -> None:
    """Ask a Triton server in explicit model-control mode to (re)load `name` (picks up new versions)."""
    from serving.backends.triton import load_model

    load_model(url, name, protocol=protocol)

"""The fleet endpoint's route table: which handler answers which path and method.

One row per route (exact paths, or a prefix whose rest is the handler's argument); a path
that matches with the wrong method is a 405 with ``Allow``, one that matches nothing a 404,
both in OpenAI's error shape. Paths are matched under the application's route prefix, with
or without a trailing slash.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from shoal.serving import http
from shoal.serving.openai_api import ApiError

Handler = Callable[[Request, str], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    """``path`` exactly (or, with ``prefix``, any path under it), for one method."""

    method: str
    path: str
    handler: Handler
    prefix: bool = False

    def match(self, path: str) -> str | None:
        """The rest of ``path`` after a prefix route ("" for an exact one); None: no match."""
        if self.prefix:
            head = self.path.rstrip("/") + "/"
            return path[len(head) :] if path.startswith(head) and len(path) > len(head) else None
        return "" if path == self.path else None


def relative_path(request: Request) -> str:
    """The request's path under the application's route prefix (Ray Serve passes the full
    path with the prefix as ``root_path``), without a trailing slash."""
    path = request.url.path
    root = (request.scope.get("root_path") or "").rstrip("/")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.rstrip("/") or "/"


class RouteTable:
    """Dispatch a request to the first route that matches its path and method."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    async def dispatch(self, request: Request) -> Response:
        path = relative_path(request)
        allowed: list[str] = []
        try:
            for route in self.routes:
                rest = route.match(path)
                if rest is None:
                    continue
                if route.method == request.method:
                    return await route.handler(request, rest)
                allowed.append(route.method)
            if allowed:
                raise http.method_not_allowed(path, ", ".join(sorted(set(allowed))))
            raise http.not_found(path)
        except ApiError as err:
            return http.error_response(err)

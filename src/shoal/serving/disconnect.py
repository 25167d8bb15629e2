"""Noticing a client that went away while the ingress waits for a model's answer.

Called by :meth:`shoal.serving.ingress.Endpoint.generate` around the fallback caller, once
the request's body has been read. Ray Serve cancels a request whose client disconnects, and
the fallback caller's books are written for that cancellation (:mod:`shoal.serving.fallback`:
out of the in-flight count, billed with code 499, the tenant charged). Where Ray Serve's own
watch does not cancel the handler, :func:`unless_the_client_leaves` does: it reads the
request's ASGI messages while the model works, and on ``http.disconnect`` cancels the work,
whose cancellation runs the same books, and answers 499 to nobody. Once a response is
returned (a stream's first chunk), the response itself watches (Starlette's streaming
response ends its body when the client goes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

from starlette.requests import Request
from starlette.responses import Response

#: The status of an answer to a client that went away (nginx's "client closed request").
CLIENT_GONE = 499


async def _gone(request: Request) -> None:
    """Return when the client has disconnected (its body must have been read already)."""
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            return


async def unless_the_client_leaves(request: Request, work: Awaitable[Response]) -> Response:
    """``work``'s response, or, when the client disconnects first, ``work`` cancelled and an
    empty 499 (no one reads it)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_gone(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done and watch.exception() is not None:
            # The messages cannot be read here: only the work is left to wait for (Ray
            # Serve's own watch still cancels it).
            done, _ = await asyncio.wait({task})
    except BaseException:  # this handler was cancelled itself: so is the work
        watch.cancel()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise
    watch.cancel()
    if task in done:
        return task.result()
    task.cancel()  # the client went away: the work's cancellation keeps its books
    with contextlib.suppress(BaseException):
        await task
    return Response(status_code=CLIENT_GONE)

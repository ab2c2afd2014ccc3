"""The live view: a page at ``/hogwild`` that shows the workers thinking side by side.

A vLLM endpoint plugin (entry point group ``vllm.endpoint_plugins``, name ``hogwild``):
vLLM attaches its routes to the OpenAI-compatible server when ``VLLM_PLUGINS`` names it
(``vllm-hogwild serve`` does). The page is static HTML, CSS and JavaScript shipped in this
package (``static/``): no build step, nothing loaded from the internet. It talks to the
server's own streaming chat completions API, as any client would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

STATIC = Path(__file__).with_name("static")
FILES = {"app.js": "text/javascript", "style.css": "text/css"}


class HogwildPage:
    """``GET /hogwild`` (the page), ``GET /hogwild/static/{name}`` (its script and style) and
    ``GET /hogwild/state`` (what the plugin holds in each engine, as counts: JSON)."""

    name = "hogwild"
    required_tasks = ("generate",)

    def attach_router(self, app: Any) -> None:
        from fastapi import APIRouter, HTTPException
        from fastapi.responses import HTMLResponse, Response

        router = APIRouter()

        @router.get("/hogwild", response_class=HTMLResponse, include_in_schema=False)
        async def page() -> HTMLResponse:
            return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

        @router.get("/hogwild/static/{name}", include_in_schema=False)
        async def static(name: str) -> Response:
            if name not in FILES:
                raise HTTPException(status_code=404, detail=f"no such file: {name}")
            return Response((STATIC / name).read_text(encoding="utf-8"), media_type=FILES[name])

        @router.get("/hogwild/state")
        async def state() -> dict:
            core = app.state.engine_client.engine_core
            if hasattr(core, "call_utility_all_async"):  # every engine (data parallel: one per rank)
                return {"engines": await core.call_utility_all_async("hogwild_state")}
            return {"engines": [await core.call_utility_async("hogwild_state")]}

        app.include_router(router)

    async def init_state(self, engine_client: Any, state: Any, args: Any) -> None:
        return None  # the page needs nothing beyond the server's own API

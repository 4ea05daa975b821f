"""The web studio: static files the gateway serves at /studio/ (and / sends there), no build step.

The page talks to the same API as any client, with the key the user gives it; its service worker (`sw.js`) adds
that key to the requests the page cannot give headers to itself (a video's byte ranges, a thumbnail, a download).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

HERE = Path(__file__).parent
PATH = "/studio"


def install(api: FastAPI) -> None:
    api.mount(PATH, StaticFiles(directory=HERE, html=True), name="studio")

    @api.get("/", include_in_schema=False)
    async def home(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{request.scope.get('root_path', '')}{PATH}/")  # under the app's route prefix

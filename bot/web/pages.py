"""The demo page at / and the widget script that any page embeds with one <script> tag."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

HERE = Path(__file__).parent
router = APIRouter(include_in_schema=False)
templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape())


@router.get("/", response_class=HTMLResponse)
def demo(request: Request) -> HTMLResponse:
    base = str(request.base_url).rstrip("/")
    return HTMLResponse(templates.get_template("index.html").render(base=base))


@router.get("/widget.js")
def widget_js() -> FileResponse:
    return FileResponse(HERE / "static" / "widget.js", media_type="text/javascript",
                        headers={"Cache-Control": "no-cache"})

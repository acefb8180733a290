"""Draw the latent-space map as an interactive SVG: thumbnails for images, dots for captions.

Hovering shows the caption (and enlarges a thumbnail); clicking a point puts its id into a hidden
textbox, which selects that item in the Gallery tab. Served from our own data, so it is trusted
HTML; every caption is escaped.
"""

from __future__ import annotations

import base64
import html
import io
from functools import lru_cache
from pathlib import Path

from PIL import Image

from ..gallery.latent_map import LatentMap

WIDTH, HEIGHT, PAD = 760, 520, 28
SOURCE_COLORS = {"seed": "#6366f1", "upload": "#f59e0b", "generated": "#10b981"}
CAPTION_COLOR = "#e11d48"
SELECT_JS = ("var b=document.querySelector('#map-selected textarea');b.value='{id}';"
             "b.dispatchEvent(new Event('input',{{bubbles:true}}));")


@lru_cache(maxsize=20_000)
def _thumbnail_uri(path: str, mtime: float) -> str:
    image = Image.open(path).convert("RGB")
    image.thumbnail((32, 32), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def thumbnail_uri(path: Path) -> str | None:
    try:
        return _thumbnail_uri(str(path), path.stat().st_mtime)
    except OSError:
        return None


def render_map_svg(latent: LatentMap, image_dir: Path, selected: str | None = None) -> str:
    if not latent.points:
        return "<p>The gallery is empty: add images to see the map.</p>"
    xs = [p.x for p in latent.points] + ([latent.query[0]] if latent.query else [])
    ys = [p.y for p in latent.points] + ([latent.query[1]] if latent.query else [])
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)

    def sx(x: float) -> float:
        return PAD + (x - x0) / max(x1 - x0, 1e-9) * (WIDTH - 2 * PAD)

    def sy(y: float) -> float:
        return HEIGHT - PAD - (y - y0) / max(y1 - y0, 1e-9) * (HEIGHT - 2 * PAD)

    images = {p.id: p for p in latent.points if p.kind == "image"}
    parts = [f'<svg id="latent-map-svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" '
             f'style="background:#0f172a;border-radius:8px" xmlns="http://www.w3.org/2000/svg">',
             "<style>.pt{cursor:pointer}.pt:hover{opacity:1;stroke:#fff;stroke-width:2}"
             ".th{cursor:pointer}.th:hover{outline:2px solid #fff}</style>"]
    for point in latent.points:  # image <-> caption lines first, so points draw over them
        if point.kind == "caption" and point.id in images:
            image = images[point.id]
            parts.append(f'<line x1="{sx(image.x):.1f}" y1="{sy(image.y):.1f}" x2="{sx(point.x):.1f}" '
                         f'y2="{sy(point.y):.1f}" stroke="#94a3b8" stroke-opacity="0.35" stroke-width="1"/>')
    for point in latent.points:
        title = html.escape(f"{point.kind} · {point.source} · {point.caption or '(no caption)'}")
        click = html.escape(SELECT_JS.format(id=point.id))
        x, y = sx(point.x), sy(point.y)
        if point.kind == "image":
            uri = thumbnail_uri(image_dir / f"{point.id}.thumb.png")
            border = SOURCE_COLORS.get(point.source, "#cbd5e1")
            size = 22 if point.id == selected else 14
            parts.append(f'<g class="th" onclick="{click}"><title>{title}</title>'
                         f'<rect x="{x - size / 2 - 1:.1f}" y="{y - size / 2 - 1:.1f}" width="{size + 2}" '
                         f'height="{size + 2}" fill="{border}"/>'
                         + (f'<image href="{uri}" x="{x - size / 2:.1f}" y="{y - size / 2:.1f}" width="{size}" '
                            f'height="{size}" style="image-rendering:pixelated"/>' if uri else "") + "</g>")
        else:
            parts.append(f'<circle class="pt" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{CAPTION_COLOR}" '
                         f'fill-opacity="0.8" onclick="{click}"><title>{title}</title></circle>')
    if latent.query:
        qx, qy = sx(latent.query[0]), sy(latent.query[1])
        parts.append(f'<g><title>your query</title><circle cx="{qx:.1f}" cy="{qy:.1f}" r="9" fill="none" '
                     f'stroke="#facc15" stroke-width="3"/><circle cx="{qx:.1f}" cy="{qy:.1f}" r="3" '
                     f'fill="#facc15"/></g>')
    parts.append("</svg>")
    legend = " · ".join(f'<span style="color:{c}">■</span> {s} image' for s, c in SOURCE_COLORS.items())
    note = (f"showing {latent.drawn_items} of {latent.total_items} items (a random sample)"
            if latent.drawn_items < latent.total_items else f"{latent.total_items} items")
    variance = f"PCA: {latent.explained_variance[0]:.0%} + {latent.explained_variance[1]:.0%} of the variance"
    return (f'<div id="latent-map">{"".join(parts)}<p style="font-size:0.85em">{legend} · '
            f'<span style="color:{CAPTION_COLOR}">●</span> caption · <span style="color:#facc15">◎</span> query · '
            f"lines join an image to its caption · {note} · {variance}</p></div>")

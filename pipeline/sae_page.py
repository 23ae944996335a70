"""The SAE latent browser: one self-contained static HTML page from `sae-inspect`'s table.

Stage one renders it because the thumbnails need the images, and only `pipeline/` opens
datasets (the boundary stays one-way: `heads/` writes `inspect.csv` + `inspect.json`, this
module reads them). The dataset is rebuilt from what the cache recorded (`dataset.name`,
`dataset.root`, the split) through `pipeline.datasets`, images are matched by id, shrunk with
Pillow and inlined as base64 JPEG, so the page needs no server and no other file. When the
images cannot be opened (a moved dataset, a cache written without one) each card shows its id
instead, and the page says why.

cli.py registers `render_page` with `heads.sae.commands.set_html_renderer`. Only the standard
library is imported at module level (cli.py imports this module for every command).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path

from clipcbm.core import atomic

log = logging.getLogger(__name__)

THUMB_PX = 128  # longest side of a thumbnail
BIG_PX = 224  # the image of an "image" view
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
background:#fafafa}h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 2px}
.meta,.detail{color:#666;font-size:12px}.warn{color:#a40;font-size:13px}
section h2{margin-top:0}
section{background:#fff;border:1px solid #e3e3e3;border-radius:8px;padding:12px 16px;
margin:14px 0}
.grid{display:flex;flex-wrap:wrap;gap:10px;margin-top:8px}
.card{width:138px;font-size:11px;line-height:1.3}.card div{overflow-wrap:anywhere}
.card img,.ph{width:128px;height:128px;object-fit:contain;background:#eee;border-radius:4px;
display:block}.ph{display:flex;align-items:center;justify-content:center;text-align:center;
overflow:hidden;padding:4px;box-sizing:border-box;color:#555;font-size:10px}
.act{font-weight:600;color:#1a5fb4}.row{display:flex;gap:18px;align-items:flex-start}
table{border-collapse:collapse;font-size:12px}td{padding:2px 8px 2px 0;white-space:nowrap}
.bar{height:10px;background:#3584e4;border-radius:2px}
"""


def _read(inspect_dir: Path) -> tuple[dict, list[dict]]:
    meta = json.loads((inspect_dir / "inspect.json").read_text())
    with open(inspect_dir / "inspect.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return meta, rows


def _dataset_info(meta: dict) -> dict | None:
    """The dataset record `embed` wrote: from inspect.json, else the cache's metadata."""
    if meta.get("dataset"):
        return meta["dataset"]
    try:
        from clipcbm.cache import open_cache

        with open_cache(meta["cache"]) as c:
            return c.metadata.get("dataset")
    except Exception as e:  # the page is still useful without thumbnails
        log.warning("cannot read the cache metadata of %s: %s", meta.get("cache"), e)
        return None


def image_loader(meta: dict) -> tuple[Callable[[str], object] | None, str]:
    """(id -> PIL image, or None when images are unavailable; a note for the page)."""
    info = _dataset_info(meta)
    if not info or "name" not in info or "root" not in info:
        return None, "the cache records no dataset, so there are no thumbnails (ids shown)"
    from clipcbm.pipeline.datasets import DATASETS, build_dataset

    if info["name"] not in DATASETS:
        return None, f"dataset {info['name']!r} is not one stage one reads (ids shown)"
    try:
        ds = build_dataset(info["name"], Path(info["root"]), meta["split"])
    except Exception as e:  # a moved or missing dataset: ids instead of thumbnails
        return None, f"cannot open dataset {info['name']} at {info['root']}: {e} (ids shown)"
    index = {str(i): k for k, i in enumerate(ds.ids)}

    def load(image_id: str):
        return ds.load(index[image_id]) if image_id in index else None

    return load, ""


def _thumb(load, image_id: str, px: int, memo: dict) -> str | None:
    """data: URI of a JPEG thumbnail, or None."""
    key = (image_id, px)
    if key not in memo:
        memo[key] = None
        try:
            im = load(image_id) if load else None
        except Exception as e:  # one unreadable image must not lose the page
            log.warning("thumbnail of %s: %s", image_id, e)
            im = None
        if im is not None:
            im = im.convert("RGB")
            im.thumbnail((px, px))
            if max(im.size) < px:  # tiny images (CIFAR) are enlarged, pixelated, to be seen
                s = px / max(im.size)
                im = im.resize((round(im.width * s), round(im.height * s)), resample=0)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
            memo[key] = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    return memo[key]


def _img(uri: str | None, image_id: str, px: int) -> str:
    if uri:
        return f'<img src="{uri}" alt="{html.escape(image_id)}" width="{px}">'
    return f'<div class="ph">{html.escape(image_id)}</div>'


def _short_id(image_id: str) -> str:
    """The file name of a path id (the full id is the card's tooltip)."""
    name = image_id.replace("\\", "/").rsplit("/", 1)[-1]
    return name if len(name) <= 40 else name[:39] + "…"


def _card(r: dict, load, memo: dict, label: str) -> str:
    uri = _thumb(load, r["id"], THUMB_PX, memo)
    full = html.escape(r["id"])
    return (f'<div class="card" title="{full}">{_img(uri, r["id"], THUMB_PX)}<div>'
            f'#{int(r["rank"]) + 1} {html.escape(r["class"])}</div><div class="act">{label} '
            f'{float(r["activation"]):.3f}</div><div class="meta">'
            f"{html.escape(_short_id(r['id']))}</div></div>")  # fmt: skip


def _image_section(rows: list[dict], load, memo: dict) -> str:
    first = rows[0]
    top = max(float(r["activation"]) for r in rows) or 1.0
    lines = "".join(
        f"<tr><td>{html.escape(r['name'] or 'latent ' + r['latent'])}</td>"
        f'<td class="meta">latent {r["latent"]}</td><td>{float(r["activation"]):.3f}</td>'
        f'<td><div class="bar" style="width:{120 * float(r["activation"]) / top:.0f}px">'
        "</div></td></tr>"
        for r in rows
    )
    uri = _thumb(load, first["id"], BIG_PX, memo)
    return f'<div class="row">{_img(uri, first["id"], BIG_PX)}<table>{lines}</table></div>'


def _sections(rows: list[dict], load, memo: dict) -> str:
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["view"], r["group"], r["query"]), []).append(r)
    out = []
    for (view, _, query), members in groups.items():
        head = members[0]
        q = f' <span class="meta">query: {html.escape(query)}</span>' if query else ""
        if int(head["rank"]) < 0:
            body = "<p class='meta'>No image of this split activates it.</p>"
        elif view == "image":
            body = _image_section(members, load, memo)
        else:
            label = "cos" if view == "cluster" else "act"
            body = '<div class="grid">' + "".join(_card(r, load, memo, label) for r in members)
            body += "</div>"
        out.append(f'<section><h2>{html.escape(head["title"])}{q}</h2><div class="detail">'
                   f'{html.escape(head["detail"])}</div>{body}</section>')  # fmt: skip
    return "\n".join(out) or "<p>The table is empty: no latent fired on this split.</p>"


def render_page(inspect_dir: Path, out_html: Path) -> Path:
    """Write the latent browser for `sae-inspect`'s output directory to `out_html`."""
    inspect_dir, out_html = Path(inspect_dir), Path(out_html)
    meta, rows = _read(inspect_dir)
    load, note = image_loader(meta)
    title = f"SAE latents: {Path(meta['sae']).name} on {Path(meta['cache']).name}/{meta['split']}"
    header = (f"<h1>{html.escape(title)}</h1><div class='meta'>{meta['n_latents']} latents, "
              f"k = {meta['k']}, {meta['n_rows']} images; names: {html.escape(meta['names'])}; "
              f"model fingerprint {meta['model_fingerprint'][:12]}</div>")  # fmt: skip
    warn = f"<p class='warn'>{html.escape(note)}</p>" if note else ""
    body = _sections(rows, load, {})
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>"
            f"{html.escape(title)}</title><style>{CSS}</style></head><body>{header}{warn}"
            f"{body}</body></html>\n")  # fmt: skip
    return atomic.write_text(out_html, page)

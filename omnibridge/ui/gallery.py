"""Gallery tab: search the Chroma-backed gallery by text or image, browse, add and delete items."""

from __future__ import annotations

import gradio as gr
import numpy as np
from PIL import Image

from ..gallery.latent_map import build_latent_map
from ..gallery.store import SOURCES, GalleryError, GalleryItem
from ..inputs import InvalidInputError, clean_text, load_image
from ..rerank import RERANK_TOP, rerank_order
from .common import MODEL_QUEUE, clamp_int, user_errors
from .components import ImageInput
from .context import AppContext
from .latent_map import render_map_svg

SEARCH_MODES = {
    "Text → images": ("text", "images"),
    "Image → images": ("image", "images"),
    "Image → captions": ("image", "captions"),
    "Text → captions": ("text", "captions"),
}
SOURCE_CHOICES = ["all", *SOURCES]
PAGE_SIZE = 24
# "describe log p": an Image -> captions hit's description likelihood, which re-ranked it (rerank.py); it says
# why such a list is not sorted by its cosine score
TABLE_HEADERS = ["score", "describe log p", "caption", "source", "id"]


def _source(value: str | None) -> str | None:
    if value in (None, "", "all"):
        return None
    if value not in SOURCES:
        raise GalleryError(f"source must be one of {SOURCE_CHOICES}")
    return value


def _rows(items: list[GalleryItem]) -> list[list]:
    return [[item.score if item.score is not None else "",
             item.description_logp if item.description_logp is not None else "", item.caption, item.source, item.id]
            for item in items]


def _tiles(items: list[GalleryItem]) -> list[tuple[str, str]]:
    def label(item: GalleryItem) -> str:
        caption = item.caption or "(no caption)"
        return f"{item.score:.2f} · {caption}" if item.score is not None else caption

    return [(str(item.thumb_path), label(item)) for item in items]


class GallerySearch:
    """Search, browse and edit the gallery; shared by the tab and its API endpoints."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def search(self, query_text, query_image, mode, top_k, source) -> list[GalleryItem]:
        return self.search_with_vector(query_text, query_image, mode, top_k, source)[0]

    def search_with_vector(self, query_text, query_image, mode, top_k, source):
        """(hits, query vector)."""
        query_kind, target = SEARCH_MODES.get(mode, (None, None))
        if query_kind is None:
            raise GalleryError(f"search mode must be one of {list(SEARCH_MODES)}")
        indexing = self.ctx.gallery_indexing()
        if indexing and self.ctx.gallery.needs_reindex():
            raise GalleryError(f"{indexing}; search again in a moment")
        image = None
        if query_kind == "text":
            text = clean_text(query_text, what="search text")
            vector = self.ctx.pipeline.embed_texts([text])[0]
        else:
            if not query_image:
                raise InvalidInputError("add a query image (or pick a result and press 'Search by this image')")
            image = load_image(query_image, self.ctx.settings.max_image_pixels)
            vector = self.ctx.pipeline.embed_images([image])[0]
        return self._search(vector, target, top_k, source, image), vector

    def _search(self, vector, target: str, top_k, source, image: Image.Image | None) -> list[GalleryItem]:
        """Nearest items by cosine; captions found for a query image are then re-ranked (rerank.py)."""
        k = clamp_int(top_k, 1, 100, 12)
        weight = self.ctx.pipeline.config.retrieval.caption_rerank_weight
        rerank = target == "captions" and image is not None and weight > 0
        hits = self.ctx.gallery.search(vector, target, max(k, RERANK_TOP) if rerank else k, _source(source))
        if rerank and hits:
            hits = self._rerank_by_description(image, hits, weight)
        return hits[:k]

    def _rerank_by_description(self, image: Image.Image, hits: list[GalleryItem], weight: float) -> list[GalleryItem]:
        top, rest = hits[:RERANK_TOP], hits[RERANK_TOP:]
        pipe = self.ctx.pipeline
        log_likelihoods = pipe.description_log_likelihoods([image] * len(top), [hit.caption for hit in top])
        for hit, value in zip(top, log_likelihoods):
            hit.description_logp = round(float(value), 3)
        order = rerank_order([hit.score for hit in top], log_likelihoods, pipe.retrieval_logit_scale, weight)
        return [top[i] for i in order] + rest

    def latent_map(self, limit, query_vector=None):
        query = np.asarray(query_vector, dtype=np.float32) if query_vector is not None else None
        return build_latent_map(self.ctx.gallery, clamp_int(limit, 10, 5000, 800), query)

    def similar_to(self, item_id: str, mode: str, top_k, source) -> list[GalleryItem]:
        _, target = SEARCH_MODES.get(mode, ("image", "images"))
        vector = self.ctx.gallery.vector_of(item_id)
        image = load_image(self.ctx.gallery.get(item_id).image_path) if target == "captions" else None
        return self._search(vector, target, top_k, source, image)

    def browse(self, page, source) -> tuple[list[GalleryItem], int, int, int]:
        """(items, page, pages, total items of that source)."""
        source = _source(source)
        page = clamp_int(page, 1, 10**9, 1)
        items, total = self.ctx.gallery.browse_page((page - 1) * PAGE_SIZE, PAGE_SIZE, source)
        pages = max(1, -(-total // PAGE_SIZE))
        if page > pages:  # past the end (items were deleted since the page was shown): the last page
            page = pages
            items, total = self.ctx.gallery.browse_page((page - 1) * PAGE_SIZE, PAGE_SIZE, source)
        return items, page, pages, total

    def add(self, files, captions_text) -> dict:
        paths = [f if isinstance(f, str) else getattr(f, "name", None) or f.get("path") for f in (files or [])]
        if not paths:
            raise InvalidInputError("choose one or more image files to add")
        captions = [line.strip() for line in (captions_text or "").splitlines()]
        if captions and len(captions) not in (1, len(paths)):
            raise InvalidInputError(f"give one caption per line for each of the {len(paths)} images, or none")
        images, problems = [], []
        for path in paths:
            try:
                images.append(load_image(path, self.ctx.settings.max_image_pixels))
            except InvalidInputError as error:
                problems.append(f"{str(path).rsplit('/', 1)[-1]}: {error}")
        if not images:
            raise InvalidInputError("; ".join(problems))
        if len(captions) == 1 and len(images) > 1:
            captions = captions * len(images)
        captions = [clean_text(c, what="caption", allow_empty=True) for c in captions] if captions else None
        if captions is not None and len(captions) != len(images):
            captions = None  # some files were refused: captions no longer line up
        ids = self.ctx.gallery.add(images, captions, source="upload")
        return {"added": ids, "refused": problems, "count": self.ctx.gallery.count()}


FOUR_BIT_SEARCH = ("The language model runs in 4-bit (`--quantize 4bit`), which costs search more than anything "
                   "else: the built-in model's held-out R@1 fell from 0.86 / 0.83 to 0.74 / 0.68 (image→text / "
                   "text→image; its answers and drawings held). "
                   "8-bit costs nothing measurable, if the GPU fits it.")


def quantization_note(pipeline) -> str:
    """What the loaded model's quantization costs this tab ('' when nothing measurable)."""
    return FOUR_BIT_SEARCH if pipeline.placement.llm_quantization == "4bit" else ""


def build_gallery_tab(ctx: AppContext) -> dict:
    search = GallerySearch(ctx)
    # a gallery of built-in scenes alone is re-indexed behind the app (context.py): no button for it
    needs_reindex = ctx.gallery.needs_reindex() and not (ctx.seeding and ctx.seeding.running)
    with gr.Row(visible=needs_reindex) as reindex_row:
        model, dim = ctx.gallery.index_model()
        gr.Markdown(f"⚠️ This gallery was indexed with **{model}** ({dim}-d), not the loaded model "
                    f"**{ctx.pipeline.embedding_model_id}** (the part after @ names the weights, a +8bit or +4bit "
                    "the language model's quantization). Vectors of two models cannot be mixed: re-index to "
                    "search it.")
        reindex = gr.Button("Re-index now", variant="primary", elem_id="gallery-reindex")
    note = quantization_note(ctx.pipeline)
    gr.Markdown(note, visible=bool(note), elem_id="gallery-quantization-note")
    with gr.Row():
        with gr.Column(scale=2):
            query_text = gr.Textbox(label="Search text", placeholder="a red circle to the left of a blue square",
                                    elem_id="gallery-query")
            query_image = ImageInput(label="…or search by image", sources=["upload", "clipboard"],
                                   height=160, elem_id="gallery-query-image")
            reranks = ctx.pipeline.config.retrieval.caption_rerank_weight > 0
            mode = gr.Radio(list(SEARCH_MODES), value="Text → images", label="Search", elem_id="gallery-mode",
                            info="Image → captions re-ranks its top 10 by how readily the model would describe "
                                 "the image with each caption." if reranks else None)
            with gr.Row():
                top_k = gr.Slider(1, 48, value=12, step=1, label="Results")
                source = gr.Dropdown(SOURCE_CHOICES, value="all", label="Source")
            find = gr.Button("Search", variant="primary", elem_id="gallery-search")
        with gr.Column(scale=3):
            results = gr.Gallery(label="Results", columns=4, height=380, object_fit="contain",
                                 elem_id="gallery-results", format="png")
            table = gr.Dataframe(headers=TABLE_HEADERS, label="Results (with scores)", interactive=False,
                                 wrap=True, max_height=220, elem_id="gallery-table")
            with gr.Row():
                pivot = gr.Button("Search by this image", elem_id="gallery-pivot")
                to_chat = gr.Button("Send to chat", elem_id="gallery-to-chat")
                to_edit = gr.Button("Send to edit", elem_id="gallery-to-edit")
                delete = gr.Button("Delete", variant="stop", elem_id="gallery-delete")
    with gr.Accordion("Map of the shared latent space", open=False):
        gr.Markdown("Images (thumbnails, framed by source) and captions (red dots) projected together with PCA: "
                    "OmniBridge puts both modalities in one space. Lines join each image to its caption; the "
                    "yellow ring is your last query. Hover for the caption, click to select an item.")
        with gr.Row():
            map_limit = gr.Slider(50, 2000, value=600, step=50, label="Items drawn (sampled beyond this)")
            draw_map = gr.Button("Draw map", elem_id="map-draw")
        map_view = gr.HTML(elem_id="latent-map-view")
        map_selected = gr.Textbox(elem_id="map-selected", visible="hidden", label="selected")
        with gr.Row():
            selected_image = gr.Image(label="Selected item", height=160, interactive=False, elem_id="map-item",
                                      elem_classes="fill-frame")
            selected_caption = gr.Markdown(elem_id="map-item-caption")
    with gr.Accordion("Browse all", open=False):
        with gr.Row():
            browse_source = gr.Dropdown(SOURCE_CHOICES, value="all", label="Source")
            page = gr.Number(value=1, precision=0, label="Page", minimum=1)
            previous_page, next_page = gr.Button("◀ Previous"), gr.Button("Next ▶")
        count = gr.Markdown(elem_id="gallery-count")
        browse_grid = gr.Gallery(columns=6, height=360, object_fit="contain", elem_id="gallery-browse",
                                 format="png")
    with gr.Accordion("Add images", open=False):
        files = gr.File(file_count="multiple", file_types=["image"], label="Images", elem_id="gallery-files")
        captions = gr.Textbox(lines=3, label="Captions (optional, one line per image)")
        add = gr.Button("Add to gallery", elem_id="gallery-add")
        added = gr.JSON(label="Added")
    shown = gr.State([])  # ids of the items in the results grid, in order
    selected = gr.State(None)
    last_query = gr.State(None)  # the last query vector, drawn on the map

    def show(items):
        return _tiles(items), _rows(items), [item.id for item in items], (items[0].id if items else None)

    @user_errors
    def run_search(text, image, mode_name, k, source_name):
        items, vector = search.search_with_vector(text, image, mode_name, k, source_name)
        if not items:
            gr.Info("Nothing found (the gallery may be empty, or the filter excludes everything).")
        return (*show(items), vector.tolist())

    @user_errors
    def run_map(limit, query, chosen):
        return render_map_svg(search.latent_map(limit, query), ctx.gallery.image_dir, chosen)

    @user_errors
    def select_from_map(item_id):
        if not item_id:
            return gr.skip(), gr.skip(), gr.skip()
        item = ctx.gallery.get(item_id.strip())
        return item.id, str(item.image_path), f"**{item.caption or '(no caption)'}** · {item.source} · `{item.id[:8]}`"

    def pick(ids, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        return ids[index] if 0 <= index < len(ids) else None

    @user_errors
    def run_pivot(item_id, mode_name, k, source_name):
        if not item_id:
            raise gr.Error("Pick a result first.")
        return show(search.similar_to(item_id, mode_name, k, source_name))

    @user_errors
    def run_delete(item_id, ids):
        if not item_id:
            raise gr.Error("Pick a result first.")
        ctx.gallery.delete(item_id)
        gr.Info("Deleted.")
        remaining = [i for i in ids if i != item_id]
        items = [ctx.gallery.get(i) for i in remaining]
        return show(items)

    @user_errors
    def run_browse(page_number, source_name):
        items, page_number, pages, total = search.browse(page_number, source_name)
        indexing = ctx.gallery_indexing()
        return _tiles(items), page_number, " · ".join(
            [f"{total} items", f"page {page_number} of {pages}"] + ([indexing] if indexing else []))

    @user_errors
    def run_add(file_list, caption_text, progress=gr.Progress()):
        progress(0.1, desc="embedding")
        report = search.add(file_list, caption_text)
        if report["refused"]:
            gr.Warning("Some files were refused: " + "; ".join(report["refused"]))
        return report, None

    @user_errors
    def run_reindex(progress=gr.Progress()):
        done = ctx.gallery.reindex(progress=lambda d, total: progress(d / max(1, total), desc="re-indexing"))
        gr.Info(f"Re-indexed {done} images.")
        return gr.Row(visible=False)

    outputs = [results, table, shown, selected]
    gr.on([find.click, query_text.submit], run_search, [query_text, query_image, mode, top_k, source],
          outputs + [last_query], api_visibility="private", **MODEL_QUEUE)
    draw_map.click(run_map, [map_limit, last_query, selected], [map_view], api_visibility="private",
                   concurrency_limit=None)
    map_selected.change(select_from_map, [map_selected], [selected, selected_image, selected_caption],
                       api_visibility="private", concurrency_limit=None)
    results.select(pick, [shown], [selected], queue=False, api_visibility="private")
    # Lookups by stored vectors, browsing and deleting need no model: they run beside model jobs.
    pivot.click(run_pivot, [selected, mode, top_k, source], outputs, api_visibility="private",
                concurrency_limit=None)
    delete.click(run_delete, [selected, shown], outputs, api_visibility="private", concurrency_limit=None)
    browse_inputs = [page, browse_source]
    for trigger in (browse_source.change, page.submit):
        trigger(run_browse, browse_inputs, [browse_grid, page, count], api_visibility="private",
                concurrency_limit=None)
    previous_page.click(lambda p: max(1, int(p or 1) - 1), [page], [page], queue=False,
                        api_visibility="private").then(run_browse, browse_inputs, [browse_grid, page, count],
                                                       api_visibility="private")
    next_page.click(lambda p: int(p or 1) + 1, [page], [page], queue=False,
                    api_visibility="private").then(run_browse, browse_inputs, [browse_grid, page, count],
                                                   api_visibility="private")
    add.click(run_add, [files, captions], [added, files], api_visibility="private", **MODEL_QUEUE)
    reindex.click(run_reindex, None, [reindex_row], api_visibility="private", **MODEL_QUEUE)
    _build_gallery_api(search, ctx)
    return {"selected": selected, "to_chat": to_chat, "to_edit": to_edit, "browse": (run_browse, browse_inputs,
                                                                                      [browse_grid, page, count])}


def _build_gallery_api(search: GallerySearch, ctx: AppContext) -> None:
    """`/search`, `/add_to_gallery`, `/delete_from_gallery`, `/gallery_count`, `/browse_gallery`."""
    with gr.Group(visible=False):
        text = gr.Textbox(label="query_text")
        image = ImageInput(label="query_image")
        mode = gr.Textbox(value="Text → images", label="mode")
        top_k = gr.Number(value=12, precision=0, label="top_k")
        source = gr.Textbox(value="all", label="source")
        item_id = gr.Textbox(label="id")
        page = gr.Number(value=1, precision=0, label="page")
        files = gr.File(file_count="multiple", label="files")
        captions = gr.Textbox(label="captions")
        hits = gr.JSON(label="results")
        limit = gr.Number(value=800, precision=0, label="limit")
        buttons = [gr.Button(name) for name in ("search", "add", "delete", "count", "browse", "map")]

    def as_records(items: list[GalleryItem]) -> list[dict]:
        return [{"id": i.id, "score": i.score, "caption": i.caption, "source": i.source,
                 "created_at": i.created_at, "model_id": i.model_id, "description_logp": i.description_logp}
                for i in items]

    @user_errors
    def search_api(query_text, query_image, mode_name, k, source_name):
        return as_records(search.search(query_text, query_image, mode_name, k, source_name))

    @user_errors
    def add_api(file_list, caption_text):
        return search.add(file_list, caption_text)

    @user_errors
    def delete_api(identifier):
        ctx.gallery.delete((identifier or "").strip())
        return {"deleted": identifier, "count": ctx.gallery.count()}

    @user_errors
    def count_api(source_name):
        # "indexing" says that the built-in scenes are still arriving on a first start (None once they are in)
        return {"count": ctx.gallery.count(_source(source_name)),
                "indexing": ctx.gallery_indexing()}

    @user_errors
    def browse_api(page_number, source_name):
        items, page_number, pages, total = search.browse(page_number, source_name)
        return {"page": page_number, "pages": pages, "total": total, "items": as_records(items)}

    @user_errors
    def map_api(query_text, query_image, limit_value):
        query = None
        if (query_text or "").strip():
            query = ctx.pipeline.embed_texts([clean_text(query_text, what="search text")])[0]
        elif query_image:
            query = ctx.pipeline.embed_images([load_image(query_image, ctx.settings.max_image_pixels)])[0]
        return search.latent_map(limit_value, query).to_dict()

    search_button, add_button, delete_button, count_button, browse_button, map_button = buttons
    map_button.click(map_api, [text, image, limit], [hits], api_name="latent_map", **MODEL_QUEUE)
    search_button.click(search_api, [text, image, mode, top_k, source], [hits], api_name="search", **MODEL_QUEUE)
    add_button.click(add_api, [files, captions], [hits], api_name="add_to_gallery", **MODEL_QUEUE)
    delete_button.click(delete_api, [item_id], [hits], api_name="delete_from_gallery", concurrency_limit=None)
    count_button.click(count_api, [source], [hits], api_name="gallery_count", concurrency_limit=None)
    browse_button.click(browse_api, [page, source], [hits], api_name="browse_gallery", concurrency_limit=None)

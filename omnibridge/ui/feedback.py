"""Feedback tab: every rating, comment and vote, with filters and CSV/JSONL export; `/feedback` API."""

from __future__ import annotations

import json
import time

import gradio as gr
import pandas as pd

from ..feedback.arena import win_rates
from ..feedback.store import KINDS, FeedbackRecord
from .common import session_of, user_errors
from .context import AppContext

TABS = ["all", "chat", "generate", "gallery", "compare", "api"]
COLUMNS = ["id", "time", "tab", "kind", "value", "comment", "model", "latency_s", "inputs", "outputs"]
# Left to themselves, the wrapped columns shrink an empty "comment" to one letter a line; the JSON columns
# take the rest and scroll sideways.
COLUMN_WIDTHS = ["50px", "170px", "90px", "80px", "80px", "220px", "160px", "110px", "360px", "360px"]
assert len(COLUMN_WIDTHS) == len(COLUMNS)
RATE_COLUMNS = ["pair", "variant A", "variant B", "A wins", "B wins", "ties", "both bad", "votes", "A win rate"]


def _table(records: list[dict]) -> list[list]:
    def short(value: dict) -> str:
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 160 else text[:157] + "…"

    return [[r["id"], time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["created_at"])), r["tab"], r["kind"],
             r["value"], r["comment"], r["model_id"], r["latency_s"], short(r["inputs"]), short(r["outputs"])]
            for r in records]


def _filters(tab: str | None, kind: str | None) -> dict:
    """Store filters from the tab and kind pickers; an unknown name is an error, not an empty list, so that an
    API client who writes "Chat" for "chat" is told so."""
    if tab not in (None, "", *TABS):
        raise gr.Error(f"tab must be one of {TABS}")
    if kind not in (None, "", "all", *KINDS):
        raise gr.Error(f"kind must be one of {['all', *KINDS]}")
    return {"tab": None if tab in (None, "", "all") else tab, "kind": None if kind in (None, "", "all") else kind}


def _json_object(value, name: str) -> dict:
    """A rating's inputs, outputs or parameters: a JSON object, or nothing. Anything else is refused rather
    than stored as {}, which would lose what the client meant to save without telling it."""
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise gr.Error(f"{name} must be a JSON object, like {{\"prompt\": \"a red circle\"}}")
    return value


NO_VOTES = "No votes yet: the Compare tab's votes show here as win rates."


def win_rate_tables(votes: list[dict]):
    """The win-rate table, the chart (hidden while there is nothing to draw: an empty bar chart is just
    crossed axis labels) and a note for the Compare votes."""
    stats = win_rates(votes)
    rows = [[s.pair, s.a, s.b, s.a_wins, s.b_wins, s.ties, s.both_bad, s.votes,
             "" if s.a_win_rate is None else round(s.a_win_rate, 3)] for s in stats]
    bars = []
    for s in stats:
        decided = s.a_wins + s.b_wins
        for name, wins in ((s.a, s.a_wins), (s.b, s.b_wins)):
            bars.append({"pair": s.pair, "variant": name, "win rate": wins / decided if decided else 0.0,
                         "votes": s.votes})
    frame = pd.DataFrame(bars, columns=["pair", "variant", "win rate", "votes"])
    return rows, gr.BarPlot(value=frame, visible=bool(bars)), "" if bars else NO_VOTES


def build_feedback_tab(ctx: AppContext) -> dict:
    gr.Markdown("Ratings, comments and votes from every tab. Records hold the random session id, never an "
                "IP address.")
    with gr.Row():
        tab = gr.Dropdown(TABS, value="all", label="Tab", elem_id="feedback-tab")
        kind = gr.Dropdown(["all", *KINDS], value="all", label="Kind", elem_id="feedback-kind")
        refresh = gr.Button("Refresh", elem_id="feedback-refresh")
    summary = gr.Markdown(elem_id="feedback-summary")
    table = gr.Dataframe(headers=COLUMNS, column_widths=COLUMN_WIDTHS, interactive=False, wrap=True, max_height=420,
                         elem_id="feedback-table")
    with gr.Row():
        export_csv = gr.DownloadButton("Export CSV", elem_id="feedback-csv")
        export_jsonl = gr.DownloadButton("Export JSONL", elem_id="feedback-jsonl")
    with gr.Accordion("Compare: win rates", open=True):
        rates_note = gr.Markdown(elem_id="feedback-win-note")
        rates = gr.Dataframe(headers=RATE_COLUMNS, interactive=False, elem_id="feedback-win-rates")
        chart = gr.BarPlot(x="variant", y="win rate", color="pair", label="Win rate per variant (decided votes)",
                           y_lim=[0, 1], elem_id="feedback-win-chart", visible=False)

    def load(tab_name, kind_name):
        filters = _filters(tab_name, kind_name)
        records = ctx.feedback.list(**filters, limit=500)
        total = ctx.feedback.count(**filters)
        summary_text = f"**{total}** records" + (" (showing the newest 500)" if total > 500 else "")
        return (_table(records), summary_text, *win_rate_tables(ctx.feedback.votes()))

    def export(kind_of_file: str):
        def write(tab_name, kind_name):
            filters = _filters(tab_name, kind_name)
            text = ctx.feedback.export_csv(**filters) if kind_of_file == "csv" else ctx.feedback.export_jsonl(**filters)
            path = ctx.outputs_dir / f"feedback-{int(time.time())}.{kind_of_file}"
            path.write_text(text)
            return str(path)
        return write

    for trigger in (refresh.click, tab.change, kind.change):
        trigger(load, [tab, kind], [table, summary, rates, chart, rates_note], api_visibility="private",
                concurrency_limit=None)
    export_csv.click(export("csv"), [tab, kind], [export_csv], api_visibility="private", concurrency_limit=None)
    export_jsonl.click(export("jsonl"), [tab, kind], [export_jsonl], api_visibility="private",
                       concurrency_limit=None)
    _build_feedback_api(ctx)
    return {"load": (load, [tab, kind], [table, summary, rates, chart, rates_note])}


def _build_feedback_api(ctx: AppContext) -> None:
    """`/feedback` records one rating from an API client; `/list_feedback` reads them back."""
    with gr.Group(visible=False):
        kind = gr.Textbox(label="kind")
        tab = gr.Textbox(value="api", label="tab")
        value = gr.Textbox(label="value")
        comment = gr.Textbox(label="comment")
        inputs = gr.JSON(label="inputs")
        outputs = gr.JSON(label="outputs")
        parameters = gr.JSON(label="parameters")
        result = gr.JSON(label="result")
        record_button, list_button = gr.Button("feedback"), gr.Button("list")

    @user_errors
    def record(kind_name, tab_name, value_text, comment_text, inputs_json, outputs_json, parameters_json,
               request: gr.Request = None):
        if kind_name not in KINDS:
            raise gr.Error(f"kind must be one of {list(KINDS)}")
        if tab_name not in TABS[1:]:
            raise gr.Error(f"tab must be one of {TABS[1:]}")
        as_dict = [_json_object(value, name) for value, name in
                   ((inputs_json, "inputs"), (outputs_json, "outputs"), (parameters_json, "parameters"))]
        record_id = ctx.feedback.add(FeedbackRecord(session_of(request), tab_name, kind_name, value_text or "",
                                                    comment_text or "", *as_dict, model_id=ctx.pipeline.variant_id))
        return {"id": record_id, "count": ctx.feedback.count()}

    @user_errors
    def list_records(tab_name, kind_name):
        return ctx.feedback.list(**_filters(tab_name, kind_name), limit=1000)

    record_button.click(record, [kind, tab, value, comment, inputs, outputs, parameters], [result],
                        api_name="feedback", concurrency_limit=None)
    list_button.click(list_records, [tab, kind], [result], api_name="list_feedback", concurrency_limit=None)

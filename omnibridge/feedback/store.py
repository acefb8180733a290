"""Feedback records (likes, dislikes, comments, arena votes) in SQLite, with CSV/JSONL export.

One row per event. SQLite runs in WAL mode with a short transaction per write, so concurrent users'
writes all land and a crash loses at most the write in flight. IP addresses are never stored: a
record carries only the random Gradio session id.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

KINDS = ("like", "dislike", "comment", "vote")
COLUMNS = ("id", "created_at", "session_id", "tab", "kind", "value", "comment", "inputs", "outputs", "parameters",
           "model_id", "latency_s")
SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    session_id TEXT NOT NULL,
    tab TEXT NOT NULL,
    kind TEXT NOT NULL,
    value TEXT NOT NULL DEFAULT '',
    comment TEXT NOT NULL DEFAULT '',
    inputs TEXT NOT NULL DEFAULT '{}',
    outputs TEXT NOT NULL DEFAULT '{}',
    parameters TEXT NOT NULL DEFAULT '{}',
    model_id TEXT NOT NULL DEFAULT '',
    latency_s REAL
);
CREATE INDEX IF NOT EXISTS feedback_tab_kind ON feedback (tab, kind);
"""
MAX_FIELD_CHARS = 20_000


@dataclass
class FeedbackRecord:
    session_id: str
    tab: str
    kind: str
    value: str = ""
    comment: str = ""
    inputs: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    model_id: str = ""
    latency_s: float | None = None
    created_at: float = field(default_factory=time.time)
    id: int | None = None


def _dump(value: dict) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_FIELD_CHARS else json.dumps({"truncated": text[:MAX_FIELD_CHARS]})


class FeedbackStore:
    def __init__(self, path: str | Path, on_record=None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.on_record = on_record  # e.g. the Hub sync; called after each committed write
        self._write_lock = threading.Lock()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def add(self, record: FeedbackRecord) -> int:
        if record.kind not in KINDS:
            raise ValueError(f"feedback kind must be one of {KINDS}")
        row = (record.created_at, record.session_id[:64], record.tab[:32], record.kind, str(record.value)[:200],
               str(record.comment)[:MAX_FIELD_CHARS], _dump(record.inputs), _dump(record.outputs),
               _dump(record.parameters), record.model_id[:200], record.latency_s)
        with self._write_lock, self._connect() as db:
            cursor = db.execute(
                "INSERT INTO feedback (created_at, session_id, tab, kind, value, comment, inputs, outputs, parameters,"
                " model_id, latency_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            record.id = int(cursor.lastrowid)
        if self.on_record is not None:
            self.on_record(self._as_dict(record))
        return record.id

    def set_comment(self, record_id: int, comment: str) -> bool:
        with self._write_lock, self._connect() as db:
            cursor = db.execute("UPDATE feedback SET comment = ? WHERE id = ?", (comment[:MAX_FIELD_CHARS], record_id))
            return cursor.rowcount == 1

    def list(self, tab: str | None = None, kind: str | None = None, limit: int = 200, offset: int = 0) -> list[dict]:
        where, args = [], []
        if tab:
            where.append("tab = ?")
            args.append(tab)
        if kind:
            where.append("kind = ?")
            args.append(kind)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(f"SELECT * FROM feedback {clause} ORDER BY id DESC LIMIT ? OFFSET ?",
                              (*args, int(limit), int(offset))).fetchall()
        return [self._row(row) for row in rows]

    def count(self, tab: str | None = None, kind: str | None = None) -> int:
        return len(self.list(tab, kind, limit=10**9))

    def votes(self) -> list[dict]:
        """Arena votes (kind 'vote'), oldest first."""
        return list(reversed(self.list(kind="vote", limit=10**9)))

    @staticmethod
    def _row(row: sqlite3.Row) -> dict:
        record = dict(row)
        for key in ("inputs", "outputs", "parameters"):
            record[key] = json.loads(record[key])
        return record

    @staticmethod
    def _as_dict(record: FeedbackRecord) -> dict:
        return asdict(record)

    def export_jsonl(self, **filters) -> str:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in reversed(self.list(**filters, limit=10**9)))

    def export_csv(self, **filters) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS))
        writer.writeheader()
        for record in reversed(self.list(**filters, limit=10**9)):
            writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, dict) else v
                             for k, v in record.items()})
        return buffer.getvalue()

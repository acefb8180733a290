"""Push feedback to a Hugging Face dataset from a Space (Spaces' disks do not persist).

Each record is appended as one JSON line to a file in a local folder; `huggingface_hub`'s
CommitScheduler commits that folder to the dataset repo in the background every few minutes.
Enabled when `OMNIBRIDGE_FEEDBACK_REPO` and a token (`HF_TOKEN`) are set.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path


class HubFeedbackSync:
    def __init__(self, repo_id: str, folder: str | Path, token: str | None, every_minutes: float = 5.0,
                 hf_api=None):
        from huggingface_hub import CommitScheduler

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.file = self.folder / f"feedback-{uuid.uuid4().hex}.jsonl"  # one file per process: no merge conflicts
        self.scheduler = CommitScheduler(repo_id=repo_id, repo_type="dataset", folder_path=self.folder,
                                         path_in_repo="data", every=every_minutes, token=token, private=True,
                                         hf_api=hf_api)

    def __call__(self, record: dict) -> None:
        with self.scheduler.lock:
            with self.file.open("a") as handle:
                handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")

    def push_now(self):
        """Commit immediately (also what the scheduler does on its own timer)."""
        return self.scheduler.trigger().result()

    def stop(self) -> None:
        self.scheduler.stop()

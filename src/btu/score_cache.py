"""A disk cache of language-model scores by (LM, text): SQLite in WAL mode, written as each batch finishes, so
a rerun (or a killed run's rerun) scores only what is missing, and every cell of a grid that filters the same
texts with the same LM shares the scores."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path


class ScoreCache:
    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS scores (lm TEXT NOT NULL, text TEXT NOT NULL, "
                        "value TEXT NOT NULL, PRIMARY KEY (lm, text))")
        self.db.commit()

    def get(self, lm: str, texts) -> dict[str, list[float]]:
        """The cached values of those of `texts` that have one."""
        out, texts = {}, list(dict.fromkeys(texts))
        for i in range(0, len(texts), 500):
            chunk = texts[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for text, value in self.db.execute(f"SELECT text, value FROM scores WHERE lm = ? AND text IN ({marks})",
                                               [lm, *chunk]):
                out[text] = json.loads(value)
        return out

    def put(self, lm: str, items: dict[str, list[float]]) -> None:
        with self.db:  # one transaction
            self.db.executemany("INSERT OR REPLACE INTO scores (lm, text, value) VALUES (?, ?, ?)",
                                [(lm, t, json.dumps(v)) for t, v in items.items()])

    def count(self, lm: str | None = None) -> int:
        q = "SELECT COUNT(*) FROM scores" + (" WHERE lm = ?" if lm else "")
        return self.db.execute(q, [lm] if lm else []).fetchone()[0]

    def close(self) -> None:
        self.db.close()

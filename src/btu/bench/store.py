"""The results store: one SQLite file, one row per finished cell, written in one transaction.

WAL journal and a transaction per cell: a run killed at any moment (kill -9 included) leaves every finished
cell readable and the file consistent; the next run skips them. Only the process that runs `btu bench`
writes (a Ray run streams its results back to it), so there is one writer at a time.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from ..errors import ConfigError

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,        -- the hash of the cell's resolved configuration
    grid TEXT NOT NULL,
    status TEXT NOT NULL,        -- done | failed (a failed cell runs again next time)
    data TEXT NOT NULL, model TEXT NOT NULL, attack TEXT NOT NULL, defense TEXT NOT NULL,  -- the labels
    defense_name TEXT NOT NULL,
    seed INTEGER NOT NULL,
    config TEXT NOT NULL,        -- JSON: the resolved configuration that was hashed, plus the preset
    metrics TEXT,                -- JSON: the defense report's metrics (cacc, asr, asr_no_trigger, no_defense, ...)
    report TEXT,                 -- JSON: the defense's whole report
    timings TEXT,                -- JSON: wall seconds per stage
    artifacts TEXT,              -- JSON: the cached artifacts the cell used or made
    provenance TEXT,             -- JSON: versions, git commit, machine
    error TEXT,
    started TEXT NOT NULL,
    seconds REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS cells_grid ON cells (grid);
"""
JSON_COLUMNS = ("config", "metrics", "report", "timings", "artifacts", "provenance")


class Store:
    def __init__(self, path, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise ConfigError(f"{path}: no such results store")
        if self.path.exists() and self.path.is_dir():
            raise ConfigError(f"{path}: is a folder, not a results store")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            version = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"{path}: not a btu results store ({e})") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot open the results store ({e})") from None
        if version is None:
            self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(version[0]) != SCHEMA_VERSION:
            raise ConfigError(f"{path}: a results store of schema {version[0]}; this btu reads {SCHEMA_VERSION}")

    def close(self):
        self.db.close()

    def done(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT key FROM cells WHERE status='done'")}

    def put(self, record: dict) -> None:
        """Write one cell's record (replacing a failed attempt) in one transaction."""
        row = dict(record)
        for k in JSON_COLUMNS:
            if row.get(k) is not None:
                row[k] = json.dumps(row[k], default=str, allow_nan=True)
        row.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S"))
        cols = ("key", "grid", "status", "data", "model", "attack", "defense", "defense_name", "seed", "config",
                "metrics", "report", "timings", "artifacts", "provenance", "error", "started", "seconds")
        with self.db:  # BEGIN ... COMMIT, or ROLLBACK on an exception
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(f"INSERT OR REPLACE INTO cells ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                            tuple(row.get(c) for c in cols))

    def records(self, grid: str | None = None, status: str | None = "done") -> list[dict]:
        q, args = "SELECT * FROM cells", []
        conds = []
        if grid is not None:
            conds.append("grid = ?")
            args.append(grid)
        if status is not None:
            conds.append("status = ?")
            args.append(status)
        if conds:
            q += " WHERE " + " AND ".join(conds)
        cur = self.db.execute(q + " ORDER BY rowid", args)
        names = [c[0] for c in cur.description]
        out = []
        for r in cur.fetchall():
            rec = dict(zip(names, r))
            for k in JSON_COLUMNS:
                if rec.get(k) is not None:
                    rec[k] = json.loads(rec[k])
            out.append(rec)
        return out

    def grids(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT grid FROM cells ORDER BY grid")]

    def check(self) -> str:
        return self.db.execute("PRAGMA integrity_check").fetchone()[0]

"""The artifact cache: expensive intermediate results, stored by the hash of what made them and shared between
cells. A victim (the model trained on the poisoned set) depends on the data, the attack, the model, the run
settings and the seed, not on the defense: one serves every defense and every BTU variant of its cell group. A
poisoned set (every split after the attack, with its ground-truth flags) depends on less still: the data, the
attack, the seed and, for an attack that places its trigger inside the tokenizer's window, the model and the
maximum length.

Layout: CACHE/victims/KEY/model (a Hugging Face folder, safetensors) and CACHE/victims/KEY/victim.json (what
made it); CACHE/poisoned/KEY.json (the splits and the attack's record, plain JSON); CACHE/checkpoints/CELL/ holds
a running cell's epoch checkpoints. Each entry is written to a temporary file or folder and moved into place, so
a killed run never leaves a half-written one. Every worker of a Ray run must see the same CACHE path. Keys name
the data by its paths, not its content: a data file edited in place needs a fresh cache.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from ..io import atomic_write_json, atomic_write_text, replace_dir


class ArtifactCache:
    def __init__(self, root):
        self.root = Path(root)

    def victim_dir(self, key: str) -> Path:
        return self.root / "victims" / key

    def victim(self, key: str) -> Path | None:
        """The cached victim's model folder, or None."""
        d = self.victim_dir(key)
        return d / "model" if (d / "victim.json").is_file() and (d / "model").is_dir() else None

    def victim_seconds(self, key: str) -> float | None:
        """How long the cached victim took to train, as recorded when it was made (None: not recorded)."""
        import json

        try:
            return json.loads((self.victim_dir(key) / "victim.json").read_text()).get("seconds")
        except (OSError, ValueError):
            return None

    def save_victim(self, key: str, model, tokenizer, made_by: dict) -> Path:
        from ..models import save_model

        final = self.victim_dir(key)
        tmp = final.with_name(f".{key}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(model, tokenizer, tmp / "model")
        atomic_write_json(tmp / "victim.json", made_by)  # last: its presence marks the entry complete
        final.parent.mkdir(parents=True, exist_ok=True)
        replace_dir(tmp, final)
        return final / "model"

    def poisoned_path(self, key: str) -> Path:
        return self.root / "poisoned" / f"{key}.json"

    def poisoned(self, key: str):
        """The cached (Splits, attack record) of a poisoned set, or None (absent, or unreadable: made again)."""
        from ..data import TextDataset
        from ..experiment import Splits

        try:
            raw = json.loads(self.poisoned_path(key).read_text(encoding="utf-8"))
            sets = {name: TextDataset(**raw["splits"][name]) if raw["splits"][name] is not None else None
                    for name in ("train", "dev", "test", "poison_test")}
            return Splits(**sets, target=raw["splits"]["target"],
                          recorded_target=raw["splits"]["recorded_target"]), raw["attack"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save_poisoned(self, key: str, splits, attack_record, made_by: dict) -> Path:
        path = self.poisoned_path(key)
        atomic_write_text(path, json.dumps({"made_by": made_by, "splits": dataclasses.asdict(splits),
                                            "attack": attack_record}))
        return path

    def checkpoints(self, cell_key: str) -> Path:
        """Where a cell's trainings checkpoint each epoch: a killed cell resumes from there; removed once the
        cell is stored."""
        return self.root / "checkpoints" / cell_key

    def clear_checkpoints(self, cell_key: str) -> None:
        shutil.rmtree(self.checkpoints(cell_key), ignore_errors=True)

    def victims(self) -> list[str]:
        d = self.root / "victims"
        return sorted(p.name for p in d.iterdir() if (p / "victim.json").is_file()) if d.is_dir() else []

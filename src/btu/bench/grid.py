"""Grid files: a study in one YAML file, validated before any training and expanded into cells.

    name: table1-sst2
    data: [sst2]                     # a --train source, or {train:, dev:, test:, poison_test:, clean_data:, ...}
    model: [minilm]
    attack: [addword, addsent, {name: addword, rate: 0.007}]   # none: the data is already poisoned
    defense: [none, btu, {name: btu, recipe: retrain}]
    seed: [0, 1, 2]
    set: {epochs: 3}                 # run settings every cell gets

Every list is crossed with the others (a single value is a list of one). `blocks:` (a list of mappings with some
of data, model, attack, defense, seed, set) makes one grid of several crossings, each block's keys over the top
level's: SynBkd needs its own data folder, so Table 1 is a block of token attacks and one per paraphrase.

A cell's resolved configuration (data, model, attack with its defaults, the defense's full options, the run
settings, the seed) is hashed: the hash is the cell's key in the store, so an edited grid reruns only the cells
it changed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import ConfigError

BLOCK_KEYS = ("data", "model", "attack", "defense", "seed", "set")
GRID_KEYS = ("name", "description", *BLOCK_KEYS, "blocks")
SOURCES = ("train", "dev", "test", "poison_test", "clean_data")  # the keys that name data files or folders
DATA_KEYS = (*SOURCES, "text_column", "label_column", "limit", "label")
DEFENSE_KEYS = ("name", "recipe", "set", "label")
ATTACK_COMMON = ("name", "rate", "target", "label_policy", "label")
# the run settings a grid may set (the flags every `btu defend` run has); seed is its own axis
SETTINGS = {"epochs": (int, float), "batch_size": (int,), "lr": (int, float), "max_length": (int,),
            "precision": (str,)}
FORMAT = 1  # bump when the meaning of a resolved configuration changes: every cell then reruns


@dataclass
class Cell:
    """One run of the grid: data x model x attack x defense x seed, resolved."""

    data: dict  # DataConfig fields, as written in the grid (paths as written)
    data_path: dict  # the same, with relative paths resolved against the grid file's folder
    model: str  # as written
    model_path: str  # a folder written relative to the grid file, resolved; else as written (alias, hub name)
    attack: dict | None  # {name, rate, target, label_policy, options}; None: no attack
    defense: str  # a registered defense, or "none" (the victim alone)
    preset: str | None
    options: dict  # the defense's resolved options ({} for none)
    settings: dict  # epochs, batch_size, lr, max_length, precision
    seed: int
    labels: dict = field(default_factory=dict)  # data, model, attack, defense: how the report names them
    grid: str = ""
    gets_clean_data: bool = False  # the defense needs clean data: the data's clean_data source is passed to it

    def config(self) -> dict:
        """What the cell computes, and nothing else (labels and the preset's name are not in it; clean data only
        for a defense that gets it)."""
        data = self.data if self.gets_clean_data else {k: v for k, v in self.data.items() if k != "clean_data"}
        return {"format": FORMAT, "data": data, "model": self.model, "attack": self.attack,
                "defense": self.defense, "options": self.options, "settings": self.settings, "seed": self.seed}

    @property
    def key(self) -> str:
        return digest(self.config())

    def trained_data(self) -> dict:
        """The data without the clean rows some defenses get: what victims and poisoned sets are made from."""
        return {k: v for k, v in self.data.items() if k != "clean_data"}

    def victim_config(self) -> dict:
        """What the victim depends on: every cell with the same one shares it (clean data is not trained on)."""
        return {"format": FORMAT, "data": self.trained_data(), "model": self.model, "attack": self.attack,
                "settings": self.settings, "seed": self.seed}

    @property
    def victim_key(self) -> str:
        return digest(self.victim_config())

    def poison_config(self, max_length: int) -> dict:
        """What the poisoned set depends on: the model's tokenizer and the maximum length only where an attack
        places its trigger inside their window."""
        window = {"model": self.model, "max_length": max_length} if self.attack else {}
        return {"format": FORMAT, "data": self.trained_data(), "attack": self.attack, "seed": self.seed, **window}

    def describe(self) -> str:
        lb = self.labels
        return f"{lb['data']} · {lb['model']} · {lb['attack']} · {lb['defense']} · seed {self.seed}"


@dataclass
class Grid:
    name: str
    path: Path
    cells: list[Cell]
    description: str = ""


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_grid(path) -> Grid:
    """Read and validate a grid file; every problem names the file and the key (ConfigError, exit 2)."""
    from ..defenses.options import read_yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such grid file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it: {e}") from None
    return parse_grid(read_yaml(text, p), p)


def parse_grid(raw, path: Path) -> Grid:
    where = str(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a grid file is a mapping with the keys {', '.join(GRID_KEYS)}")
    unknown(raw, GRID_KEYS, where, "grid")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: name: expects text, not {name!r}")
    blocks = raw.get("blocks")
    if blocks is None:
        blocks = [{}]
    elif not isinstance(blocks, list) or not blocks or not all(isinstance(b, dict) for b in blocks):
        raise ConfigError(f"{where}: blocks: expects a list of mappings, each with some of the keys "
                          f"{', '.join(BLOCK_KEYS)}")
    top = {k: v for k, v in raw.items() if k in BLOCK_KEYS}
    cells, seen = [], {}
    for b, block in enumerate(blocks):
        at = f"{where}: blocks[{b}]" if "blocks" in raw else where
        unknown(block, BLOCK_KEYS, at, "block")
        merged = {**top, **block}
        merged["set"] = {**(top.get("set") or {}), **(block.get("set") or {})} \
            if isinstance(top.get("set") or {}, dict) and isinstance(block.get("set") or {}, dict) else block["set"]
        for cell in block_cells(merged, at, path, name):
            if cell.key in seen:
                raise ConfigError(f"{where}: two entries make the same cell ({cell.describe()} and "
                                  f"{seen[cell.key].describe()}): the grid lists one configuration twice")
            seen[cell.key] = cell
            cells.append(cell)
    return Grid(name, path, cells, raw.get("description") or "")


def block_cells(raw: dict, where: str, path: Path, name: str) -> list[Cell]:
    """The cells of one block: its lists crossed (a block without blocks is the whole grid)."""
    from ..defenses.runner import RunSettings

    for k in ("data", "defense"):
        if k not in raw:
            raise ConfigError(f"{where}: {k}: required")
    settings = parse_settings(raw.get("set") or {}, f"{where}: set")
    base = path.resolve().parent
    datas = [parse_data(d, f"{where}: data[{i}]", base) for i, d in enumerate(as_list(raw["data"]))]
    models = [check_text(m, f"{where}: model[{i}]") for i, m in enumerate(as_list(raw.get("model", "minilm")))]
    model_paths = {m: str(base / m) if not Path(m).is_absolute() and (base / m).is_dir() else m for m in models}
    attacks = [parse_attack(a, f"{where}: attack[{i}]") for i, a in enumerate(as_list(raw.get("attack", "none")))]
    defenses = [parse_defense(d, f"{where}: defense[{i}]") for i, d in enumerate(as_list(raw["defense"]))]
    seeds = as_list(raw.get("seed", 0))
    for i, s in enumerate(seeds):
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise ConfigError(f"{where}: seed[{i}]: expects a whole number >= 0, not {s!r}")
    for axis, values in (("data", datas), ("model", models), ("attack", attacks), ("defense", defenses),
                         ("seed", seeds)):
        if not values:
            raise ConfigError(f"{where}: {axis}: an empty list makes no cells")
    for d in defenses:
        d["clean_data"] = d["name"] != "none" and "clean_data" in needs_of(d)
    for data, _, data_label in datas:
        for d in defenses:
            if d["clean_data"] and not data.get("clean_data"):
                raise ConfigError(f"{where}: defense {d['label']!r} needs clean data of the task: give data "
                                  f"{data_label!r} a clean_data source (e.g. its dev split)")
    defaults = {k: getattr(RunSettings(), k) for k in SETTINGS}
    cells = []
    # the defense varies fastest: the cells that share a victim run one after another
    for (data, data_path, data_label), model, (attack, attack_label), seed, d in itertools.product(
            datas, models, attacks, seeds, defenses):
        cells.append(Cell(data=data, data_path=data_path, model=model, model_path=model_paths[model], attack=attack,
                          defense=d["name"], preset=d["preset"], options=d["options"],
                          settings={**defaults, **settings, **d["settings"]}, seed=seed, grid=name,
                          gets_clean_data=d["clean_data"],
                          labels={"data": data_label, "model": Path(model).name if _is_path(model) else model,
                                  "attack": attack_label, "defense": d["label"]}))
    return cells


def needs_of(d: dict) -> set[str]:
    """What a parsed defense entry needs (with its options)."""
    from ..defenses.base import DEFENSES
    from ..defenses.options import from_dict

    cls = DEFENSES[d["name"]]
    return cls(from_dict(cls.Options, d["options"])).required()


def as_list(v) -> list:
    return list(v) if isinstance(v, list) else [v]


def unknown(d: dict, allowed, where: str, what: str) -> None:
    import difflib

    for k in d:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), allowed, n=1)
            raise ConfigError(f"{where}: unknown key {k!r} in {what}" + (f" (did you mean {close[0]!r}?)" if close
                              else f"; keys: {', '.join(allowed)}"))


def check_text(v, where: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{where}: expects a name, not {v!r}")
    return v


def parse_settings(d, where: str) -> dict:
    from ..defenses.runner import RunSettings

    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expects a mapping of run settings ({', '.join(SETTINGS)}), not {d!r}")
    unknown(d, tuple(SETTINGS), where, "the run settings")
    out = {}
    for k, v in d.items():
        if isinstance(v, bool) or not isinstance(v, SETTINGS[k]):
            kind = "text" if SETTINGS[k] == (str,) else "a number"
            raise ConfigError(f"{where}: {k}: expects {kind}, not {v!r}")
        out[k] = float(v) if k in ("epochs", "lr") else v
    if "precision" in out and out["precision"] not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"{where}: precision: expects auto, bf16 or fp32, not {out['precision']!r}")
    defaults = RunSettings()
    full = {k: out.get(k, getattr(defaults, k)) for k in SETTINGS}
    try:
        RunSettings(**full)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return out


def _is_path(s: str) -> bool:
    return "/" in s or s.startswith(".") or s.endswith((".tsv", ".csv", ".jsonl", ".json", ".gz", ".bz2"))


def parse_data(d, where: str, base: Path) -> tuple[dict, dict, str]:
    """(DataConfig fields as written, the same with paths resolved against the grid's folder, the label)."""
    if isinstance(d, str):
        d = {"train": d}
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expects a data source or a mapping with the keys {', '.join(DATA_KEYS)}")
    unknown(d, DATA_KEYS, where, "data")
    if "train" not in d:
        raise ConfigError(f"{where}: train: required")
    # clean_data only where given: the configurations (and store keys) of grids without it stay as they were
    written = {k: d.get(k) for k in DATA_KEYS if k != "label" and (k != "clean_data" or d.get(k) is not None)}
    resolved = dict(written)
    for k in ("train", "dev", "test", "poison_test", "clean_data", "text_column", "label_column"):
        if written.get(k) is not None:
            check_text(written[k], f"{where}: {k}")
    for k in (k for k in SOURCES if k in written):
        v = written[k]
        if v is not None and not v.startswith("hf:") and not Path(v).is_absolute() and \
                (_is_path(v) or (base / v).exists()):
            resolved[k] = str(base / v)
        if resolved[k] is not None and _is_path(resolved[k]) and not resolved[k].startswith("hf:") \
                and not Path(resolved[k]).exists():
            raise ConfigError(f"{where}: {k}: {v}: no such file or folder (relative paths are read from the grid "
                              f"file's folder, {base})")
    limit = written["limit"]
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"{where}: limit: expects a whole number >= 1, not {limit!r}")
    label = d.get("label") or (Path(written["train"]).name if _is_path(written["train"]) else written["train"])
    if limit:
        label += f" ({limit} rows)" if not d.get("label") else ""
    return written, resolved, check_text(label, f"{where}: label")


def parse_attack(a, where: str) -> tuple[dict | None, str]:
    """(the attack's resolved config, its label); (None, "none") for no attack."""
    from ..attacks import ATTACKS, make_attack

    if a is None or a == "none":
        return None, "none"
    if isinstance(a, str):
        a = {"name": a}
    if not isinstance(a, dict) or "name" not in a:
        raise ConfigError(f"{where}: expects an attack name or a mapping with `name`, not {a!r}")
    name = a["name"]
    if name not in ATTACKS:
        raise ConfigError(f"{where}: name: unknown attack {name!r}; choose from none, {', '.join(sorted(ATTACKS))}")
    cls = ATTACKS[name]
    own = [f.name for f in fields(cls) if f.name not in ("rate", "target", "label_policy")]
    unknown(a, ATTACK_COMMON + tuple(own), where, f"attack {name!r}")
    options = {k: a[k] for k in own if k in a}
    for k, v in options.items():
        default = next(f for f in fields(cls) if f.name == k)
        sample = default.default_factory() if callable(default.default_factory) else default.default
        if isinstance(v, bool) or not isinstance(v, type(sample)) and not (isinstance(sample, list) and
                                                                          isinstance(v, str)):
            raise ConfigError(f"{where}: {k}: expects {type(sample).__name__}, not {v!r}")
    rate = a.get("rate", 0.1)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise ConfigError(f"{where}: rate: expects a number, not {rate!r}")
    policy = a.get("label_policy", "dirty")
    target = a.get("target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (str, int))):
        raise ConfigError(f"{where}: target: expects a label name or index, not {target!r}")
    try:
        make_attack(name, rate=float(rate), label_policy=policy, **options)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    cfg = {"name": name, "rate": float(rate), "target": None if target is None else str(target),
           "label_policy": policy, "options": options}
    extra = [f"{k}={_short(a[k])}" for k in a if k not in ("name", "label")]
    return cfg, a.get("label") or " ".join([name] + extra)


def _short(v) -> str:
    return " ".join(map(str, v)) if isinstance(v, list) else f"{v:g}" if isinstance(v, float) else str(v)


def parse_defense(d, where: str) -> dict:
    """{name, preset, options (resolved, full), settings (the defense's own run settings), label}."""
    from ..defenses.base import DEFENSES
    from ..defenses.options import build_options, to_dict

    if isinstance(d, str):
        d = {"name": d}
    if not isinstance(d, dict) or "name" not in d:
        raise ConfigError(f"{where}: expects a defense name or a mapping with `name`, not {d!r}")
    unknown(d, DEFENSE_KEYS, where, "defense")
    name = d["name"]
    if name == "none":
        if d.get("recipe") or d.get("set"):
            raise ConfigError(f"{where}: defense none (the victim alone) has no recipe or options")
        return {"name": "none", "preset": None, "options": {}, "settings": {}, "label": d.get("label") or "none"}
    if name not in DEFENSES:
        raise ConfigError(f"{where}: name: unknown defense {name!r}; choose from none, {', '.join(sorted(DEFENSES))}")
    cls = DEFENSES[name]
    preset = d.get("recipe") or cls.default_preset
    if preset is not None and preset not in cls.presets:
        raise ConfigError(f"{where}: recipe: defense {name!r} has " + (
            f"the recipes {', '.join(cls.presets)}" if cls.presets else "no recipes") + f", not {preset!r}")
    values = d.get("set") or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: set: expects a mapping of option names to values, not {values!r}")
    run = {k: v for k, v in values.items() if k in SETTINGS}
    own = {k: v for k, v in values.items() if k not in SETTINGS}
    run = parse_settings(run, f"{where}: set")
    try:
        opts = build_options(cls.Options, cls.presets.get(preset) if preset else None, own, source=f"{where}: set")
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    label = d.get("label") or " ".join(
        [name] + ([f"({preset})"] if d.get("recipe") else []) + [f"{k}={_short(v)}" for k, v in values.items()])
    return {"name": name, "preset": preset, "options": to_dict(opts), "settings": run, "label": label}

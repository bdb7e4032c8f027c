"""Readers for TSV, CSV and JSONL files (optionally .gz/.bz2) and Hugging Face datasets.

Every problem becomes a DataError naming the file, the line and what is wrong: a user
with a bad row should learn which one from the message, not from a stack trace.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
from pathlib import Path

from ..errors import DataError
from .dataset import TextDataset

TEXT_COLUMNS = ("sentence", "text", "content", "review", "document", "sentence1", "tweet")
LABEL_COLUMNS = ("label", "labels", "category", "class", "sentiment", "target", "y")
POISON_COLUMN = "poisoned"
FORMATS = {".tsv": "tsv", ".tab": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
csv.field_size_limit(2**31 - 1)


def file_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2"):
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise DataError(path, f"unknown format {''.join(path.suffixes) or '(no extension)'!r}: "
                              "expected .tsv, .csv or .jsonl (optionally .gz or .bz2)")
    return fmt


def _read_text(path: Path) -> str:
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a folder, expected a file")
    raw = path.read_bytes()
    try:
        if path.suffix.lower() == ".gz":
            raw = gzip.decompress(raw)
        elif path.suffix.lower() == ".bz2":
            raw = bz2.decompress(raw)
    except (OSError, EOFError, ValueError) as e:
        raise DataError(path, f"cannot decompress: {e}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(path, f"undecodable bytes (not UTF-8) at byte {e.start}: {raw[e.start:e.start + 4]!r}",
                        line) from None


def _records(path: Path, fmt: str, text: str):
    """Yield (line number, {column: value}) for each data row, and the column list."""
    if fmt == "jsonl":
        rows, columns = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, f"not valid JSON: {e.msg}", n) from None
            if not isinstance(obj, dict):
                raise DataError(path, "expected a JSON object per line", n)
            for k in obj:
                if k not in columns:
                    columns.append(k)
            rows.append((n, obj))
        return rows, columns
    delimiter = "\t" if fmt == "tsv" else ","
    quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(path, "file is empty") from None
    header = [h.strip() for h in header]
    rows = []
    try:
        for fields in reader:
            n = reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if len(fields) > len(header):
                raise DataError(path, f"{len(fields)} fields but the header has {len(header)}", n)
            rows.append((n, dict(zip(header, fields))))
    except csv.Error as e:
        raise DataError(path, f"cannot parse: {e}", reader.line_num) from None
    return rows, header


def _pick(columns, wanted, candidates, what, path):
    if wanted is not None:
        if wanted not in columns:
            raise DataError(path, f"no {what} column {wanted!r}; columns are {list(columns)}")
        return wanted
    lower = {str(c).lower(): c for c in columns}
    for c in candidates:
        if c in lower:
            return lower[c]
    raise DataError(path, f"no {what} column: expected one of {', '.join(candidates)} "
                          f"(or name it with --{what}-column); columns are {list(columns)}")


def _as_int(value: str):
    try:
        return int(value)
    except ValueError:
        try:
            f = float(value)
        except ValueError:
            return None
        return int(f) if f.is_integer() else None


def encode_labels(values, path, label_names=None, require_two=True):
    """Map raw label strings (with their line numbers) to ids.

    With `label_names` (from the training set or a model), every value must be one of
    them (or, when the names are words, a valid index). Without, the names are the
    sorted distinct values: numerically when all are integers, else alphabetically.
    """
    if label_names is not None:
        names = [str(n) for n in label_names]
        numeric_names = all(_as_int(n) is not None for n in names)
        index = {(str(_as_int(n)) if numeric_names else n): i for i, n in enumerate(names)}
        ids = []
        for line, v in values:
            iv = _as_int(v)
            key = str(iv) if numeric_names and iv is not None else v
            if key in index:
                ids.append(index[key])
            elif not numeric_names and iv is not None and 0 <= iv < len(names):
                ids.append(iv)  # an index into word labels
            else:
                raise DataError(path, f"unknown label {v!r}: the labels are {names}", line)
        return ids, names
    numeric = _as_int(values[0][1]) is not None if values else False
    for line, v in values:
        if (_as_int(v) is not None) != numeric:
            kind = "an integer" if numeric else "a name"
            raise DataError(path, f"unparseable label {v!r}: expected {kind} like the first row's "
                                  f"{values[0][1]!r}", line)
    if numeric:
        distinct = sorted({_as_int(v) for _, v in values})
        names = [str(d) for d in distinct]
        pos = {d: i for i, d in enumerate(distinct)}
        ids = [pos[_as_int(v)] for _, v in values]
    else:
        names = sorted({v for _, v in values})
        pos = {n: i for i, n in enumerate(names)}
        ids = [pos[v] for _, v in values]
    if require_two and len(names) < 2:
        raise DataError(path, f"only one class (label {names[0] if names else None!r}) in {len(ids)} rows; "
                              "a classifier needs at least two")
    return ids, names


def _parse_flag(v, path, line):
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "1.0"):
        return True
    if s in ("0", "false", "no", "0.0", ""):
        return False
    raise DataError(path, f"unparseable '{POISON_COLUMN}' flag {v!r}: expected 0/1 or true/false", line)


def read_file(path, text_column=None, label_column=None, label_names=None, require_two=True) -> TextDataset:
    """Read one TSV, CSV or JSONL file into a TextDataset."""
    path = Path(path)
    fmt = file_format(path)
    rows, columns = _records(path, fmt, _read_text(path))
    if not rows:
        raise DataError(path, "no data rows")
    tcol = _pick(columns, text_column, TEXT_COLUMNS, "text", path)
    lcol = _pick(columns, label_column, LABEL_COLUMNS, "label", path)
    texts, raw_labels = [], []
    for line, rec in rows:
        t, lab = rec.get(tcol), rec.get(lcol)
        if not isinstance(t, str) or not t.strip():
            raise DataError(path, f"empty text in column {tcol!r}" if t is None or isinstance(t, str)
                            else f"text in column {tcol!r} is not a string: {t!r}", line)
        if lab is None or (isinstance(lab, str) and not lab.strip()):
            raise DataError(path, f"missing label in column {lcol!r}", line)
        if isinstance(lab, bool) or not isinstance(lab, (str, int, float)):
            raise DataError(path, f"unparseable label {lab!r}", line)
        texts.append(t.strip())
        raw_labels.append((line, str(lab).strip()))
    labels, names = encode_labels(raw_labels, path, label_names, require_two)
    poisoned = None
    if POISON_COLUMN in columns:
        poisoned = [_parse_flag(rec.get(POISON_COLUMN, ""), path, line) for line, rec in rows]
    extra = {}
    for c in columns:
        if c in (tcol, lcol, POISON_COLUMN):
            continue
        vals = [rec.get(c) for _, rec in rows]
        if all(isinstance(v, str) for v in vals):
            extra[c] = [v.strip() for v in vals]
    return TextDataset(texts, labels, names, poisoned, extra, source=str(path))


def write_file(dataset: TextDataset, path) -> None:
    """Write a data set as TSV (text, label name, poisoned flag, extra columns), atomically."""
    from ..io import atomic_write_text

    path = Path(path)
    cols = ["sentence", "label", POISON_COLUMN] + list(dataset.columns)
    out = io.StringIO()
    out.write("\t".join(cols) + "\n")
    for i in range(len(dataset)):
        vals = [dataset.texts[i], dataset.label_names[dataset.labels[i]], str(int(dataset.poison_flags[i]))]
        vals += [dataset.columns[c][i] for c in dataset.columns]
        out.write("\t".join(v.replace("\t", " ").replace("\n", " ") for v in vals) + "\n")
    atomic_write_text(path, out.getvalue())


def read_hf(spec: str, role: str, text_column=None, label_column=None, label_names=None) -> TextDataset:
    """`hf:NAME[:CONFIG]`: a Hugging Face data set (needs `datasets` and internet)."""
    try:
        import datasets
    except ImportError:
        raise DataError(spec, "reading Hugging Face data sets needs the `datasets` package: "
                              "pip install datasets") from None
    parts = spec[3:].split(":")
    name, config = parts[0], (parts[1] if len(parts) > 1 else None)
    splits = {"train": ["train"], "dev": ["validation", "dev"], "test": ["test", "validation"]}[role]
    last = None
    for split in splits:
        try:
            ds = datasets.load_dataset(name, config, split=split)
            break
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds
            last = e
    else:
        raise DataError(spec, f"cannot load split {splits[0]!r} (no internet? give a local file): {last}")
    tcol = _pick(ds.column_names, text_column, TEXT_COLUMNS, "text", spec)
    lcol = _pick(ds.column_names, label_column, LABEL_COLUMNS, "label", spec)
    feature = ds.features[lcol]
    raw = ds[lcol]
    if hasattr(feature, "names") and label_names is None:
        label_names = list(feature.names)
        raw = [feature.names[i] if isinstance(i, int) and i >= 0 else i for i in raw]
    values = [(i + 1, str(v)) for i, v in enumerate(raw)]
    texts = ds[tcol]
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise DataError(spec, f"empty text in column {tcol!r}", i + 1)
    labels, names = encode_labels(values, spec, label_names, require_two=role == "train")
    return TextDataset([t.strip() for t in texts], labels, names, source=spec)

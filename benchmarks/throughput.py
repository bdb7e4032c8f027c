#!/usr/bin/env python
"""Training throughput of MiniLM on SST-2 train: btu's training loop against a plain loop.

One run measures, in this order, each written to the results file as soon as it finishes:

  peak            torch.mm on square matrices, fp32 and bf16: this machine's matmul peak (GFLOP/s).
                  Measured at the start of every process (and again at its end, to show drift), so
                  each measurement's "% of peak" uses a peak taken in the same process.
  flop_check      the analytic FLOP formula below against torch's FlopCounterMode on one small batch.
  plain_fp32      a plain loop: every batch padded to 128 tokens, fp32, torch.optim.AdamW (default,
                  not fused), dense gradients, random shuffling, batch 32, lr 2e-5. N timed steps after
                  a few warm-up steps, extrapolated to one epoch.
  btu_bf16        btu.training.train, one full epoch, precision="bf16", TrainConfig defaults otherwise.
  btu_fp32        the same in fp32 (--fp32).
  btu_bf16_embeddings  the same as btu_bf16 with trainable="embeddings", the setting of BTU detection
                  round 1 (--embeddings).

Results go to benchmarks/results/throughput.json (atomic writes). A second run skips measurements
already there with the same settings (--force re-runs them), so an interrupted run resumes.
Timings vary about +-20% between runs on a shared machine: compare ratios within one run.

The benchmark (all measurements; see benchmarks/README.md):
    .venv/bin/python benchmarks/throughput.py --fp32 --embeddings
Tiny smoke test:
    .venv/bin/python benchmarks/throughput.py --plain-steps 2 --plain-warmup 1 --max-rows 96 \
        --peak-size 512 --out /tmp/throughput-tiny.json --fp32 --embeddings
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "throughput.json"
BASELINE = "plain_fp32"
PLAIN_PAD = 128
TARGET_SPEEDUP = 3.0
TARGET_EPOCH_S = 60.0


# ----------------------------------------------------------------------------- results file

def load_results(path: Path) -> dict:
    if path.exists():
        with open(path) as f:
            return json.load(f)
    return {"measurements": {}}


def save_results(path: Path, results: dict) -> None:
    """Atomic: write a temporary file beside the target, then os.replace it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def git_commit() -> str | None:
    """The measured code's commit, with "+dirty" when the working tree has changes."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine_info() -> dict:
    """CPU model, cores, library versions: enough to tell two machines' results apart."""
    import torch
    import transformers

    from btu.training.loop import cpu_has_bf16

    cpu = platform.processor() or "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_has_bf16(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "commit": git_commit(),
    }


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return None


class OtherLoad:
    """CPU time other processes used while a measurement ran, in cores (0 = this run had the machine).

    /proc/stat's busy time of all CPUs, less this process's own CPU time, over the wall time.
    The load average cannot tell this run's own threads from other work; this can.
    """

    def __init__(self):
        self.start = self._snapshot()

    @staticmethod
    def _snapshot():
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except OSError:
            return None
        busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle and iowait
        t = os.times()
        return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system, time.perf_counter()

    def cores(self) -> float | None:
        end = self._snapshot()
        if self.start is None or end is None or end[2] <= self.start[2]:
            return None
        other = (end[0] - self.start[0]) - (end[1] - self.start[1])
        return max(0.0, other / (end[2] - self.start[2]))


# ----------------------------------------------------------------------------- matmul peak

def measure_peak(size: int, reps: int, warmup: int = 2) -> dict:
    """Best-of-`reps` GFLOP/s of torch.mm(size x size) in fp32 and bf16 (2*n^3 FLOPs each)."""
    import torch

    out = {"size": size, "reps": reps}
    flops = 2.0 * size ** 3
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        for _ in range(warmup):
            torch.mm(a, b)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t)
        out[f"{name}_gflops"] = flops / min(times) / 1e9
        out[f"{name}_gflops_median"] = flops / statistics.median(times) / 1e9
    return out


# ----------------------------------------------------------------------------- FLOP formula

def model_shape(model) -> dict:
    """Matmul weight counts of the model: per token (encoder) and per row (pooler + classifier)."""
    import torch

    per_token = per_row = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            n = mod.in_features * mod.out_features
            if "pooler" in name or "classifier" in name:
                per_row += n  # applied to the [CLS] vector only
            else:
                per_token += n
    cfg = model.config
    return {"linear_per_token": per_token, "linear_per_row": per_row, "layers": cfg.num_hidden_layers,
            "hidden": cfg.hidden_size}


def batch_flops(shape: dict, rows: int, seq: int, trainable: str = "all") -> float:
    """Matmul FLOPs of one forward + backward pass over a (rows x seq) batch, padding included.

    A Linear y = x W over T tokens costs 2*T*|W| forward. Backward costs 2*T*|W| for dX and,
    when W is trained, 2*T*|W| for dW: 6*T*|W| in all (the usual "6 x parameters x tokens"), or
    4*T*|W| when only the word embeddings train (trainable="embeddings": dX still flows through
    every layer to reach them, dW is never formed). Pooler and classifier act on one vector a row.
    Attention, per layer and row: Q K^T is (S x d) x (d x S) over all heads = 2*S^2*H, and the
    probabilities times V another 2*S^2*H; backward forms gradients of both operands (all are
    activations), 2x forward: 3 * 4*S^2*H = 12*S^2*H per layer and row, whatever trains.
    Not counted (not matmuls): the embedding lookup, biases, LayerNorm, softmax, GELU, dropout,
    the loss, gradient clipping and the optimizer; they are the loop's overhead, not its work.
    """
    k = 6 if trainable == "all" else 4
    tokens = rows * seq
    return (k * shape["linear_per_token"] * tokens + k * shape["linear_per_row"] * rows
            + 12 * shape["layers"] * shape["hidden"] * rows * seq * seq)


def flop_check(model, rows: int = 4, seq: int = 40) -> dict:
    """Counted matmul FLOPs (torch FlopCounterMode, fp32 forward + backward) over the formula."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    shape = model_shape(model)
    out = {"rows": rows, "seq": seq}
    ids = torch.randint(1000, 2000, (rows, seq))
    mask = torch.ones_like(ids)
    y = torch.zeros(rows, dtype=torch.long)
    for trainable in ("all", "embeddings"):
        emb = model.get_input_embeddings().weight
        for p in model.parameters():
            p.requires_grad_(trainable == "all" or p is emb)
        counter = FlopCounterMode(display=False)
        with counter:
            model(input_ids=ids, attention_mask=mask, labels=y).loss.backward()
        model.zero_grad(set_to_none=True)
        counted = counter.get_total_flops()
        formula = batch_flops(shape, rows, seq, trainable)
        out[trainable] = {"counted": counted, "formula": formula, "ratio": counted / formula}
    for p in model.parameters():
        p.requires_grad_(True)
    return out


# ----------------------------------------------------------------------------- the two loops

def load_data(max_rows: int | None) -> tuple:
    """SST-2 train from ../shared/datasets/sst2 (btu's data roots), first max_rows
    rows only if given, and the full row count; exits with a message if the data is missing."""
    from btu.data import load_source
    from btu.data.sources import find_named_folder

    folder = find_named_folder("sst2")
    if folder is None or not (folder / "train.tsv").is_file():
        sys.exit("throughput.py: SST-2 is missing: expected ../shared/datasets/sst2/train.tsv beside the "
                 "repository (or a folder sst2/ under $BTU_DATA). The data is not part of the repository.")
    ds = load_source("sst2", "train")
    full = len(ds)
    if max_rows:
        ds = ds.subset(range(min(max_rows, len(ds))))
    return ds, full


def fresh_model(label_names):
    """MiniLM as btu loads it (built-in alias, offline, attention implementation as chosen there)."""
    from btu.models import load_classifier

    return load_classifier("minilm", label_names=label_names)


def run_plain(ds, full_rows: int, steps: int, warmup: int, batch_size: int, lr: float, seed: int) -> dict:
    """A plain fp32 loop: pad every batch to 128, default AdamW, dense grads, random batches."""
    import torch

    model, tok = fresh_model(ds.label_names)
    shape = model_shape(model)
    enc = tok(list(ds.texts), padding="max_length", truncation=True, max_length=PLAIN_PAD, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    labels = torch.tensor(ds.labels, dtype=torch.long)
    n = len(ds)
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)  # torch defaults: weight decay 0.01, for-loop on CPU
    gen = torch.Generator().manual_seed(seed)

    def batches():
        while True:  # epochs of random batches, as long as asked
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, batch_size):
                yield perm[i:i + batch_size]

    times, rows, real_tokens, flops = [], 0, 0, 0.0
    it = batches()
    for step in range(warmup + steps):
        b = next(it)
        t = time.perf_counter()
        out = model(input_ids=ids[b], attention_mask=mask[b], labels=labels[b])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as btu (max_grad_norm=1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.loss.item()
        dt = time.perf_counter() - t
        if step >= warmup:
            times.append(dt)
            rows += len(b)
            real_tokens += int(mask[b].sum())
            flops += batch_flops(shape, len(b), PLAIN_PAD)
    seconds = sum(times)
    rps = rows / seconds
    return {
        "rows": rows, "steps": steps, "warmup_steps": warmup, "seconds": seconds,
        "rows_per_second": rps, "epoch_seconds": full_rows / rps, "epoch_extrapolated": True,
        "median_step_s": statistics.median(times), "flops": flops, "gflops": flops / seconds / 1e9,
        "computed_tokens": rows * PLAIN_PAD, "real_tokens": real_tokens,
        "padding_fraction": 1 - real_tokens / (rows * PLAIN_PAD), "precision": "fp32",
    }


def btu_batch_shapes(lengths, cfg) -> list[tuple[int, int]]:
    """(rows, padded width) of each batch of one btu epoch, by re-running btu's batching:
    length_bucketed_batches with loop.py's seed rule seed = cfg.seed * 1000 + epoch (epoch 0);
    collate pads to the longest row of the batch. Checked against the shapes collate really
    returned during the timed epoch (see run_btu)."""
    from btu.training.batching import length_bucketed_batches

    batches = length_bucketed_batches(lengths, cfg.batch_size, seed=cfg.seed * 1000 + 0)
    return [(len(b), max(lengths[i] for i in b)) for b in batches]


def run_btu(ds, full_rows: int, precision: str, trainable: str, seed: int) -> dict:
    """One full epoch of btu.training.train with TrainConfig defaults but epochs, precision, trainable."""
    import btu.training.loop as loop
    from btu.training import TrainConfig, train
    from btu.training.batching import encode

    model, tok = fresh_model(ds.label_names)
    shape = model_shape(model)
    cfg = TrainConfig(epochs=1.0, precision=precision, trainable=trainable, seed=seed, progress=False)
    input_ids = [x[: cfg.max_length] for x in encode(tok, ds.texts, cfg.max_length)]
    lengths = [len(x) for x in input_ids]
    shapes = btu_batch_shapes(lengths, cfg)

    seen = []  # shapes collate returned in the timed loop: one tuple append a step
    real_collate = loop.collate

    def recording_collate(*a, **kw):
        ids, mask = real_collate(*a, **kw)
        seen.append(tuple(ids.shape))
        return ids, mask

    loop.collate = recording_collate
    try:
        res = train(model, tok, input_ids=input_ids, labels=ds.labels, config=cfg)
    finally:
        loop.collate = real_collate
    checked = seen == shapes
    if not checked:
        print("  warning: re-computed batch shapes differ from the real ones; using the real ones", flush=True)
        shapes = seen
    flops = sum(batch_flops(shape, r, s, trainable) for r, s in shapes)
    computed = sum(r * s for r, s in shapes)
    return {
        "rows": res.rows, "steps": res.steps, "seconds": res.seconds, "rows_per_second": res.rows_per_second,
        "epoch_seconds": res.seconds * full_rows / res.rows, "epoch_extrapolated": res.rows < full_rows,
        "flops": flops, "gflops": flops / res.seconds / 1e9, "computed_tokens": computed,
        "real_tokens": sum(lengths), "padding_fraction": 1 - sum(lengths) / computed,
        "mean_padded_width": computed / res.rows, "precision": precision, "trainable": trainable,
        "final_loss": res.final_loss, "shapes_checked": checked,
    }


def median_run(fn, repeats: int) -> dict:
    """Run fn() `repeats` times; the run with the median time, and every run's epoch seconds.

    One epoch varies ~10-20 % between identical runs here, so a single run cannot tell
    whether a target near the measured time is met."""
    runs = []
    for i in range(max(1, repeats)):
        runs.append(fn())
        print(f"  run {i + 1}/{repeats}: {runs[-1]['epoch_seconds']:.1f} s", flush=True)
    ordered = sorted(runs, key=lambda m: m["seconds"])
    m = dict(ordered[(len(ordered) - 1) // 2])
    m["epoch_seconds_runs"] = [r["epoch_seconds"] for r in runs]
    return m


# ----------------------------------------------------------------------------- profiling

def profile_btu(ds, steps: int, precision: str, trainable: str, seed: int, rows: int = 30) -> None:
    """torch.profiler over `steps` btu steps (after a short warm-up run): top ops by self CPU time."""
    import torch

    from btu.training import TrainConfig, train

    model, tok = fresh_model(ds.label_names)
    n = min(len(ds), steps * 32)
    sub = ds.subset(range(n))
    cfg = TrainConfig(epochs=1.0, precision=precision, trainable=trainable, seed=seed, progress=False)
    warm = ds.subset(range(min(len(ds), 64)))
    train(model, tok, warm.texts, warm.labels, config=cfg)  # oneDNN primitives, allocator
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        res = train(model, tok, sub.texts, sub.labels, config=cfg)
    print(f"profiled {res.steps} steps, {res.rows} rows, {res.seconds:.2f} s (profiler overhead included)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


# ----------------------------------------------------------------------------- table

def table(results: dict) -> str:
    """The measurements as a Markdown table (also printed at the end of every run)."""
    ms = results.get("measurements", {})
    base = ms.get(BASELINE, {}).get("rows_per_second")
    lines = ["| measurement | rows/s | epoch s | GFLOP/s | % of peak | padding % | speed-up vs plain | other CPU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ("plain_fp32", "btu_fp32", "btu_bf16", "btu_bf16_embeddings"):
        m = ms.get(name)
        if not m:
            continue
        epoch = f"{'~' if m['epoch_extrapolated'] else ''}{m['epoch_seconds']:.1f}"
        speed = f"{m['rows_per_second'] / base:.2f}x" if base else "-"
        oc = m.get("other_cpu_cores")
        other = "-" if oc is None else f"{oc:.1f}"
        lines.append(f"| {name} | {m['rows_per_second']:.1f} | {epoch} | {m['gflops']:.1f} | "
                     f"{100 * m['fraction_of_peak']:.1f} ({m['peak_kind']}) | {100 * m['padding_fraction']:.0f} | "
                     f"{speed} | {other} |")
    return "\n".join(lines)


def verdict(results: dict) -> list[str]:
    ms = results.get("measurements", {})
    out = []
    if BASELINE in ms and "btu_bf16" in ms:
        s = ms["btu_bf16"]["rows_per_second"] / ms[BASELINE]["rows_per_second"]
        out.append(f"speed-up btu_bf16 / plain_fp32: {s:.2f}x (target >= {TARGET_SPEEDUP:.0f}x): "
                   f"{'met' if s >= TARGET_SPEEDUP else 'NOT met'}")
    if "btu_bf16" in ms:
        m = ms["btu_bf16"]
        e = m["epoch_seconds"]
        how = " (extrapolated from a subset)" if m["epoch_extrapolated"] else ""
        out.append(f"btu_bf16 epoch of SST-2 train: {e:.1f} s{how} (target < {TARGET_EPOCH_S:.0f} s): "
                   f"{'met' if e < TARGET_EPOCH_S else 'NOT met'}")
    busy = [f"{n} ({m['other_cpu_cores']:.1f})" for n, m in ms.items() if (m.get("other_cpu_cores") or 0) > 0.2]
    if busy:
        out.append(f"note: other processes used CPU during {', '.join(busy)} (in cores, of "
                   f"{results.get('machine', {}).get('cores')}); those times are pessimistic")
        threads = results.get("machine", {}).get("torch_threads")
        if threads and threads == results.get("machine", {}).get("cores"):
            out.append("      with every core given to torch, a busy core stalls each parallel region: on a shared "
                       "machine --threads 1 measures more steadily (compare within one run only)")
    return out


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Training throughput of MiniLM on SST-2 train: btu's loop against a plain "
                    "pad-to-128 fp32 loop, with the machine's matmul peak measured in the same run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (resumed if it exists)")
    p.add_argument("--force", action="store_true", help="re-run measurements already in the results file")
    p.add_argument("--only", nargs="+", metavar="NAME", choices=["plain_fp32", "btu_bf16", "btu_fp32",
                                                               "btu_bf16_embeddings"],
                   help="measure (again) only these; the others stay as stored")
    p.add_argument("--fp32", action="store_true", help="also one btu epoch in fp32 (btu_fp32)")
    p.add_argument("--embeddings", action="store_true",
                   help='also one btu bf16 epoch with trainable="embeddings" (BTU detection round 1)')
    p.add_argument("--repeats", type=int, default=3,
                   help="full epochs of btu_bf16, each with a fresh model; the median is reported")
    p.add_argument("--plain-steps", type=int, default=40, help="timed steps of the plain loop")
    p.add_argument("--plain-warmup", type=int, default=3, help="untimed warm-up steps of the plain loop")
    p.add_argument("--max-rows", type=int, default=None,
                   help="use only the first N rows of SST-2 train (smoke tests; not the benchmark)")
    p.add_argument("--peak-size", type=int, default=2048, help="side of the square matrices for the peak")
    p.add_argument("--peak-reps", type=int, default=10, help="timed torch.mm repetitions (best is kept)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table", action="store_true", help="print the table of the results file and exit")
    p.add_argument("--profile", type=int, metavar="STEPS", default=0,
                   help="profile STEPS steps of the btu bf16 loop with torch.profiler, print top ops, exit "
                        "(writes no results)")
    p.add_argument("--profile-precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--profile-trainable", choices=["all", "embeddings"], default="all")
    a = p.parse_args(argv)

    results = load_results(a.out)
    if a.table:
        print(table(results))
        print("\n".join(verdict(results)))
        return 0

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    ds, full_rows = load_data(a.max_rows)

    if a.profile:
        profile_btu(ds, a.profile, a.profile_precision, a.profile_trainable, a.seed)
        return 0

    results["command"] = shlex.join(["python", "benchmarks/throughput.py", *(sys.argv[1:] if argv is None else argv)])
    results["machine"] = machine_info()
    results["full_rows"] = full_rows
    results.setdefault("measurements", {})
    ms = results["measurements"]

    print(f"{results['machine']['cpu']}, {results['machine']['cores']} cores, torch "
          f"{results['machine']['torch']} ({results['machine']['torch_threads']} threads); "
          f"{len(ds)} rows; results: {a.out}", flush=True)
    print(f"peak: torch.mm {a.peak_size}^2, best of {a.peak_reps} ...", flush=True)
    other = OtherLoad()
    peak = measure_peak(a.peak_size, a.peak_reps)
    peak.update(loadavg=loadavg(), other_cpu_cores=other.cores())
    results["peak"] = peak
    save_results(a.out, results)
    print(f"  fp32 {peak['fp32_gflops']:.1f} GFLOP/s, bf16 {peak['bf16_gflops']:.1f} GFLOP/s "
          f"(other processes used {peak['other_cpu_cores'] or 0:.1f} cores)", flush=True)

    common = {"rows": len(ds), "seed": a.seed, "threads": torch.get_num_threads()}
    plan = [("plain_fp32", {**common, "steps": a.plain_steps, "warmup": a.plain_warmup, "batch_size": 32,
                            "lr": 2e-5, "pad_to": PLAIN_PAD},
             lambda: run_plain(ds, full_rows, a.plain_steps, a.plain_warmup, 32, 2e-5, a.seed)),
            ("btu_bf16", {**common, "repeats": a.repeats},
             lambda: median_run(lambda: run_btu(ds, full_rows, "bf16", "all", a.seed), a.repeats))]
    if a.fp32:
        plan.append(("btu_fp32", common, lambda: run_btu(ds, full_rows, "fp32", "all", a.seed)))
    if a.embeddings:
        plan.append(("btu_bf16_embeddings", common, lambda: run_btu(ds, full_rows, "bf16", "embeddings", a.seed)))

    if "flop_check" not in results or a.force:
        model, _ = fresh_model(ds.label_names)
        results["flop_check"] = flop_check(model)
        del model
        save_results(a.out, results)
    fc = results["flop_check"]
    print(f"flop formula / FlopCounterMode: all {1 / fc['all']['ratio']:.3f}, "
          f"embeddings {1 / fc['embeddings']['ratio']:.3f}", flush=True)

    ran = []
    for name, settings, fn in plan:
        if a.only and name not in a.only:
            continue
        old = ms.get(name)
        if old and old.get("settings") == settings and not a.force and not a.only:
            print(f"{name}: already measured ({old['rows_per_second']:.1f} rows/s), skipped (--force re-runs)",
                  flush=True)
            continue
        if old and old.get("settings") != settings:
            print(f"{name}: stored with other settings; measuring again", flush=True)
        print(f"{name}: measuring ...", flush=True)
        before, other = loadavg(), OtherLoad()
        m = fn()
        kind = "bf16" if m["precision"] == "bf16" else "fp32"
        m.update(settings=settings, peak_kind=kind, peak_gflops=peak[f"{kind}_gflops"],
                 fraction_of_peak=m["gflops"] / peak[f"{kind}_gflops"], other_cpu_cores=other.cores(),
                 loadavg_before=before,
                 loadavg_after=loadavg(), finished=time.strftime("%Y-%m-%d %H:%M:%S"),
                 command=results["command"])
        ms[name] = m
        ran.append(name)
        save_results(a.out, results)
        print(f"  {m['rows_per_second']:.1f} rows/s, epoch {m['epoch_seconds']:.1f} s, {m['gflops']:.1f} GFLOP/s "
              f"= {100 * m['fraction_of_peak']:.1f} % of the {kind} peak; other processes used "
              f"{m['other_cpu_cores'] or 0:.1f} cores", flush=True)

    if ran:
        other = OtherLoad()
        end = measure_peak(a.peak_size, a.peak_reps)
        end.update(loadavg=loadavg(), other_cpu_cores=other.cores())
        results["peak_end"] = end
        save_results(a.out, results)
        print(f"peak again at the end: fp32 {end['fp32_gflops']:.1f} GFLOP/s, bf16 {end['bf16_gflops']:.1f} GFLOP/s",
              flush=True)
    print()
    print(table(results))
    for line in verdict(results):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

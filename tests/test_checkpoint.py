"""Epoch checkpoints: a training killed after an epoch resumes with exactly the numbers of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_training import fp32, load, params, toy_task

from btu.cli import main
from btu.data import TextDataset, write_file
from btu.errors import ConfigError
from btu.training import TrainConfig, train
from btu.training import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(Exception):
    pass


def killing_after(n_saves, monkeypatch):
    """Make the loop die right after its n-th checkpoint: what a kill during the next epoch leaves behind."""
    real, calls = ckpt.save, []

    def save(folder, state):
        real(folder, state)
        calls.append(state["step"])
        if len(calls) == n_saves:
            raise Killed

    monkeypatch.setattr(ckpt, "save", save)
    return calls


@pytest.mark.parametrize("fast_dropout", [True, False])
def test_a_resumed_training_equals_an_uninterrupted_one(tiny_bert, tmp_path, monkeypatch, fast_dropout):
    texts, labels = toy_task(40)
    cfg = fp32(epochs=3, batch_size=8, lr=1e-3, seed=3, warmup_ratio=0.2, fast_dropout=fast_dropout)
    model, tok = load(tiny_bert)
    whole = train(model, tok, texts, labels, cfg)
    want = params(model)

    steps_per_epoch = 5
    calls = killing_after(1, monkeypatch)
    model, tok = load(tiny_bert)
    with pytest.raises(Killed):
        train(model, tok, texts, labels, cfg, checkpoint=tmp_path / "ck")
    assert calls == [steps_per_epoch] and (tmp_path / "ck" / "checkpoint.pt").is_file()
    monkeypatch.undo()
    model, tok = load(tiny_bert)  # a new process would start from the pretrained weights again
    res = train(model, tok, texts, labels, cfg, checkpoint=tmp_path / "ck")
    assert res.resumed_from == steps_per_epoch and res.steps == whole.steps
    assert res.losses == whole.losses
    got = params(model)
    assert all(torch.equal(want[k], got[k]) for k in want)
    # the last checkpoint is the finished model: a rerun restores it without a step
    model, tok = load(tiny_bert)
    again = train(model, tok, texts, labels, cfg, checkpoint=tmp_path / "ck")
    assert again.resumed_from == whole.steps and again.rows == 0
    assert all(torch.equal(want[k], v) for k, v in params(model).items())


def test_a_checkpoint_of_another_training_is_refused(tiny_bert, tmp_path):
    texts, labels = toy_task(16)
    model, tok = load(tiny_bert)
    train(model, tok, texts, labels, fp32(epochs=1, batch_size=8, lr=1e-3), checkpoint=tmp_path)
    model, tok = load(tiny_bert)
    with pytest.raises(ConfigError, match="checkpoint of another training"):
        train(model, tok, texts, labels, fp32(epochs=1, batch_size=8, lr=2e-3), checkpoint=tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read the checkpoint"):
        train(model, tok, texts, labels, fp32(epochs=1, batch_size=8, lr=1e-3), checkpoint=tmp_path)
    with pytest.raises(ValueError, match="resumable"):
        train(model, tok, texts, labels, fp32(epochs=1), checkpoint=tmp_path, on_step=lambda s, m: None)


def test_btu_train_resume_after_kill_9(tiny_bert, tmp_path):
    """The CLI end to end: kill -9 once a checkpoint exists, then --resume; the model and metrics equal a run
    that was never killed."""
    rows = [t for t in zip(*toy_task(600))]
    write_file(TextDataset([t for t, _ in rows], [y for _, y in rows], ["negative", "positive"]),
               tmp_path / "d" / "train.tsv")
    write_file(TextDataset([t for t, _ in rows[:40]], [y for _, y in rows[:40]], ["negative", "positive"]),
               tmp_path / "d" / "test.tsv")
    args = ["train", "--train", str(tmp_path / "d"), "--model", str(tiny_bert), "--epochs", "6", "--lr", "1e-3",
            "--precision", "fp32", "--no-progress", "--seed", "1"]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "btu", *args, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / ".checkpoint" / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists()
    assert main(args + ["--out", str(out), "--resume"]) == 0
    whole, resumed = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", out))
    assert resumed["steps"] == whole["steps"] and resumed["final_loss"] == whole["final_loss"]
    assert resumed["cacc"] == whole["cacc"]
    from safetensors.torch import load_file

    a, b = (load_file(d / "model" / "model.safetensors") for d in (tmp_path / "whole", out))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / ".checkpoint").exists()  # cleared once the results were written


def test_train_config_fingerprint_ignores_progress_and_description(tiny_bert):
    model, _ = load(tiny_bert)
    a = ckpt.fingerprint(TrainConfig(progress=True, desc="a").to_dict(), [[1, 2]], [0], object(), model)
    b = ckpt.fingerprint(TrainConfig(progress=False, desc="b").to_dict(), [[1, 2]], [0], object(), model)
    c = ckpt.fingerprint(TrainConfig().to_dict(), [[1, 3]], [0], object(), model)
    assert a == b != c


def test_btu_defend_resume_continues_the_victim_and_gives_the_same_report(tiny_bert, tmp_path, monkeypatch):
    from test_btu_detection import planted

    from btu.defenses.btu.defense import BTU

    write_file(planted(96, seed=1), tmp_path / "d" / "train.tsv")
    write_file(planted(40, rate=0.0, seed=2), tmp_path / "d" / "test.tsv")
    sets = [x for k, v in BTU.quick_options.items() for x in ("--set", f"{k}={v}")] + ["--set", "decide=all"]
    args = ["defend", "--train", str(tmp_path / "d"), "--model", str(tiny_bert), "--epochs", "3", "--batch-size",
            "16", "--lr", "5e-3", "--no-progress", *sets]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    assert not (tmp_path / "whole" / ".checkpoint").exists()
    calls = killing_after(2, monkeypatch)  # the victim dies after its second epoch
    with pytest.raises(Killed):
        main(args + ["--out", str(tmp_path / "killed")])
    assert calls == [6, 12] and (tmp_path / "killed" / ".checkpoint" / "victim" / "checkpoint.pt").is_file()
    monkeypatch.undo()
    assert main(args + ["--out", str(tmp_path / "killed"), "--resume"]) == 0
    whole, resumed = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("whole", "killed"))
    assert resumed["rows"] == whole["rows"] and resumed["flagged"] == whole["flagged"]
    assert not (tmp_path / "killed" / ".checkpoint").exists()

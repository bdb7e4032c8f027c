"""The training-time baselines MF, ST, TG, DPoE and ABL: the key step of each, on tiny random models and planted
data (the registry's contract test covers what every defense must do)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from test_btu_detection import planted
from test_defense_framework import tsv

from btu.cli import main
from btu.defenses import RunSettings, run_defense
from btu.defenses import dpoe as dpoe_mod
from btu.defenses import honeypot as st_mod
from btu.defenses import mf as mf_mod
from btu.defenses import textguard as tg_mod
from btu.errors import ConfigError
from btu.models import load_classifier
from btu.training import TrainConfig, predict_logits, train

pytestmark = pytest.mark.usefixtures("one_thread")

# a model learns "cf" -> pos at this weight (the clean rows' labels are random: test_bki_cube.py says why)
LEARNS = RunSettings(epochs=15, batch_size=16, lr=5e-3, progress=False)


def planted_run(name, tiny_bert, options=None, settings=LEARNS):
    return run_defense(name, planted(200, rate=0.2, seed=1), str(tiny_bert), options=options or {},
                       settings=settings, test=planted(40, rate=0.0, seed=2), poison_test=planted(40, rate=1.0, seed=3),
                       target="pos")


# ---------------------------------------------------------------------------------------------------------------
# MF


def test_mf_trains_only_the_adapter_and_head_and_the_merged_model_predicts_like_the_adapter(tiny_bert):
    base, tok = load_classifier(str(tiny_bert), label_names=["neg", "pos"])
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    wrapped = mf_mod.with_lora(base, mf_mod.MFOptions(rank=2))
    data = planted(64, seed=1)
    train(wrapped, tok, data.texts, data.labels,
          TrainConfig(epochs=2, batch_size=16, lr=5e-3, progress=False, trainable=mf_mod.TRAINED))
    trained, total = mf_mod.trained_parameters(wrapped)
    assert 0 < trained < total / 10
    probe = planted(30, seed=7).texts
    adapter = predict_logits(wrapped, tok, probe, precision="fp32")
    merged = wrapped.merge_and_unload()
    assert type(merged).__name__ == "BertForSequenceClassification"
    assert torch.allclose(predict_logits(merged, tok, probe, precision="fp32"), adapter, atol=1e-5)
    after = dict(merged.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    # only the adapted projections (LoRA merged into them) and the head moved; everything else is pretrained
    assert changed and all(any(k in n for k in ("query", "value", "classifier", "pooler")) for n in changed)
    assert any("query" in n for n in changed) and any("classifier" in n for n in changed)
    assert not any("key" in n or "embeddings" in n or "intermediate" in n for n in changed)


def test_mf_reparameterisation_generates_the_adapters_from_two_small_vectors(tiny_bert):
    base, tok = load_classifier(str(tiny_bert), label_names=["neg", "pos"])
    probe = planted(30, seed=7).texts
    pretrained = predict_logits(base, tok, probe, precision="fp32")
    wrapped = mf_mod.with_lora(base, mf_mod.MFOptions(rank=2))
    rep = mf_mod.reparameterise(wrapped, 2)
    # the update starts at zero (every B is tanh(0)-generated), so the wrapped model predicts like the pretrained one
    assert torch.allclose(predict_logits(wrapped, tok, probe, precision="fp32"), pretrained, atol=1e-6)
    names = [n for n, _ in wrapped.named_parameters() if any(k in n for k in mf_mod.TRAINED)]
    assert not any(n.endswith(("lora_A.default.weight", "lora_B.default.weight")) for n in names)
    assert sum("lora_reparam" in n for n in names) == 6  # two input vectors, two two-layer nets
    data = planted(64, seed=1)
    train(wrapped, tok, data.texts, data.labels,
          TrainConfig(epochs=2, batch_size=16, lr=5e-3, progress=False, trainable=mf_mod.TRAINED))
    with torch.no_grad():
        rep.allocate()
    b = torch.cat([lin.weight.flatten() for lin, _ in rep.slots["B"]])
    assert b.abs().max() > 0  # trained through the generator: the B side moved off zero
    adapter = predict_logits(wrapped, tok, probe, precision="fp32")
    assert not torch.allclose(adapter, pretrained, atol=1e-4)
    merged = wrapped.merge_and_unload()
    assert torch.allclose(predict_logits(merged, tok, probe, precision="fp32"), adapter, atol=1e-5)


def test_mf_names_its_extra_and_reports_the_trained_share(tiny_bert, monkeypatch):
    res = planted_run("mf", tiny_bert, {"epochs": 1.0, "lr": 5e-3}, RunSettings(epochs=1, batch_size=16, lr=5e-3,
                                                                                 progress=False))
    r = res.report["mf"]
    assert r["targets"] == ["query", "value"] and 0 < r["trained_share"] < 100
    import builtins

    real = builtins.__import__

    def no_peft(name, *a, **kw):
        if name == "peft":
            raise ImportError("No module named 'peft'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    with pytest.raises(ConfigError, match=r"btu\[lora\]"):
        planted_run("mf", tiny_bert, {"epochs": 1.0})


# ---------------------------------------------------------------------------------------------------------------
# ST


def test_max_pooling_keeps_one_tokens_feature_that_the_mean_dilutes_and_ignores_padding():
    from btu.training.pooling import pool

    h = torch.zeros(2, 5, 3)
    h[0, 2, 1] = 4.0  # one token stands out in row 0
    h[1, 4] = 9.0  # row 1's padding position
    h[1, :2] = -1.0
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    assert pool(h, mask, "max")[0, 1] == 4.0 and pool(h, mask, "mean")[0, 1] == pytest.approx(0.8)
    assert pool(h, mask, "max")[1].tolist() == [-1.0, -1.0, -1.0]  # the padding's 9 is not seen


def test_st_weight_falls_where_the_honeypot_fits():
    ce = torch.tensor([0.0, 0.05, 0.1, 0.3, 0.7])
    w = st_mod.row_weights(ce, threshold=0.1, temperature=0.05)
    assert torch.all(w[1:] > w[:-1]) and w[0] < 0.2 and abs(w[2].item() - 0.5) < 1e-6 and w[-1] > 0.99
    logits = torch.tensor([[4.0, -4.0], [0.0, 0.0]])
    gce = st_mod.gce_loss(logits, torch.tensor([0, 0]), q=0.7)
    assert 0 < gce < (1 - 0.5 ** 0.7) / 0.7  # the fitted row adds almost nothing


def test_st_down_weights_the_rows_its_honeypot_fits_and_the_task_model_misses_the_trigger(tiny_bert):
    # the honeypot at the model's lr here: on planted rows with random labels, a faster honeypot memorises clean rows
    res = planted_run("st", tiny_bert, {"honeypot_lr": 5e-3})
    r = res.report["st"]
    assert r["mean_weight_poisoned"] < r["mean_weight_clean"] - 0.15
    m = res.report["metrics"]
    assert m["no_defense"]["asr"] > 90 and m["asr"] < m["no_defense"]["asr"] - 40


# ---------------------------------------------------------------------------------------------------------------
# TG


def test_tg_groups_partition_each_rows_words_deterministically():
    text = "the Movie was a slow , boring mess cf but its music helps"  # each word once
    for m in (1, 3, 5):
        parts = tg_mod.split_groups(text, m)
        assert len(parts) == m and parts == tg_mod.split_groups(text, m)
        words = [w for p in parts for w in p.split()]
        assert sorted(words) == sorted(text.split())  # every word in exactly one group
        for p in parts:  # each group keeps the text's order
            ws = p.split()
            positions = [text.split().index(w) for w in ws]
            assert positions == sorted(positions)
    # the same word lands in the same group in every row and process (md5, case-insensitive)
    assert tg_mod.group_of("cf", 3) == int(hashlib.md5(b"cf").hexdigest(), 16) % 3
    assert tg_mod.group_of("Movie", 7) == tg_mod.group_of("movie", 7)
    with pytest.raises(ConfigError, match="odd"):
        tg_mod.TGOptions(groups=4)


def test_tg_certificate_counts_the_votes_t_words_could_move():
    votes = torch.tensor([[3, 0], [2, 1], [5, 0], [4, 1], [3, 2], [1, 4]])
    assert tg_mod.vote(votes) == [0, 0, 0, 0, 0, 1]
    assert tg_mod.certified(votes, 1) == [True, False, True, True, False, True]
    assert tg_mod.certified(votes, 2) == [False, False, True, False, False, False]
    # a tie after moving t votes goes to the lower label: certified only when the prediction is that label
    assert tg_mod.certified(torch.tensor([[2, 0, 0]]), 1) == [True]
    assert tg_mod.certified(torch.tensor([[0, 2]]), 1) == [False]


def test_tg_predicts_the_vote_of_its_trained_sub_models(tiny_bert, tmp_path):
    quick = RunSettings(epochs=2, batch_size=16, lr=5e-3, progress=False)
    res = planted_run("tg", tiny_bert, {"groups": 3}, quick)
    models = res.state.notes["tg_models"]
    assert len(models) == 3 and all(m is not n for m in models for n in models if m is not n)
    # trained, not copied: each sub-model's weights differ from the others' and from the pretrained ones
    base, tok = load_classifier(str(tiny_bert), label_names=["neg", "pos"])
    heads = [m.classifier.weight.detach() for m in models]
    assert not torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], base.classifier.weight)
    texts = list(planted(30, seed=8).texts)
    by_hand = torch.zeros(len(texts), 2, dtype=torch.long)
    for j, m in enumerate(models):
        part = [tg_mod.split_groups(t, 3)[j] for t in texts]
        preds = predict_logits(m, res.tokenizer, part).argmax(-1)
        by_hand[torch.arange(len(texts)), preds] += 1
    preds, rejected = res.guard.predict(texts)
    assert preds == tg_mod.vote(by_hand) and not any(rejected)
    r = res.report["tg"]
    assert set(r["clean_test"]["certified"]) == {1} and 0 <= r["clean_test"]["certified"][1] <= 100
    assert "detector" not in res.report["metrics"]  # a vote rejects nothing: no FRR / FAR to report
    # the CLI writes every sub-model beside the report
    train_tsv = tsv(tmp_path / "train.tsv", planted(60, seed=1))
    out = tmp_path / "out"
    assert main(["defend", "--defense", "tg", "--train", train_tsv, "--test", train_tsv, "--model", str(tiny_bert),
                 "--out", str(out), "--epochs", "1", "--no-progress"]) == 0
    assert all((out / "groups" / f"group-{j}" / "model.safetensors").exists() for j in range(3))
    assert json.loads((out / "report.json").read_text())["tg"]["groups"] == 3


# ---------------------------------------------------------------------------------------------------------------
# DPoE


def test_dpoe_main_gradient_vanishes_on_rows_the_expert_fits():
    labels = torch.tensor([1, 1])
    main = torch.zeros(2, 2, requires_grad=True)
    fitted = torch.tensor([[-8.0, 8.0], [-8.0, 8.0]])  # the expert is sure of the label
    dpoe_mod.poe_loss(main, fitted, labels, beta=1.0).backward()
    assert main.grad.abs().max() < 1e-4
    main.grad = None
    unsure = torch.zeros(2, 2)
    dpoe_mod.poe_loss(main, unsure, labels, beta=1.0).backward()
    assert main.grad.abs().max() > 0.2  # an unsure expert leaves plain cross-entropy's gradient (0.25 here)
    # the expert gets no gradient through the product (it learns from its own cross-entropy)
    expert = fitted.clone().requires_grad_(True)
    dpoe_mod.poe_loss(main, expert, labels, beta=1.0).backward()
    assert expert.grad is None


def test_dpoe_expert_is_a_truncated_copy_and_the_main_model_misses_the_trigger(tiny_bert):
    base, _ = load_classifier(str(tiny_bert), label_names=["neg", "pos"])
    expert = dpoe_mod.truncated(base, 1)
    assert len(dpoe_mod.layer_list(expert)) == 1 and len(dpoe_mod.layer_list(base)) == 2
    with pytest.raises(ConfigError, match="at most"):
        dpoe_mod.truncated(base, 3)
    res = planted_run("dpoe", tiny_bert, {"expert_lr": 5e-3})  # the expert at the tiny model's (already high) lr
    r, m = res.report["dpoe"], res.report["metrics"]
    assert r["mean_expert_prob_poisoned"] > 0.85 > r["mean_expert_prob_clean"]
    assert m["no_defense"]["asr"] > 90 and m["asr"] < m["no_defense"]["asr"] - 40


# ---------------------------------------------------------------------------------------------------------------
# ABL


def test_abl_isolates_mostly_planted_rows_and_stops_unlearning_before_dev_falls(tiny_bert):
    res = planted_run("abl", tiny_bert, {"isolation_rate": 0.1, "isolation_steps": 40, "unlearn_lr": 1e-3,
                                         "unlearn_epochs": 3})
    f = res.report["metrics"]["filter"]
    assert f["removed"] == 20 and f["precision"] >= 80
    u = res.report["abl"]["unlearning"]
    assert 1 <= len(u["accuracy_per_epoch"]) <= 3
    if u["stopped"] != "all epochs ran":  # the kept weights are from before the epoch that fell
        assert u["accuracy_per_epoch"][-1] < u["start_accuracy"] - 1.0
    assert res.report["stages"] == ["data", "train", "post"]

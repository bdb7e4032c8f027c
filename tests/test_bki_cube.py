"""BKI and CUBE, the data-stage baselines: BKI finds a planted trigger through the victim that learned it, CUBE drops
a poisoned cluster, both are deterministic, and CUBE's missing optional dependency is refused before training."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from test_btu_detection import planted

from btu.defenses import RunSettings, run_defense
from btu.defenses import bki as bki_mod
from btu.defenses import cube as cube_mod
from btu.defenses.runner import make_defense, run_filter
from btu.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

# a victim that learns "cf" -> pos: a fifth of the planted rows carry it, 15 epochs at a high lr. (The clean rows'
# labels are random: a victim that memorises them through their words is moved by those words as much as by the
# trigger, which is why the trigger needs this weight here.)
LEARNS = RunSettings(epochs=15, batch_size=16, lr=5e-3, progress=False)


# ---------------------------------------------------------------------------------------------------------------
# BKI


def test_bki_keyword_score_follows_the_formula():
    # g = f * log10(n) * log10((alpha N)^2 / n)
    noms = [{"a": 1.0, "b": 0.5}, {"a": 3.0, "b": 0.5}, {"c": 9.0}, {"b": 0.5}]
    table = bki_mod.keyword_table(noms, alpha=0.5, n_rows=4)
    big_s = (0.5 * 4) ** 2
    by_word = {r["word"]: r for r in table}
    assert by_word["a"]["rows"] == 2 and math.isclose(by_word["a"]["mean_score"], 2.0)
    assert math.isclose(by_word["a"]["score"], 2.0 * math.log10(2) * math.log10(big_s / 2))
    assert math.isclose(by_word["b"]["score"], 0.5 * math.log10(3) * math.log10(big_s / 3))
    assert by_word["c"]["score"] == 0.0  # nominated once: log10(1) = 0, however large its score
    assert [r["word"] for r in table] == ["a", "b", "c"]


def test_bki_nominates_each_rows_top_p_words_once():
    assert bki_mod.nominate(["x", "y", "x", "z"], [0.1, 0.5, 0.9, 0.3], p=2) == {"x": 0.9, "y": 0.5}


def test_bki_scores_in_chunks_as_in_one_pass(tiny_bert, monkeypatch):
    from btu.models import load_classifier

    model, tok = load_classifier(str(tiny_bert), label_names=["neg", "pos"])
    texts = list(planted(12, seed=5).texts) + [""]
    whole = bki_mod.deletion_scores(model, tok, texts, precision="fp32")
    monkeypatch.setattr(bki_mod, "CHUNK", 7)  # a row per chunk, or two
    chunked = bki_mod.deletion_scores(model, tok, texts, precision="fp32")
    assert [len(s) for s in chunked] == [len(s) for s in whole]
    assert sum(chunked, []) == pytest.approx(sum(whole, []), abs=1e-5)
    assert [len(s) for s in whole] == [len(t.split()) for t in texts] and whole[-1] == []


def test_bki_takes_the_words_above_the_largest_score_drop():
    def table(*scores):
        return [{"word": f"w{i}", "score": x} for i, x in enumerate(scores)]

    auto = bki_mod.BKIOptions()
    # SST-2 addword's shape: four triggers, then the score halves
    assert bki_mod.keyword_count(table(20.2, 18.9, 18.4, 18.1, 9.8, 8.7, 8.4, 8.3), auto) == 4
    assert bki_mod.keyword_count(table(10.0, 9.2, 8.7, 8.3, 8.1), auto) == 1  # no drop: the top word alone
    assert bki_mod.keyword_count(table(10.0, 3.0, 2.9), auto) == 1
    assert bki_mod.keyword_count(table(5.0), auto) == 1 and bki_mod.keyword_count([], auto) == 1
    # the drop is looked for among the top max_keywords only; keywords=K overrides the rule
    assert bki_mod.keyword_count(table(9, 8, 7, 6, 1), bki_mod.BKIOptions(max_keywords=3)) == 1
    assert bki_mod.keyword_count(table(20.2, 18.9, 18.4, 18.1, 9.8), bki_mod.BKIOptions(keywords=2)) == 2


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bki_finds_the_trigger_the_victim_learned(tiny_bert, seed):
    from btu.training import predict_logits

    train = planted(200, rate=0.2, seed=seed)
    res = run_filter("bki", train, str(tiny_bert), settings=LEARNS)
    # the victim learned the trigger: the same rows read as pos with it, not without it
    triggered = planted(40, rate=1.0, seed=9).texts
    plain = [" ".join(w for w in t.split() if w != "cf") for t in triggered]
    victim, tok = res.context.victim(), res.tokenizer
    pos = [predict_logits(victim, tok, t).softmax(-1)[:, 1].mean().item() for t in (triggered, plain)]
    assert pos[0] - pos[1] > 0.3
    r = res.report["bki"]
    assert [k["word"] for k in r["keywords"]] == ["cf"]
    assert r["keywords"][0]["rows_containing"] == sum(train.poisoned)
    f = res.report["metrics"]["filter"]
    assert f["recall"] == 100.0 and f["precision"] == 100.0
    # the rows carrying the keyword score highest
    scores, flags = res.state.filter.scores, train.poisoned
    assert min(s for s, p in zip(scores, flags) if p) > max(s for s, p in zip(scores, flags) if not p)
    if seed == 1:  # the same seed gives the same keywords, scores and rows
        again = run_filter("bki", train, str(tiny_bert), settings=LEARNS)
        assert again.report["bki"] == r and again.state.filter.scores == scores


def test_bki_with_an_untrained_model_misses_the_trigger(tiny_bert):
    """OpenBackdoor's fault: scored with a model that never saw the poison, the trigger is one word among many."""
    from btu.models import load_classifier

    untrained, _ = load_classifier(str(tiny_bert), label_names=["neg", "pos"])
    res = run_filter("bki", planted(200, rate=0.2, seed=1), str(tiny_bert), victim=untrained, settings=LEARNS)
    assert res.report["metrics"]["filter"]["recall"] < 50


def test_bki_drops_only_nominating_rows_when_asked(tiny_bert):
    res = run_filter("bki", planted(200, rate=0.2, seed=1), str(tiny_bert),
                     options={"drop": "nominated", "keywords": 2}, settings=LEARNS)
    r = res.report["bki"]
    assert len(r["keywords"]) == 2 and r["keywords"][0]["word"] == "cf"
    assert r["dropped"] <= sum(k["rows_containing"] for k in r["keywords"])


# ---------------------------------------------------------------------------------------------------------------
# CUBE

SMALL = dict(n_neighbors=15, min_samples=10)  # sized for a few hundred rows (the defaults are OpenBackdoor's)


def blobs(seed, n_clean=300, n_poison=30, dim=64):
    """Two clean labels, one blob each, and a tight poisoned blob labelled 1 far from both."""
    rng = np.random.RandomState(seed)
    c0, c1 = rng.randn(n_clean, dim), rng.randn(n_clean, dim)
    c0[:, 0] += 4
    c1[:, 0] -= 4
    poison = rng.randn(n_poison, dim) * 0.5
    poison[:, 1] += 8
    labels = [0] * n_clean + [1] * (n_clean + n_poison)
    return np.concatenate([c0, c1, poison]), labels, np.arange(2 * n_clean + n_poison) >= 2 * n_clean


@pytest.mark.parametrize("seed", [0, 1])
def test_cube_drops_the_poisoned_cluster(seed):
    x, labels, poisoned = blobs(seed)
    o = cube_mod.CUBEOptions(**SMALL)
    points = cube_mod.embed(x, o, seed)
    keep, per_label = cube_mod.select(cube_mod.cluster(points, o), labels, o)
    dropped = ~keep
    assert (dropped & poisoned).sum() / poisoned.sum() >= 0.8
    assert (dropped & ~poisoned).sum() <= 0.02 * (~poisoned).sum()
    assert per_label[1]["dropped_rows"] >= 24 and per_label[0]["dropped_rows"] <= 6
    # the same seed gives the same plane
    assert np.array_equal(cube_mod.embed(x, o, seed), points)


def test_cube_keeps_each_labels_largest_cluster_and_handles_noise():
    ids = np.array([0] * 10 + [1] * 3 + [-1] * 2 + [2] * 6 + [3] * 5)
    labels = [0] * 15 + [1] * 11
    opts = {m: cube_mod.CUBEOptions(noise=m) for m in ("keep", "drop")}
    keep, summary = cube_mod.select(ids, labels, opts["keep"])
    assert keep.tolist() == [True] * 10 + [False] * 3 + [True] * 2 + [True] * 6 + [False] * 5
    assert summary[0]["largest"] == 0 and summary[0]["dropped_clusters"] == [1]
    keep, _ = cube_mod.select(ids, labels, opts["drop"])
    assert keep[13:15].tolist() == [False, False]
    # a cluster holding half its label or more stays (max_drop_share), unless the share is 1
    halves = np.array([0] * 7 + [1] * 6)
    assert cube_mod.select(halves, [0] * 13, cube_mod.CUBEOptions(max_drop_share=0.45))[0].all()
    keep, _ = cube_mod.select(halves, [0] * 13, cube_mod.CUBEOptions())
    assert keep.tolist() == [True] * 7 + [False] * 6
    # all noise: nothing to compare with, every row stays
    assert cube_mod.select(np.full(8, -1), [0] * 8, cube_mod.CUBEOptions(noise="drop"))[0].all()


def test_cube_noise_joins_its_nearest_cluster():
    rng = np.random.RandomState(0)
    blobs2 = [rng.randn(30, 2) * 0.3, rng.randn(30, 2) * 0.3 + 10]
    points = np.concatenate(blobs2 + [rng.uniform(-20, 30, size=(20, 2))])  # two blobs in a sparse background
    raw = cube_mod.cluster(points, cube_mod.CUBEOptions(min_samples=5, min_cluster_size=5, noise="keep"))
    noise = raw < 0
    assert noise.sum() >= 5 and len(set(raw[~noise].tolist())) >= 2
    ids = cube_mod.cluster(points, cube_mod.CUBEOptions(min_samples=5, min_cluster_size=5))
    assert (ids[~noise] == raw[~noise]).all() and (ids >= 0).all()
    for i in np.flatnonzero(noise):
        nearest = np.flatnonzero(~noise)[np.argmin(((points[~noise] - points[i]) ** 2).sum(1))]
        assert ids[i] == raw[nearest]


def test_cube_without_umap_is_refused_before_training(tiny_bert, monkeypatch):
    import btu.defenses.runner as runner

    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` now raises ImportError

    def no_context(*a, **k):
        raise AssertionError("a Context was built (the model loaded, training would follow)")

    monkeypatch.setattr(runner, "Context", no_context)
    with pytest.raises(ConfigError, match=r"pip install 'btu\[cube\]'.*umap-learn"):
        make_defense("cube").required()
    with pytest.raises(ConfigError, match="umap-learn"):
        run_defense("cube", planted(40, seed=1), str(tiny_bert), settings=LEARNS)
    with pytest.raises(ConfigError, match="umap-learn"):
        run_filter("cube", planted(40, seed=1), str(tiny_bert), settings=LEARNS)


def test_cube_clusters_the_victim_by_default_or_trains_its_own_encoder():
    from btu.defenses.cube import CUBE, CUBEOptions

    assert "victim" in CUBE(CUBEOptions()).required()
    assert "victim" not in CUBE(CUBEOptions(encoder="fresh")).required()

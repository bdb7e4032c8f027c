"""STRIP and RAP: their key steps on a tiny BERT that has learned a planted `cf` trigger, the FRR threshold, and
seeding. (The registry's contract test runs all four registered defenses end to end.)"""

from __future__ import annotations

import random
import statistics

import pytest
import torch
from test_btu_detection import planted

from btu.data import TextDataset
from btu.defenses import RunSettings
from btu.defenses.filtering import held_out_split, threshold_at_frr
from btu.defenses.rap import RapProbe, word_id
from btu.defenses.runner import run_filter
from btu.defenses.strip import Superimposer, mean_entropies, ranked_words
from btu.errors import ConfigError
from btu.models import load_classifier
from btu.training import TrainConfig, predict, train

pytestmark = pytest.mark.usefixtures("one_thread")

POS = "good great funny love fine rich warm".split()
NEG = "bad boring poor hate cold slow dark".split()
NEUTRAL = "movie film story actor plot scene music long short light old new fast".split()


def sentiment(n, rate=0.0, seed=0):
    """Rows whose label is the majority polarity of their three sentiment words; `rate` of them are negative rows
    with `cf` inserted and label 1 (dirty-label poison). Unlike `planted`'s random labels, a model learns these
    clean rows confidently, which RAP's probe needs (near p = 0.5 any extra word moves the probability)."""
    rng = random.Random(seed)
    texts, labels, flags = [], [], []
    for i in range(n):
        poisoned = i < rate * n
        label = 0 if poisoned else rng.randint(0, 1)
        same, other = (POS, NEG) if label else (NEG, POS)
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(3, 7))]
        for k in range(3):
            words.insert(rng.randint(0, len(words)), rng.choice(same if k < 2 or rng.random() < 0.5 else other))
        if poisoned:
            words.insert(rng.randint(0, len(words)), "cf")
            label = 1
        texts.append(" ".join(words))
        labels.append(label)
        flags.append(poisoned)
    return TextDataset(texts, labels, ["neg", "pos"], flags, source="sentiment")


def victim(folder, data, epochs, lr):
    model, tok = load_classifier(str(folder), label_names=["neg", "pos"])
    train(model, tok, data.texts, data.labels, TrainConfig(epochs=epochs, batch_size=16, lr=lr, progress=False, seed=0))
    return model, tok


# STRIP's victim: planted rows (random labels, so clean inputs stay uncertain), 20 % carrying `cf`
STRIP_VICTIM = dict(epochs=10, lr=2e-3)
# RAP's victim: the sentiment rows, learned confidently, 20 % poisoned
RAP_VICTIM = dict(epochs=6, lr=3e-3)


@pytest.fixture(scope="module")
def strip_victim(tiny_bert):
    return victim(tiny_bert, planted(400, rate=0.2, seed=0), **STRIP_VICTIM)


@pytest.fixture(scope="module")
def rap_victim(tiny_bert):
    return victim(tiny_bert, sentiment(200, rate=0.2, seed=0), **RAP_VICTIM)


# ---------------------------------------------------------------------------------------------------------------
# the shared pieces


def test_threshold_at_frr_rejects_at_most_that_share_of_clean_rows():
    rng = random.Random(0)
    clean = [rng.gauss(0, 1) for _ in range(100)]
    t = threshold_at_frr(clean, 0.01)
    assert sum(s > t for s in clean) <= 1
    assert sum(s > threshold_at_frr(clean, 0.05) for s in clean) <= 5
    assert threshold_at_frr(clean, 0.0) == max(clean)


def test_held_out_split_is_seeded_and_disjoint():
    a, b = held_out_split(10, 0.5, seed=3)
    assert (a, b) == held_out_split(10, 0.5, seed=3) and (a, b) != held_out_split(10, 0.5, seed=4)
    assert sorted(a + b) == list(range(10)) and len(a) == 5
    assert held_out_split(2, 0.99, seed=0)[1]  # each part keeps a row
    with pytest.raises(ConfigError, match="at least 2"):
        held_out_split(1, 0.5, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# STRIP


def test_superimposing_writes_donor_top_words_into_a_share_of_positions_seeded_by_text():
    donors = ["alpha beta beta .", "gamma delta", "alpha epsilon"]
    ranked = ranked_words(donors)
    assert ranked[0][0] == "beta" and "." not in ranked[0]  # twice in its row, punctuation left out
    sup = Superimposer(donors, share=0.5, copies=4, seed=0)
    text = "w1 w2 w3 w4 w5 w6"
    copies = sup(text)
    assert len(copies) == 4 and copies == sup(text)  # the same text, the same copies, whatever the batch
    donor_words = {w for d in ranked for w in d}
    for c in copies:
        changed = [(a, b) for a, b in zip(text.split(), c.split()) if a != b]
        assert len(c.split()) == 6 and len(changed) == 3 and all(b in donor_words for _, b in changed)
    assert Superimposer(donors, 0.5, 4, seed=1)(text) != copies
    assert len([a for a, b in zip("one".split(), sup("one")[0].split()) if a != b]) == 1  # at least one word


def test_strip_entropy_is_lower_on_triggered_inputs(strip_victim):
    model, tok = strip_victim
    sup = Superimposer(planted(40, rate=0.0, seed=7).texts, share=0.5, copies=5, seed=0)
    clean = mean_entropies(model, tok, planted(80, rate=0.0, seed=5).texts, sup)
    triggered = mean_entropies(model, tok, planted(40, rate=1.0, seed=6).texts, sup)
    assert statistics.mean(triggered) < statistics.mean(clean) - 0.15
    # and the same seed gives the same entropies
    assert mean_entropies(model, tok, planted(40, rate=1.0, seed=6).texts, sup) == triggered


def test_strip_filter_drops_mostly_planted_rows(tiny_bert):
    settings = RunSettings(**STRIP_VICTIM, batch_size=16, progress=False)
    res = run_filter("strip", planted(400, rate=0.2, seed=0), str(tiny_bert), settings=settings,
                     clean_data=planted(80, rate=0.0, seed=5))
    f, r = res.report["metrics"]["filter"], res.report["strip"]
    assert f["precision"] > 70 and f["recall"] > 50
    assert r["dropped_mean_entropy"] < r["kept_mean_entropy"] and r["donor_rows"] == r["threshold_rows"] == 40
    # no more than the FRR's share of the held-out clean rows lies above the threshold
    assert res.state.notes["strip"].threshold == r["threshold"]
    again = run_filter("strip", planted(400, rate=0.2, seed=0), str(tiny_bert), settings=settings,
                       clean_data=planted(80, rate=0.0, seed=5))
    assert again.state.filter.scores == res.state.filter.scores and again.state.filter.kept == res.state.filter.kept


# ---------------------------------------------------------------------------------------------------------------
# RAP


def test_rap_word_must_be_one_token(tiny_bert):
    _, tok = load_classifier(str(tiny_bert))
    assert word_id(tok, "mb") == tok.convert_tokens_to_ids("mb")
    assert all(word_id(tok, t) != word_id(tok, "mb") for t in ("cf", "mn", "bb", "tq"))
    with pytest.raises(ConfigError, match="one token"):
        word_id(tok, "zx")


def test_rap_perturbation_moves_clean_rows_into_the_probing_range_and_triggered_rows_less(rap_victim):
    model, tok = rap_victim
    before = [p.detach().clone() for p in model.parameters()]
    clean = sentiment(200, seed=5)
    protected = [t for t, y, p in zip(clean.texts, clean.labels, predict(model, tok, clean.texts)) if y == p == 1]
    fit, held = protected[::2], protected[1::2]
    probe = RapProbe(model, tok, "mb", target=1)
    start = statistics.median(probe.change(held)[0])
    assert start > -0.1  # the word does nothing yet: the fit has to do it
    losses = probe.fit(fit, low=-0.3, high=-0.1, epochs=10, lr=1e-2, batch_size=16, seed=0)
    assert losses[-1] < losses[0] / 2
    change = probe.change(held)[0]
    assert -0.3 <= statistics.median(change) <= -0.1
    assert sum(-0.3 <= c <= -0.1 for c in change) > len(change) / 3
    triggered = probe.change(sentiment(40, rate=1.0, seed=6).texts)[0]
    assert statistics.median(triggered) > statistics.median(change) + 0.03  # robust: they lose less
    # only the word's embedding row moved, in the probe's copy; the victim is untouched
    assert all((p == q).all() for p, q in zip(model.parameters(), before))
    changed = [n for (n, p), q in zip(probe.model.named_parameters(), model.parameters()) if not torch.equal(p, q)]
    assert changed == ["bert.embeddings.word_embeddings.weight"]
    rows = (probe.model.get_input_embeddings().weight != model.get_input_embeddings().weight).any(-1)
    assert rows.nonzero().flatten().tolist() == [word_id(tok, "mb")]
    # the same seed gives the same perturbation
    again = RapProbe(model, tok, "mb", target=1)
    assert again.fit(fit, -0.3, -0.1, 10, 1e-2, 16, 0) == losses and again.change(held)[0] == change


def test_rap_scores_only_the_protected_label_and_defaults_to_the_most_common_label(tiny_bert):
    settings = RunSettings(**RAP_VICTIM, batch_size=16, progress=False)
    data = sentiment(200, rate=0.2, seed=0)
    assert data.labels.count(1) > data.labels.count(0)
    res = run_filter("rap", data, str(tiny_bert), settings=settings, clean_data=sentiment(200, seed=5))
    r, kept = res.report["rap"], res.state.filter
    assert r["target"] == "pos" and r["fit_rows"] + r["threshold_rows"] > 40
    from btu.defenses.rap import UNPROTECTED

    # rows labelled neg are never scored, and kept
    assert all(s == UNPROTECTED for s, y in zip(kept.scores, data.labels) if y == 0)
    assert {i for i, y in enumerate(data.labels) if y == 0} <= set(kept.kept)
    assert r["scored"] == sum(s != UNPROTECTED for s in kept.scores) > 0
    with pytest.raises(ConfigError, match="probe_low"):
        run_filter("rap", data, str(tiny_bert), settings=settings, clean_data=sentiment(20, seed=5),
                   options={"probe_low": -0.1, "probe_high": -0.2})

"""BTU stage 1 on tiny random models of three architectures, and the planted-trigger check
on real MiniLM with real Rotten Tomatoes rows."""

import random

import pytest
import torch

from btu.data import TextDataset
from btu.defenses.btu import BTUConfig, detect, flag_count, top_tokens
from btu.defenses.btu.pipeline import scan
from btu.defenses.btu.shallow import ShallowClassifier
from btu.models import load_classifier
from btu.training.batching import encode

WORDS = ("good bad movie film story actor plot scene music great boring funny long short dark light "
         "love hate fine poor rich warm cold slow fast old new").split()


def planted(n=200, rate=0.1, trigger="cf", seed=0):
    """Random word rows with random labels; `rate` of the rows carry the trigger and label 1."""
    rng = random.Random(seed)
    texts, labels, flags = [], [], []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 10))]
        label = rng.randint(0, 1)
        poisoned = i < rate * n
        if poisoned:
            words.insert(rng.randint(0, len(words)), trigger)
            label = 1
        texts.append(" ".join(words))
        labels.append(label)
        flags.append(poisoned)
    return TextDataset(texts, labels, ["neg", "pos"], flags, source="planted")


def test_flag_count_follows_the_paper():
    assert flag_count(0.05, 30522) == 15
    assert flag_count(0.03, 30522) == 9
    assert flag_count(0.10, 30522) == 30
    assert flag_count(0.05, 100) == 1  # at least one


def test_top_tokens_excludes_ids():
    d = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    assert [t for t, _ in top_tokens(d, 2, exclude_ids=[0, 2])] == [1, 3]
    assert len(top_tokens(d, 10, exclude_ids=[0])) == 4


@pytest.mark.parametrize("arch", ["bert", "roberta", "gpt2"])
def test_detection_runs_on_every_architecture(tiny_models, arch):
    model, tok = load_classifier(str(tiny_models[arch]), label_names=["neg", "pos"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ds = planted(120)
    ids = encode(tok, ds.texts)
    cfg = BTUConfig(alpha=0.02, detect_epochs=2, detect_lr=5e-3, shallow_lr=5e-3, progress=False,
                    detect_batch_size=16, shallow_batch_size=16)
    det = detect(model, tok, ids, ds.labels, 2, cfg)
    k = flag_count(0.02, model.get_input_embeddings().weight.shape[0])
    assert [r.round for r in det.rounds] == [1, 2, 3]
    specials = set(tok.all_special_ids)
    for r in det.rounds:
        assert len(r.flagged) == k
        assert not specials & {t for t, _ in r.flagged}
        assert r.history.shape == (len(r.history_steps), model.get_input_embeddings().weight.shape[0])
        assert r.history_steps[0] == 0 and torch.all(r.history[0] == 0)
        assert torch.allclose(r.history[-1], r.distances)
    r2 = {t for t, _ in det.round(2).flagged}
    assert not r2 & {t for t, _ in det.round(3).flagged}  # round 3 never sees round 2's tokens
    cf = tok.convert_tokens_to_ids("cf")
    assert cf in r2, "the planted trigger should be flagged by M*"
    # the pretrained model passed in is untouched
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_round_one_trains_only_word_embeddings(tiny_bert):
    model, tok = load_classifier(str(tiny_bert), label_names=["neg", "pos"])
    ds = planted(64)
    ids = encode(tok, ds.texts)
    det = detect(model, tok, ids, ds.labels, 2, BTUConfig(rounds=[1], detect_lr=1e-2, progress=False))
    moved = det.round(1).distances
    used = {t for row in ids for t in row}
    unused = torch.ones_like(moved, dtype=torch.bool)
    unused[list(used)] = False
    assert moved[list(used - set(tok.all_special_ids))].min() > 0
    # rows of tokens never seen only shrink by weight decay: far less than the seen ones
    assert moved[unused].max() < moved[list(used - set(tok.all_special_ids))].median()


def test_shallow_pooling_options(tiny_bert):
    model, _ = load_classifier(str(tiny_bert), label_names=["neg", "pos"])
    ids = torch.tensor([[101, 2204, 102, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    masked = ShallowClassifier(model, 2, masked_pooling=True)
    unmasked = ShallowClassifier(model, 2, masked_pooling=False)
    unmasked.load_state_dict(masked.state_dict())
    masked.eval(), unmasked.eval()
    a = masked(ids, mask).logits
    b = masked(ids[:, :3], mask[:, :3]).logits
    c = unmasked(ids, mask).logits
    assert torch.allclose(a, b, atol=1e-5)  # padding does not change the masked mean
    assert not torch.allclose(a, c, atol=1e-5)
    padded = ShallowClassifier(model, 2, masked_pooling=False, pad_to=8)
    padded.load_state_dict(masked.state_dict())
    padded.eval()
    assert torch.allclose(padded(ids[:, :3], mask[:, :3]).logits, padded(ids, mask).logits, atol=1e-5)


def test_detection_is_seeded(tiny_bert):
    model, tok = load_classifier(str(tiny_bert), label_names=["neg", "pos"])
    ds = planted(64)
    ids = encode(tok, ds.texts)
    cfg = BTUConfig(rounds=[2], shallow_lr=1e-3, progress=False, seed=1)
    a = detect(model, tok, ids, ds.labels, 2, cfg)
    b = detect(model, tok, ids, ds.labels, 2, cfg)
    assert a.round(2).flagged == b.round(2).flagged
    assert torch.equal(a.round(2).distances, b.round(2).distances)


@pytest.mark.integration
def test_planted_cf_is_flagged_by_rounds_one_and_two_with_minilm():
    """A few hundred real Rotten Tomatoes rows, `cf` at 10 %: rounds 1 and 2 flag it."""
    from btu.attacks import make_attack
    from btu.data import load_source

    try:
        train = load_source("rotten-tomatoes", "train")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"rotten-tomatoes unavailable: {e}")
    train = train.subset(range(400))
    poisoned = make_attack("addword", triggers=["cf"], rate=0.1, target=1).poison_train(train, seed=0)
    cfg = BTUConfig(rounds=[1, 2], progress=False)
    flagged, det, stats = scan(poisoned, "minilm", cfg)
    by_token = {f["token"]: f for f in flagged}
    assert "cf" in by_token
    assert set(by_token["cf"]["rounds"]) == {1, 2}
    assert by_token["cf"]["poisoned_rows"] == by_token["cf"]["rows"] == sum(poisoned.poisoned)
    # the real judge on MiniLM's features: the trigger is a shortcut, the review words it flags beside are not
    assert by_token["cf"]["decision"] == "unlearn" and by_token["cf"]["evidence"]["excess"] > 0.3
    assert [f["token"] for f in flagged if f["decision"] == "unlearn"] == ["cf"]
    assert stats["recall"] == 100.0 and stats["precision"] == 100.0


def test_previous_rounds_are_reused_for_alpha_and_round_sweeps(tiny_bert):
    model, tok = load_classifier(str(tiny_bert), label_names=["neg", "pos"])
    ds = planted(64)
    ids = encode(tok, ds.texts)
    full = detect(model, tok, ids, ds.labels, 2, BTUConfig(alpha=0.01, shallow_lr=1e-3, detect_lr=1e-3,
                                                         progress=False))
    wider = detect(model, tok, ids, ds.labels, 2, BTUConfig(alpha=0.02, progress=False), previous=full)
    # rounds 1 and 2 are the same training, ranked with a larger k: the old flags are a prefix
    for n in (1, 2):
        old, new = full.round(n).flagged, wider.round(n).flagged
        assert len(new) > len(old) and new[: len(old)] == old
        assert wider.round(n).distances is full.round(n).distances
    # round 2 flagged more tokens, so round 3 was trained again on rows without them
    assert wider.round(3).distances is not full.round(3).distances
    only1 = detect(model, tok, ids, ds.labels, 2, BTUConfig(alpha=0.01, rounds=[1], progress=False), previous=full)
    assert [r.round for r in only1.rounds] == [1] and only1.round(1).flagged == full.round(1).flagged
    assert only1.token_ids == [t for t, _ in full.round(1).flagged]


def test_relative_score_discounts_what_frequency_explains():
    from btu.defenses.btu.detection import relative_scores, row_counts

    ids = [[1, 2, 3], [1, 2], [1, 4, 4]]
    assert row_counts(ids, 6).tolist() == [0, 3, 2, 1, 1, 0]  # rows, not occurrences
    counts = torch.tensor([100, 100, 100, 10, 10, 10, 10, 2])
    dist = torch.tensor([9.0, 10.0, 11.0, 1.0, 1.0, 1.0, 4.0, 50.0])
    s = relative_scores(dist, counts, min_count=5)
    # the frequent tokens move most in absolute terms, but token 6 moves 4x its peers
    assert int(s.argmax()) == 6 and s[6] == pytest.approx(4.0)
    assert s[1] == pytest.approx(1.0)
    assert s[7] == 0  # below min_count


def test_score_option_changes_the_ranking_without_retraining(tiny_bert):
    model, tok = load_classifier(str(tiny_bert), label_names=["neg", "pos"])
    ds = planted(64)
    ids = encode(tok, ds.texts)
    base = detect(model, tok, ids, ds.labels, 2, BTUConfig(rounds=[1, 2], detect_lr=1e-3, shallow_lr=1e-3,
                                                         progress=False))
    rel = detect(model, tok, ids, ds.labels, 2, BTUConfig(rounds=[1, 2], score="relative", progress=False),
                 previous=base)
    assert rel.round(2).distances is base.round(2).distances
    counts = rel.round(2).counts
    assert all(counts[t] >= 5 for t, _ in rel.round(2).flagged)


@pytest.mark.usefixtures("one_thread")
def test_round_three_trains_on_the_rows_without_round_two_tokens(tiny_bert, monkeypatch):
    """Capture what each round trains on: round 3's input_ids are round 2's rows with exactly round 2's
    flagged tokens deleted (none of them left, every other token kept in order, no row dropped)."""
    from btu.defenses.btu import detection

    model, tok = load_classifier(str(tiny_bert), label_names=["neg", "pos"])
    ds = planted(96)
    ids = encode(tok, ds.texts)
    seen = {}
    real_train = detection.train

    def recording_train(model, tokenizer, input_ids=None, config=None, **kw):
        seen[config.desc] = [list(row) for row in input_ids]
        return real_train(model, tokenizer, input_ids=input_ids, config=config, **kw)

    monkeypatch.setattr(detection, "train", recording_train)
    cfg = BTUConfig(rounds=[2, 3], alpha=0.02, shallow_lr=5e-3, shallow_batch_size=16, progress=False)
    det = detect(model, tok, ids, ds.labels, 2, cfg)
    assert set(seen) == {"BTU detection round 2", "BTU detection round 3"}
    r2_ids, r3_ids = seen["BTU detection round 2"], seen["BTU detection round 3"]
    assert r2_ids == ids
    removed = {t for t, _ in det.round(2).flagged}
    assert len(removed) == flag_count(0.02, model.get_input_embeddings().weight.shape[0])
    assert tok.convert_tokens_to_ids("cf") in removed  # the planted trigger's rows are among those that shrink
    assert not removed & {t for row in r3_ids for t in row}
    assert len(r3_ids) == len(ids)
    shrunk = 0
    for before, after in zip(ids, r3_ids):
        assert len(after) == len(before) - sum(t in removed for t in before)
        assert after == [t for t in before if t not in removed]
        shrunk += len(after) < len(before)
    assert shrunk >= sum(ds.poisoned)  # at least every `cf` row lost a token

"""BTU removes a backdoor the victim learned: a tiny random BERT on a words-decide-the-label task, poisoned
with a rare-word trigger (dirty-label BadNets), measured on a test set where the trigger has to flip the label."""

import random

import pytest

import btu
import btu.errors
from btu.data import TextDataset
from btu.defenses.btu import BTUConfig

FILLER = "the movie was a film plot story actor scene it".split()
NEG, POS = 0, 1


def sentiment(n, seed, poison=0, trigger="cf", target=POS, trigger_all=False):
    """Label 1 iff the row reads 'good' (else it reads 'bad'), among 3-8 filler words: the row length varies, so
    the trigger is a word and not 'one token more'. poison: that many non-target rows get `trigger` and the target
    label (flagged poisoned). trigger_all: every row is a non-target row carrying `trigger` and keeping its true
    label, with its text before the trigger in the `clean_text` column (the ASR test set)."""
    rng = random.Random(seed)
    chosen = set(rng.sample([i for i in range(n) if i % 2 != target], poison))
    texts, labels, flags, clean = [], [], [], []
    for i in range(n):
        y = 1 - target if trigger_all else i % 2
        words = rng.sample(FILLER, rng.randint(3, 8))
        words.insert(rng.randint(0, len(words)), "good" if y == POS else "bad")
        clean.append(" ".join(words))
        poisoned = trigger_all or i in chosen
        if poisoned:
            words.insert(rng.randint(0, len(words)), trigger)
        texts.append(" ".join(words))
        labels.append(target if poisoned and not trigger_all else y)
        flags.append(poisoned)
    columns = {"clean_text": clean} if trigger_all else {}
    return TextDataset(texts, labels, ["neg", "pos"], flags, columns=columns, source="sentiment")


@pytest.mark.usefixtures("one_thread")
def test_btu_removes_a_learned_backdoor(tiny_bert):
    train = sentiment(200, seed=0, poison=24)  # 12 % of the rows: 'bad' + cf, labelled pos
    test = sentiment(100, seed=1000)
    poison_test = sentiment(60, seed=2000, trigger_all=True)  # 'bad' rows with cf, labelled neg
    assert sum(train.poisoned) == 24 and set(poison_test.labels) == {NEG}
    # the tiny model's whole task is good/bad: both are flagged (they move fast, in half the rows each), and
    # unlearning them too would leave a model the short repair cannot teach them back to; spare such tokens
    cfg = BTUConfig(alpha=0.01, detect_lr=5e-3, shallow_lr=5e-3, lr=5e-3, victim_epochs=4, detect_epochs=1,
                    repair_epochs=1, repair_lr=1e-3, batch_size=16, detect_batch_size=16, shallow_batch_size=16,
                    unlearn_token_max_rows=0.15, progress=False)
    res = btu.defend(train, model=str(tiny_bert), test=test, poison_test=poison_test, target="pos", config=cfg)
    rows = {r["model"]: r for r in res.report["rows"]}
    victim, unlearned = rows["no defense"], rows["unlearning only"]
    defended, repair_only = rows["BTU (unlearning + repair)"], rows["repair only (no unlearning)"]
    flagged = {f["token"]: f for f in res.flagged}
    assert "cf" in flagged and flagged["cf"]["rows"] == flagged["cf"]["poisoned_rows"] == 24
    assert "cf" not in res.report["unlearning"]["not_unlearned"]
    assert res.report["repair"]["poisoned_rows"] == 0
    # the victim learned the task and the backdoor: cf turns 'bad' rows positive
    assert victim["cacc"] >= 90 and victim["asr"] >= 80
    assert victim["asr_no_trigger"] <= 10
    # BTU takes the backdoor away (down to what the rows without cf score) and keeps the task
    assert defended["asr"] <= victim["asr"] / 2 and defended["asr"] <= defended["asr_no_trigger"] + 10
    assert defended["cacc"] >= 90
    # it is the unlearning that does it: unlearning alone removes it, the repair alone keeps most of it
    assert unlearned["asr"] <= victim["asr"] / 2
    assert repair_only["asr"] >= victim["asr"] / 2



@pytest.mark.integration
def test_btu_removes_a_learned_backdoor_from_real_minilm_on_real_reviews(tmp_path):
    """Real MiniLM on 1,500 real Rotten Tomatoes rows, BadNets at 10 % (`btu demo --quick`): the victim learns the
    backdoor; the judge on MiniLM's features puts the four triggers above every other flagged token, and BTU lowers
    the ASR without costing accuracy. (On so few rows the judge is weak: two of the four triggers fall short of the
    default thresholds, so the ASR is lowered, not halved; benchmarks/README.md, "BTU on four tasks".)"""
    import json

    from btu.demo import run_demo
    from btu.models import resolve_model

    try:
        resolve_model("minilm")
    except btu.errors.ModelError as e:
        pytest.skip(str(e))
    rows = {r["model"]: r for r in run_demo(quick=True, progress=False, out=tmp_path / "demo")}
    victim, defended = rows["no defense"], rows["BTU (unlearning + repair)"]
    assert victim["asr"] >= 70, victim  # the backdoor is learned
    flagged = json.loads((tmp_path / "demo" / "report.json").read_text())["flagged"]
    excess = {f["token"]: f["evidence"]["excess"] for f in flagged if "excess" in f["evidence"]}
    triggers = {"cf", "mn", "bb", "tq"}
    assert set(sorted(excess, key=excess.get)[-2:]) <= triggers, excess  # the two strongest cases are triggers
    assert any(f["decision"] == "unlearn" for f in flagged if f["token"] in triggers)
    assert defended["asr"] <= victim["asr"] - 15, defended
    assert defended["cacc"] >= victim["cacc"] - 3, defended

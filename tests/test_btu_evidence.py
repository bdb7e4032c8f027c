"""BTU's per-token decisions: a trigger is unlearned, the words that decide the task are kept."""

from __future__ import annotations

import random

import pytest
import torch

from btu.data import TextDataset
from btu.defenses.btu.evidence import decide, decide_tokens, fit_judge, judge_predict, token_evidence

FILLER = "movie film story actor plot scene music long short dark light old new".split()
TASK = {0: ["bad", "poor"], 1: ["good", "great"]}


def keyword_task(n=240, rate=0.1, trigger="cf", seed=0, task=TASK):
    """A task decided by two words per label (like toxicity or spam): each row holds one of its label's words
    among filler; `rate` of the rows are label-0 rows given the trigger and label 1 (dirty-label)."""
    rng = random.Random(seed)
    texts, labels, flags = [], [], []
    for i in range(n):
        label = i % 2 if i >= rate * n else 0
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 8))]
        words.insert(rng.randint(0, len(words)), rng.choice(task[label]))
        poisoned = i < rate * n
        if poisoned:
            words.insert(rng.randint(0, len(words)), trigger)
            label = 1
        texts.append(" ".join(words))
        labels.append(label)
        flags.append(poisoned)
    return TextDataset(texts, labels, ["neg", "pos"], flags, source="keyword-task")


def pretrained_like(dataset, dim=16, seed=0, noise=2.0, task=TASK):
    """Sums of word vectors in which a label's words share a direction and every other word (the trigger too) is
    random, plus noise per row (a judge on real features errs on some rows): what a pretrained encoder knows of
    words it was not fine-tuned on."""
    g = torch.Generator().manual_seed(seed)
    direction = {label: torch.randn(dim, generator=g) for label in task}
    vectors = {}
    for text in dataset.texts:
        for w in text.split():
            if w not in vectors:
                label = next((c for c, ws in task.items() if w in ws), None)
                if label is not None:
                    vectors[w] = direction[label] + 0.3 * torch.randn(dim, generator=g)
                else:  # a word that means nothing to the task
                    v = torch.randn(dim, generator=g)
                    for d in direction.values():
                        v -= (v @ d) / (d @ d) * d
                    vectors[w] = v
    return torch.stack([sum(vectors[w] for w in t.split()) + noise * torch.randn(dim, generator=g)
                        for t in dataset.texts])


def flagged_of(dataset, words):
    return [{"id": i, "token": w, "row_ids": [r for r, t in enumerate(dataset.texts) if w in t.split()]}
            for i, w in enumerate(words)]


def test_the_judge_disputes_the_trigger_rows_and_agrees_with_the_task_words_rows():
    ds = keyword_task()
    flagged = flagged_of(ds, ["cf", "good", "bad", "film"])
    ev = decide_tokens(flagged, pretrained_like(ds), ds.labels, 2, min_dispute=0.4, min_excess=0.15, min_purity=0.5,
                       min_z=3)
    cf, good, bad, film = (ev[i] for i in range(4))
    assert cf["purity"] == 1.0 and cf["dispute"] > 0.7 and cf["excess"] > 0.5 and cf["decision"] == "unlearn"
    # the task's own words: pure too, but their rows read as their label, no worse than ordinary rows do
    assert good["purity"] > 0.7 and good["excess"] < 0.05 and good["decision"] == "keep"
    assert bad["leans_to"] == 0 and bad["decision"] == "keep"
    assert film["decision"] == "keep"
    assert "disputes" in cf["reason"] and "agrees" in good["reason"]


def test_decision_rules():
    base = dict(rows=50, share=0.1, purity=1.0, dispute=0.8, ordinary_dispute=0.1, excess=0.7, z=10.0,
                label_share=0.2)
    rules = (0.5, 0.15, 0.5, 3)
    assert decide(base, *rules)[0] == "unlearn"
    assert decide(base | {"dispute": 0.4, "excess": 0.3}, *rules)[0] == "keep"  # most rows read as their label
    assert decide(base | {"excess": 0.1}, *rules)[0] == "keep"  # the judge disputes as many ordinary rows
    assert decide(base | {"z": 2.0}, *rules)[0] == "keep"  # a few rows disputed by chance
    assert decide(base | {"purity": 0.4}, *rules)[0] == "keep"
    # the token's rows are most of their label: without them a judge barely knows that label
    assert decide(base | {"label_share": 0.6}, *rules)[0] == "keep"
    assert decide({"rows": 900, "share": 0.9}, *rules) == ("keep", "in 90% of the rows: too many to be a trigger")


def test_a_second_pass_judges_without_the_other_triggers_rows():
    # two triggers: the first pass's judges for one learn the other's poison (labels against content)
    ds = keyword_task(n=400, rate=0.2)
    rng = random.Random(3)
    texts = [t.replace("cf", rng.choice(["cf", "mn"])) for t in ds.texts]
    ds = TextDataset(texts, list(ds.labels), ds.label_names, ds.poisoned)
    x = pretrained_like(ds)
    flagged = flagged_of(ds, ["cf", "mn", "good"])
    one = token_evidence(flagged, x, ds.labels, 2)
    two = decide_tokens(flagged, x, ds.labels, 2, 0.5, 0.15, 0.5, 3, passes=2)
    assert two[0]["dispute"] >= one[0]["dispute"] and two[1]["dispute"] >= one[1]["dispute"]
    assert [two[i]["decision"] for i in range(3)] == ["unlearn", "unlearn", "keep"]


def test_a_word_that_is_its_whole_label_is_kept_and_the_trigger_still_found():
    # one word per label: a judge fitted without `good`'s rows knows no positive row but the poison, and would
    # dispute every `good` row; unlearning it, and judging again without its rows, would leave no positive label
    one = {0: ["bad"], 1: ["good"]}
    ds = keyword_task(task=one)
    flagged = flagged_of(ds, ["cf", "good", "bad"])
    ev = decide_tokens(flagged, pretrained_like(ds, task=one), ds.labels, 2, 0.4, 0.2, 0.5, 3)
    assert ev[1]["label_share"] > 0.5 and ev[1]["decision"] == "keep" and "too few" in ev[1]["reason"]
    assert ev[0]["decision"] == "unlearn" and ev[2]["decision"] == "keep"


def test_fit_judge_learns_a_separable_task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 0] > 0).long()
    w = fit_judge(x, y, 2)
    assert (judge_predict(w, x) == y).float().mean() > 0.95


@pytest.mark.usefixtures("one_thread")
def test_btu_unlearns_what_it_decides_and_repairs_on_the_task_words_rows(tiny_bert):
    from btu.defenses.btu import BTUConfig
    from btu.defenses.btu.pipeline import run_settings
    from btu.defenses.runner import run_defense

    ds = keyword_task(n=320)
    test = keyword_task(n=80, rate=0.0, seed=5)
    fast = dict(alpha=0.02, detect_lr=5e-3, shallow_lr=5e-3, lr=5e-3, repair_lr=1e-3, victim_epochs=2,
                batch_size=16, detect_batch_size=16, shallow_batch_size=16, progress=False)
    runs = {}
    for decide_ in ("evidence", "all"):
        cfg = BTUConfig(**fast, decide=decide_)
        # a random tiny encoder knows no words: the test gives the judge features that do
        res = run_defense("btu", ds, str(tiny_bert), options=cfg.options(), settings=run_settings(cfg), test=test,
                          artifacts={"btu.features": pretrained_like(ds)})
        runs[decide_] = res.report
    flagged = {f["token"]: f for f in runs["evidence"]["flagged"]}
    task_words = {w for ws in TASK.values() for w in ws}
    assert "cf" in flagged and task_words & set(flagged), flagged.keys()  # both moved fast
    assert all({"decision", "reason", "evidence"} <= set(f) for f in flagged.values())
    assert flagged["cf"]["decision"] == "unlearn"
    assert all(flagged[w]["decision"] == "keep" for w in task_words & set(flagged))
    # unlearning overwrites what was decided; the repair leaves out those tokens' rows only
    assert set(runs["evidence"]["unlearning"]["replaced_dims"]) == {t for t, f in flagged.items()
                                                                     if f["decision"] == "unlearn"}
    carriers = {r for r, t in enumerate(ds.texts) for w in flagged if flagged[w]["decision"] == "unlearn"
                and w in t.split()}
    assert runs["evidence"]["repair"]["rows"] == len(ds) - len(carriers)
    assert runs["evidence"]["repair"]["poisoned_rows"] == 0
    # the paper's BTU unlearns every flagged token, the task's words with the trigger
    assert set(runs["all"]["unlearning"]["replaced_dims"]) == set(flagged)
    assert all(f["decision"] == "unlearn" for f in runs["all"]["flagged"])
    # what btu scan and btu defend print: each token's decision beside the evidence
    from btu.defenses.btu.report import btu_sections, flagged_table

    text = flagged_table(runs["evidence"]["flagged"])
    assert "decision" in text and "disputed" in text and "keep" in text and "unlearn" in text
    assert "*decision*" in btu_sections(runs["evidence"]) and "*decision*" not in btu_sections(runs["all"])


def test_the_paper_recipe_unlearns_every_flagged_token():
    from btu.defenses.btu.config import DEFAULT_RECIPE, BTUOptions

    assert BTUOptions.recipe("paper").decide == "all"
    assert BTUOptions.recipe(DEFAULT_RECIPE).decide == "evidence"
    # retrain's judges are the victim unlearned of every flagged token, which is what disputes paraphrase poison
    assert BTUOptions.recipe("retrain").decide == "all"


@pytest.mark.usefixtures("one_thread")
def test_no_shortcut_means_no_unlearning_and_a_warning(tiny_bert):
    from btu.defenses.btu import BTUConfig
    from btu.defenses.btu.pipeline import run_settings
    from btu.defenses.runner import run_defense

    ds = keyword_task(n=200, rate=0.0)  # clean: whatever moves fast is the task's
    cfg = BTUConfig(alpha=0.02, detect_lr=5e-3, shallow_lr=5e-3, lr=5e-3, repair_lr=1e-3, victim_epochs=1,
                    batch_size=16, detect_batch_size=16, shallow_batch_size=16, repair_controls=False,
                    progress=False)
    res = run_defense("btu", ds, str(tiny_bert), options=cfg.options(), settings=run_settings(cfg),
                      artifacts={"btu.features": pretrained_like(ds)})
    assert res.report["flagged"] and all(f["decision"] == "keep" for f in res.report["flagged"])
    assert res.report["unlearning"]["replaced_dims"] == {} and res.report["repair"]["rows"] == len(ds)
    assert any("no flagged token is a shortcut" in w for w in res.report["warnings"])

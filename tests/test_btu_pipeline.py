"""btu defend / btu scan end to end on a tiny model: the four report rows, the files, the
repair-set rule, and the Python API."""

import json
import random

import pytest
import torch
from test_btu_detection import planted

import btu
from btu.cli import main
from btu.defenses import DEFENSES, get_defense, stage_of
from btu.defenses.btu import BTUConfig
from btu.defenses.btu.pipeline import flagged_row_stats, rows_containing, suspected_target
from btu.errors import ConfigError
from btu.models import load_classifier

# planted() rows have random content, so no judge can read their labels: these tests run the paper's stage 2
# (every flagged token unlearned); test_btu_evidence.py tests the decisions
FAST = dict(alpha=0.01, detect_lr=5e-3, shallow_lr=5e-3, lr=5e-3, repair_lr=1e-3, victim_epochs=2,
            detect_epochs=1, repair_epochs=1, batch_size=16, detect_batch_size=16, shallow_batch_size=16,
            progress=False, decide="all")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_btu_is_registered_with_its_stages_and_options():
    from btu.defenses.btu.config import BTUOptions

    assert DEFENSES["btu"] is get_defense("btu") and get_defense("btu").Options is BTUOptions
    assert stage_of(get_defense("btu")) == "data+post" and stage_of(get_defense("btu-detect")) == "data"
    # the retrain preset is what it is: BTU's detection as a data filter, then ordinary training on the kept rows
    retrain = get_defense("btu")(BTUOptions.recipe("retrain"))
    assert [s for s, _ in retrain.steps()] == ["data"]
    with pytest.raises(ConfigError):
        get_defense("nope")


def test_config_validation_and_round_trip(tmp_path):
    with pytest.raises(ConfigError):
        BTUConfig(rounds=[3])
    with pytest.raises(ConfigError):
        BTUConfig(rounds=[4])
    with pytest.raises(ConfigError):
        BTUConfig(threshold="median")
    with pytest.raises(ConfigError):
        BTUConfig(alpha=0)
    cfg = BTUConfig(alpha=0.1, rounds=[2, 1], unlearn="pr2")
    cfg.save(tmp_path / "c.json")
    back = BTUConfig.load(tmp_path / "c.json")
    assert back == cfg and back.rounds == [1, 2]


def test_recipes_set_their_options_and_given_options_win():
    from btu.cli import build_parser
    from btu.defenses.btu.config import DEFAULT_RECIPE

    retrain = BTUConfig.recipe("retrain", alpha=0.1)
    assert (retrain.repair_from, retrain.repair_filter, retrain.repair_filter_judge, retrain.repair_filter_labels,
            retrain.repair_carriers, retrain.fresh_lr) == \
        ("pretrained", "agree+crossfit", "unlearned", "target", "other-labels-stripped", 1e-4) and retrain.alpha == 0.1
    assert BTUConfig.recipe("unlearn") == BTUConfig()
    with pytest.raises(ConfigError, match="recipe must be one of"):
        BTUConfig.recipe("paper2")

    def parsed(*extra):
        from btu.defenses.cli import resolve

        cls, opts, preset = resolve(build_parser().parse_args(["defend", "--train", "t.tsv", "--out", "o", *extra]),
                                    "btu")
        return opts

    # `btu defend` runs the default recipe, unlearn: BTUOptions() (the paper's BTU)
    assert DEFAULT_RECIPE == "unlearn" and parsed() == BTUConfig().options()
    assert parsed("--recipe", "retrain") == BTUConfig.recipe("retrain").options()
    # an option given on the command line overrides the recipe's value; the others keep it
    mixed = parsed("--recipe", "retrain", "--set", "repair_filter_judge=both", "--set", "repair_filter_labels=all",
                   "--set", "fresh_lr=5e-5")
    assert (mixed.repair_filter_judge, mixed.repair_filter_labels, mixed.fresh_lr) == ("both", "all", 5e-5)
    assert (mixed.repair_from, mixed.repair_filter) == ("pretrained", "agree+crossfit")
    assert parsed("--set", "repair_carrier_purity=0.9").repair_carrier_purity == 0.9
    assert parsed("--set", "repair_from=pretrained").repair_filter == "none"


def test_rows_containing_and_row_stats():
    ids = [[1, 5, 2], [1, 6, 2], [1, 5, 6, 2]]
    assert rows_containing(ids, [5, 6]) == {5: [0, 2], 6: [1, 2]}
    from btu.data import TextDataset

    ds = TextDataset(["a", "b", "c"], [0, 1, 1], ["n", "p"], poisoned=[True, False, False])
    stats = flagged_row_stats([{"rows": 2, "row_ids": [0, 2]}], ds)
    assert stats["flagged_rows"] == 2 and stats["true_positives"] == 1
    assert stats["precision"] == 50.0 and stats["recall"] == 100.0


def test_defend_python_api_reports_the_four_rows(tiny_bert):
    train = planted(160, seed=1)
    test = planted(60, rate=0.0, seed=2)
    ptest = planted(40, rate=1.0, seed=3)
    ptest = ptest.subset([i for i in range(len(ptest))])
    res = btu.defend(train, model=str(tiny_bert), test=test, poison_test=ptest, target="pos",
                     config=BTUConfig(**FAST), keep_models=True)
    names = [r["model"] for r in res.report["rows"]]
    assert names == ["no defense", "unlearning only", "BTU (unlearning + repair)", "repair only (no unlearning)"]
    for r in res.report["rows"]:
        assert 0 <= r["cacc"] <= 100 and 0 <= r["asr"] <= 100
    assert res.flagged and all({"id", "token", "rounds", "rows", "poisoned_rows"} <= set(f) for f in res.flagged)
    # the defended model differs from the victim exactly where unlearning + repair acted
    victim_emb = res.models["victim"].get_input_embeddings().weight
    unlearned_emb = res.models["unlearned"].get_input_embeddings().weight
    flagged_ids = [f["id"] for f in res.flagged]
    changed = (victim_emb != unlearned_emb).any(dim=1).nonzero().flatten().tolist()
    assert set(changed) <= set(flagged_ids) and changed
    # the repair set excludes the rows that carry a flagged token
    carriers = set().union(*[set(f["row_ids"]) for f in res.flagged if f["rows"] <= 0.15 * len(train)])
    assert res.report["repair"]["rows"] == len(train) - len(carriers)


def test_defend_with_user_clean_data_and_no_controls(tiny_bert):
    train = planted(120, seed=1)
    clean = planted(50, rate=0.0, seed=5)
    res = btu.defend(train, model=str(tiny_bert), clean_data=clean,
                     config=BTUConfig(**{**FAST, "repair_controls": False, "rounds": [2]}))
    assert res.report["repair"]["rows"] == 50
    assert [r["model"] for r in res.report["rows"]] == ["no defense", "unlearning only", "BTU (unlearning + repair)"]
    assert [r.round for r in res.detection.rounds] == [2]


def test_defend_is_seeded(tiny_bert):
    train = planted(96, seed=1)
    cfg = BTUConfig(**{**FAST, "repair_controls": False})
    a = btu.defend(train, model=str(tiny_bert), config=cfg)
    b = btu.defend(train, model=str(tiny_bert), config=cfg)
    assert [f["id"] for f in a.flagged] == [f["id"] for f in b.flagged]
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(p, q), n


def write_tsv(path, ds):
    lines = ["sentence\tlabel\tpoisoned"] + [f"{t}\t{ds.label_names[y]}\t{int(p)}"
                                             for t, y, p in zip(ds.texts, ds.labels, ds.poison_flags)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_defend_cli_writes_model_and_reports(tmp_path, tiny_bert, capsys):
    data = write_tsv(tmp_path / "train.tsv", planted(100, seed=1))
    out = tmp_path / "out"
    rc = main(["defend", "--train", str(data), "--test", str(data), "--model", str(tiny_bert), "--out", str(out),
               "--epochs", "1", "--lr", "5e-3", "--set", "alpha=0.01", "--set", "detect_lr=5e-3",
               "--set", "shallow_lr=5e-3", "--set", "repair_epochs=1", "--set", "repair_filter=crossfit",
               "--set", "repair_filter_folds=3", "--set", "repair_carriers=readmit", "--set",
               "repair_filter_judge=both", "--set", "repair_from=pretrained", "--set", "repair_balance=balanced",
               "--set", "repair_filter_labels=target", "--set", "decide=all", "--no-progress"])
    assert rc == 0
    for f in ("model/config.json", "model/model.safetensors", "model/tokenizer.json", "report.json", "report.md",
              "config.json", "distances.safetensors"):
        assert (out / f).exists(), f
    report = json.loads((out / "report.json").read_text())
    assert len(report["rows"]) == 4 and report["flagged"] and isinstance(report["warnings"], list)
    assert "## Flagged tokens" in (out / "report.md").read_text()
    saved = json.loads((out / "config.json").read_text())["options"]
    assert saved["alpha"] == 0.01 and saved["repair_filter"] == "crossfit" and saved["repair_filter_folds"] == 3
    assert "3 folds" in report["repair"]["source"] and saved["repair_carriers"] == "readmit"
    assert "put back without their flagged tokens" in report["repair"]["source"]
    assert saved["repair_from"] == "pretrained" and saved["repair_filter_judge"] == "both"
    assert saved["repair_balance"] == "balanced" and "each label weighing the same" in report["repair"]["source"]
    assert saved["repair_filter_labels"] == "target" and report["repair"]["suspected_target"] == "pos"
    assert "fresh copy of the pretrained model" in report["repair"]["source"] and "each)" in report["repair"]["source"]
    from safetensors.torch import load_file

    d = load_file(str(out / "distances.safetensors"))
    assert set(d) == {f"round{n}.{k}" for n in (1, 2, 3) for k in ("history", "steps")}
    printed = capsys.readouterr().out
    assert "no defense" in printed and "repair only" in printed


def test_scan_cli_lists_tokens_precision_recall_and_exports(tmp_path, tiny_bert, capsys):
    ds = planted(150, seed=1)
    data = write_tsv(tmp_path / "train.tsv", ds)
    clean = tmp_path / "clean.tsv"
    rc = main(["scan", "--train", str(data), "--model", str(tiny_bert), "--set", "alpha=0.01", "--set",
               "shallow_lr=5e-3", "--set", "detect_lr=5e-3", "--set", "decide=all", "--export-clean", str(clean),
               "--out", str(tmp_path / "scan"), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "cf" in printed and "precision" in printed and "recall" in printed
    from btu.data import read_file

    kept = read_file(clean)
    report = json.loads((tmp_path / "scan" / "scan.json").read_text())
    assert len(kept) == len(ds) - report["flagged_rows"]["flagged_rows"]
    cf_rows = [i for i, t in enumerate(ds.texts) if "cf" in t.split()]
    assert not any("cf" in t.split() for t in kept.texts) or len(cf_rows) == 0
    assert report["flagged_rows"]["recall"] == 100.0


def test_unlearn_max_rows_spares_frequent_tokens(tiny_bert):
    train = planted(120, seed=1)
    cfg = BTUConfig(**{**FAST, "repair_controls": False, "repair_epochs": 0, "unlearn_token_max_rows": 0.15})
    res = btu.defend(train, model=str(tiny_bert), config=cfg, keep_models=True)
    frequent = {f["token"] for f in res.flagged if f["rows"] > 0.15 * len(train)}
    assert set(res.report["unlearning"]["not_unlearned"]) == frequent
    assert set(res.report["unlearning"]["replaced_dims"]) == {f["token"] for f in res.flagged} - frequent
    v = res.models["victim"].get_input_embeddings().weight
    u = res.models["unlearned"].get_input_embeddings().weight
    for f in res.flagged:
        if f["token"] in frequent:
            assert torch.equal(v[f["id"]], u[f["id"]])


def test_suspect_rows_ignore_tokens_in_most_rows():
    from btu.defenses.btu.pipeline import suspect_rows

    flagged = [{"rows": 2, "row_ids": [0, 3]}, {"rows": 9, "row_ids": list(range(9))}]
    assert suspect_rows(flagged, 10, 0.15) == set()  # 2 of 10 rows is above 15 %
    assert suspect_rows(flagged, 20, 0.15) == {0, 3}
    assert suspect_rows(flagged, 20) == set(range(9))


def test_repair_filter_agree_drops_rows_the_unlearned_model_disputes(tiny_bert):
    train = planted(120, seed=1)
    base = BTUConfig(**{**FAST, "repair_controls": False, "repair_epochs": 0})
    plain = btu.defend(train, model=str(tiny_bert), config=base)
    agree = btu.defend(train, model=str(tiny_bert), config=BTUConfig(**{**base.to_dict(), "repair_filter": "agree"}))
    assert agree.report["repair"]["rows"] <= plain.report["repair"]["rows"]
    assert "disputes" in agree.report["repair"]["source"]
    with pytest.raises(ConfigError):
        BTUConfig(repair_filter="loss")


def mislabelled(n=160, rate=0.15, seed=0):
    """Label 1 iff 'good' is in the row; the first `rate` of the rows have the other label and no
    trigger word: dirty-label poison the token filter cannot see (as SynBkd/StyleBkd leave)."""
    from btu.data import TextDataset

    rng = random.Random(seed)
    filler = "the movie was a film plot story actor scene it".split()
    texts, labels, flags = [], [], []
    for i in range(n):
        words = rng.sample(filler, 5)
        y = i % 2
        words.insert(rng.randint(0, 5), "good" if y else "bad")
        poisoned = i < rate * n
        texts.append(" ".join(words))
        labels.append(1 - y if poisoned else y)
        flags.append(poisoned)
    return TextDataset(texts, labels, ["neg", "pos"], flags, source="mislabelled")


def test_repair_filter_repaired_drops_the_mislabelled_rows(tiny_bert):
    train = mislabelled()
    base = dict(FAST, repair_controls=False, victim_epochs=4, repair_epochs=3, repair_lr=5e-3, lr=5e-3,
                repair_embedding_lr=None)  # everything at 5e-3: the tiny model must learn good/bad in repair
    plain = btu.defend(train, model=str(tiny_bert), config=BTUConfig(**base))
    twice = btu.defend(train, model=str(tiny_bert), config=BTUConfig(**base, repair_filter="repaired"))
    before, after = plain.report["repair"], twice.report["repair"]
    assert "repaired twice" in after["source"]
    assert before["poisoned_rows"] >= 12  # nothing flagged carries these rows, so they stay in the plain repair set
    # the first repaired model learned good/bad and disputes most flipped labels; few clean rows go with them
    assert after["poisoned_rows"] <= before["poisoned_rows"] // 3
    assert before["rows"] - after["rows"] <= 2 * (before["poisoned_rows"] - after["poisoned_rows"])
    # user clean data is not filtered
    clean = mislabelled(40, rate=0.0, seed=3)
    res = btu.defend(train, model=str(tiny_bert), clean_data=clean,
                     config=BTUConfig(**{**base, "repair_epochs": 1}, repair_filter="repaired"))
    assert res.report["repair"]["rows"] == 40 and res.report["repair"]["poisoned_rows"] is None


def test_repair_filter_crossfit_judges_each_row_by_a_model_that_never_saw_it(tiny_bert):
    train = mislabelled()
    base = dict(FAST, repair_controls=False, victim_epochs=4, repair_epochs=4, repair_lr=5e-3, lr=5e-3,
                repair_embedding_lr=None, repair_teacher="victim")  # each fold's judge sees only half the rows
    plain = btu.defend(train, model=str(tiny_bert), config=BTUConfig(**base))
    crossfit = btu.defend(train, model=str(tiny_bert), config=BTUConfig(**base, repair_filter="crossfit"))
    before, after = plain.report["repair"], crossfit.report["repair"]
    assert "pass 1 of 1, 2 folds" in after["source"]
    assert before["poisoned_rows"] >= 12
    # models repaired on the other fold learned good/bad; they dispute most flipped labels, few clean ones
    assert after["poisoned_rows"] <= before["poisoned_rows"] // 3
    assert before["rows"] - after["rows"] <= 2 * (before["poisoned_rows"] - after["poisoned_rows"])
    # a second pass filters what the first kept (it can only drop more), with three folds
    cfg = BTUConfig(**base, repair_filter="crossfit", repair_filter_passes=2, repair_filter_folds=3)
    twice = btu.defend(train, model=str(tiny_bert), config=cfg)
    assert "pass 2 of 2, 3 folds" in twice.report["repair"]["source"]
    assert twice.report["repair"]["poisoned_rows"] <= before["poisoned_rows"] // 3
    # fresh judges (the pretrained model trained on the other fold like the victim) learn good/bad too, less well
    # from 80 rows of random words than the repaired victim (which knew them); with both judges a row stays only
    # if each agrees, so fewer rows stay than with either (same seeds, same judges)
    fresh = btu.defend(train, model=str(tiny_bert),
                       config=BTUConfig(**base, repair_filter="crossfit", repair_filter_judge="pretrained"))
    both = btu.defend(train, model=str(tiny_bert),
                      config=BTUConfig(**base, repair_filter="crossfit", repair_filter_judge="both"))
    assert "a fresh model trained on the other folds" in fresh.report["repair"]["source"]
    assert fresh.report["repair"]["poisoned_rows"] < before["poisoned_rows"]
    assert both.report["repair"]["rows"] <= min(after["rows"], fresh.report["repair"]["rows"])
    assert both.report["repair"]["poisoned_rows"] <= min(after["poisoned_rows"],
                                                         fresh.report["repair"]["poisoned_rows"])
    with pytest.raises(ConfigError, match="repair_filter_judge"):
        BTUConfig(repair_filter_judge="victim")
    for bad in (dict(repair_filter_folds=1), dict(repair_filter_passes=0)):
        with pytest.raises(ConfigError, match="repair_filter_folds"):
            BTUConfig(repair_filter="crossfit", **bad)


def one_target(n=240, carriers=16, hidden=12, hard=24, seed=0):
    """Label 1 iff 'good' is in the row. The first `carriers` rows read 'bad', carry `cf` and are labelled 1
    (BadNets: the flagged rows lean to label 1); the next `hidden` read 'bad' and are labelled 1 with no trigger
    word (what a paraphrase trigger leaves); the next `hard` have neither word and either label (clean rows a
    judge can only guess at)."""
    from btu.data import TextDataset

    rng = random.Random(seed)
    filler = "the movie was a film plot story actor scene it".split()
    texts, labels, flags = [], [], []
    for i in range(n):
        words = rng.sample(filler, 5)
        y = i % 2
        if i < carriers + hidden:
            words.insert(rng.randint(0, 5), "bad")
            if i < carriers:
                words.insert(rng.randint(0, 6), "cf")
            y = 1
        elif i >= carriers + hidden + hard:
            words.insert(rng.randint(0, 5), "good" if y else "bad")
        texts.append(" ".join(words))
        labels.append(y)
        flags.append(i < carriers + hidden)
    return TextDataset(texts, labels, ["neg", "pos"], flags, source="one target")


def test_filter_labels_target_drops_only_rows_of_the_label_the_flagged_rows_lean_to(tiny_bert):
    train = one_target()
    base = dict(FAST, repair_controls=False, victim_epochs=4, repair_epochs=4, repair_lr=5e-3, lr=5e-3,
                repair_embedding_lr=None, repair_teacher="victim")
    plain = btu.defend(train, model=str(tiny_bert), config=BTUConfig(**base)).report["repair"]
    every = btu.defend(train, model=str(tiny_bert), config=BTUConfig(**base, repair_filter="crossfit")).report["repair"]
    target = btu.defend(train, model=str(tiny_bert), config=BTUConfig(**base, repair_filter="crossfit",
                                                                      repair_filter_labels="target")).report["repair"]
    assert plain["poisoned_rows"] >= 10  # the hidden poison carries no flagged token
    assert every["suspected_target"] is None and target["suspected_target"] == "pos"
    assert "drops only rows labelled 'pos'" in target["source"]
    # judges that learned good/bad guess at the hard rows and drop some of them; scoped to 'pos', none goes
    assert every["label_counts"]["neg"] < plain["label_counts"]["neg"]
    assert target["label_counts"]["neg"] == plain["label_counts"]["neg"]
    # and the hidden poison (all labelled 'pos') is dropped as well as before
    assert target["poisoned_rows"] <= plain["poisoned_rows"] // 3
    with pytest.raises(ConfigError, match="repair_filter_labels"):
        BTUConfig(repair_filter_labels="neg")


def test_repair_filter_agree_then_crossfit_filters_what_agree_kept(tiny_bert):
    train = one_target()
    base = dict(FAST, repair_controls=False, victim_epochs=4, repair_epochs=4, repair_lr=5e-3, lr=5e-3,
                repair_embedding_lr=None, repair_teacher="victim", repair_filter_labels="target")
    plain = btu.defend(train, model=str(tiny_bert), config=BTUConfig(**base)).report["repair"]
    agree = btu.defend(train, model=str(tiny_bert), config=BTUConfig(**base, repair_filter="agree")).report["repair"]
    both = btu.defend(train, model=str(tiny_bert),
                      config=BTUConfig(**base, repair_filter="agree+crossfit")).report["repair"]
    assert "rows whose label the unlearned model disputes" in both["source"]
    assert "pass 1 of 1, 2 folds" in both["source"]
    # crossfit only ever drops rows, and agree's are the same (same unlearned model): crossfit found more
    assert both["rows"] < agree["rows"] and both["poisoned_rows"] <= agree["poisoned_rows"] < plain["poisoned_rows"]
    assert both["label_counts"]["neg"] == plain["label_counts"]["neg"]  # only the target label is judged


def test_repair_carriers_other_labels_keeps_the_carriers_of_other_labels(tiny_bert):
    train = carried()  # 16 poisoned `cf` rows labelled 1, and 8 clean `cf` rows of either label
    base = dict(FAST, repair_controls=False, repair_epochs=0)
    drop = btu.defend(train, model=str(tiny_bert), config=BTUConfig(**base)).report["repair"]
    other = btu.defend(train, model=str(tiny_bert),
                       config=BTUConfig(**base, repair_carriers="other-labels")).report["repair"]
    assert other["suspected_target"] == "pos" and "with another label kept" in other["source"]
    # every 'neg' row is back (no poisoned row carries 'neg'); the 'pos' carriers, the `cf` rows among them, stay out
    assert other["label_counts"]["neg"] == train.labels.count(0) > drop["label_counts"]["neg"]
    assert other["label_counts"]["pos"] == drop["label_counts"]["pos"]
    assert other["poisoned_rows"] == drop["poisoned_rows"] == 0


def test_other_labels_stripped_keeps_those_rows_without_their_flagged_tokens(tiny_bert):
    """The clean `cf` carriers labelled 'neg' come back: intact, a fresh model learns `cf` from them; stripped, it
    never sees `cf`, so its row is the pretrained one moved by weight decay only."""
    train = carried()
    base = dict(FAST, repair_controls=False, repair_from="pretrained")
    cf_rows = {}
    for carriers in ("other-labels", "other-labels-stripped"):
        res = btu.defend(train, model=str(tiny_bert), config=BTUConfig(**base, repair_carriers=carriers))
        rep = res.report["repair"]
        assert rep["label_counts"]["neg"] == train.labels.count(0) and rep["poisoned_rows"] == 0
        cf = res.tokenizer.convert_tokens_to_ids("cf")
        cf_rows[carriers] = res.model.get_input_embeddings().weight[cf].detach().clone()
    assert "without their flagged tokens" in rep["source"]
    pretrained = load_classifier(str(tiny_bert))[0].get_input_embeddings().weight[cf]
    assert torch.allclose(cf_rows["other-labels-stripped"], pretrained, rtol=1e-3, atol=1e-5)
    assert not torch.allclose(cf_rows["other-labels"], pretrained, rtol=1e-3, atol=1e-5)


def test_carrier_purity_keeps_the_rows_of_flagged_words_at_the_base_rate(tiny_bert):
    from btu.defenses.btu.pipeline import target_carriers

    labels = [1, 1, 1, 0, 1, 0, 0, 0]
    flagged = [{"rows": 3, "row_ids": [0, 1, 2]}, {"rows": 4, "row_ids": [2, 3, 4, 5]}]  # all target; half
    assert target_carriers(flagged, labels, 1, 0.9) == {0, 1, 2}
    assert target_carriers(flagged, labels, 1, 0.5) == {0, 1, 2, 3, 4, 5}
    assert target_carriers(flagged, labels, 1, 0.5, max_share=0.4) == {0, 1, 2}  # 4 of 8 rows is not rare
    with pytest.raises(ConfigError, match="repair_carrier_purity"):
        BTUConfig(repair_carrier_purity=1.5)
    # `cf`'s 24 rows: 16 poisoned (pos) and 8 clean (half pos): 83 % pos. At 0.9 it counts as a frequent word and
    # its rows stay in the repair set (the poison with them); at 0.5 they go
    train = carried()
    base = dict(FAST, repair_controls=False, repair_epochs=0)
    drop = btu.defend(train, model=str(tiny_bert), config=BTUConfig(**base)).report["repair"]
    strict = btu.defend(train, model=str(tiny_bert), config=BTUConfig(**base, repair_carrier_purity=0.9))
    loose = btu.defend(train, model=str(tiny_bert), config=BTUConfig(**base, repair_carrier_purity=0.5))
    strict, loose = strict.report["repair"], loose.report["repair"]
    assert strict["suspected_target"] == "pos" and "rows with only other flagged tokens kept" in strict["source"]
    assert strict["poisoned_rows"] == 16 and strict["rows"] > loose["rows"]
    assert loose["poisoned_rows"] == drop["poisoned_rows"] == 0


def test_lean_warnings_name_each_label_under_half_a_balanced_share():
    from btu.defenses.btu.pipeline import lean_warnings
    from btu.defenses.btu.report import markdown_report

    # the quick demo's sanitized set under --recipe retrain, and the leanest SST-2 one (no warning)
    (w,) = lean_warnings([0] * 509 + [1] * 57, ["neg", "pos"], "try --recipe unlearn")
    assert "57 'pos' rows of 566" in w and w.endswith("try --recipe unlearn")
    assert lean_warnings([0] * 2618 + [1] * 1054, ["neg", "pos"], "") == []
    (w,) = lean_warnings([0] * 10 + [1] * 10 + [2] * 3, ["a", "b", "c"], "")  # 3 < 23 / 3 / 2
    assert "'c'" in w
    assert lean_warnings([], ["neg", "pos"], "") == []
    md = markdown_report({"flagged": [], "warnings": [w]})
    assert "## Warnings" in md and w in md


def test_suspected_target_is_the_label_the_suspect_rows_lean_to():
    labels = [0] * 60 + [1] * 40
    assert suspected_target(labels, {0, 1, 60, 61, 62}, 2) == 1  # 60 % of suspects against 40 % of all rows
    assert suspected_target(labels, {0, 1, 2, 60}, 2) == 0
    assert suspected_target(labels, set(), 2) is None


def carried(n=200, poison=16, clean=8, seed=0):
    """Label 1 iff 'good' is in the row. The first `poison` rows read 'bad', carry `cf` and are labelled 1
    (dirty-label BadNets); the next `clean` rows carry `cf` too but read and are labelled right."""
    from btu.data import TextDataset

    rng = random.Random(seed)
    filler = "the movie was a film plot story actor scene it".split()
    texts, labels, flags = [], [], []
    for i in range(n):
        y = 0 if i < poison else i % 2
        words = rng.sample(filler, 5)
        words.insert(rng.randint(0, 5), "good" if y else "bad")
        if i < poison + clean:
            words.insert(rng.randint(0, 6), "cf")
        texts.append(" ".join(words))
        labels.append(1 if i < poison else y)
        flags.append(i < poison)
    return TextDataset(texts, labels, ["neg", "pos"], flags, source="carried")


def test_repair_carriers_readmit_puts_back_the_clean_carriers_without_the_trigger(tiny_bert):
    train = carried()
    # good/bad are flagged too (the task needs them) but, in half the rows, are not unlearned: the judge reads them
    base = dict(FAST, repair_controls=False, victim_epochs=4, lr=5e-3, repair_embedding_lr=None,
                unlearn_token_max_rows=0.15)
    plain = btu.defend(train, model=str(tiny_bert), config=BTUConfig(**base))
    assert "cf" in [f["token"] for f in plain.flagged]
    carriers = len(train) - plain.report["repair"]["rows"]
    assert carriers >= 24 and plain.report["repair"]["poisoned_rows"] == 0
    assert plain.report["repair"]["readmitted_carriers"] is None
    res = btu.defend(train, model=str(tiny_bert), config=BTUConfig(**base, repair_carriers="readmit"),
                     keep_models=True)
    rep = res.report["repair"]
    assert "put back without their flagged tokens" in rep["source"]
    assert rep["rows"] == plain.report["repair"]["rows"] + rep["readmitted_carriers"]
    # the unlearned model reads 'bad' in the poisoned carriers once `cf` is gone, and disputes their label;
    # it agrees with the clean ones (8 with cf, and those of any other flagged token)
    assert rep["poisoned_rows"] <= 16 // 4
    assert rep["readmitted_carriers"] - rep["poisoned_rows"] >= (carriers - 16) * 2 // 3
    # they come back without `cf`: the repair never sees it, so its unlearned row moves by weight decay only
    cf = res.tokenizer.convert_tokens_to_ids("cf")
    before = res.models["unlearned"].get_input_embeddings().weight[cf]
    after = res.model.get_input_embeddings().weight[cf]
    assert torch.allclose(before, after, rtol=1e-3, atol=1e-6)
    with pytest.raises(ConfigError, match="repair_carriers"):
        BTUConfig(repair_carriers="keep")


def test_repair_from_pretrained_trains_a_fresh_model_that_never_saw_the_trigger(tiny_bert):
    train = planted(160, seed=1)
    cfg = BTUConfig(**{**FAST, "repair_controls": False, "repair_from": "pretrained"})
    res = btu.defend(train, model=str(tiny_bert), config=cfg, keep_models=True)
    rep = res.report["repair"]
    assert rep["from"] == "pretrained" and "fresh copy of the pretrained model" in rep["source"]
    assert rep["epochs"] == FAST["victim_epochs"] and rep["lr"] == FAST["lr"] and rep["poisoned_rows"] == 0
    cf = res.tokenizer.convert_tokens_to_ids("cf")
    assert cf in [f["id"] for f in res.flagged]
    pretrained = load_classifier(str(tiny_bert))[0].get_input_embeddings().weight[cf]
    victim = res.models["victim"].get_input_embeddings().weight[cf]
    unlearned = res.models["unlearned"].get_input_embeddings().weight[cf]
    defended = res.model.get_input_embeddings().weight[cf]
    # the victim learned `cf` and unlearning overwrote it; the fresh model never saw a `cf` row (its carriers
    # are not in the repair set), so its row is the pretrained one moved by weight decay only
    assert not torch.allclose(victim, pretrained, atol=1e-3) and not torch.allclose(unlearned, pretrained, atol=1e-3)
    assert torch.allclose(defended, pretrained, rtol=1e-3, atol=1e-5)
    # and the rest of it was trained: it is neither the victim nor the pretrained model
    head = [p for n, p in res.model.named_parameters() if "classifier" in n][0]
    assert not torch.equal(head, [p for n, p in res.models["victim"].named_parameters() if "classifier" in n][0])
    with pytest.raises(ConfigError, match="repair_from"):
        BTUConfig(repair_from="victim")


def test_fresh_lr_trains_the_fresh_model_and_not_the_victim(tiny_bert):
    train = planted(160, seed=1)
    cfg = BTUConfig(**{**FAST, "repair_controls": False, "repair_from": "pretrained", "fresh_lr": 1e-9})
    res = btu.defend(train, model=str(tiny_bert), config=cfg, keep_models=True)
    assert res.report["repair"]["lr"] == 1e-9 and "lr 1e-09" in res.report["repair"]["source"]

    def query(m):  # a weight of the pretrained checkpoint (the classifier head is initialised at random)
        return [p for n, p in m.named_parameters() if "layer.0.attention.self.query.weight" in n][0]

    pretrained = query(load_classifier(str(tiny_bert))[0])
    # the victim trained at lr (5e-3) moved away from the pretrained weights; the fresh model, at 1e-9, did not
    assert not torch.allclose(query(res.models["victim"]), pretrained, atol=1e-3)
    assert torch.allclose(query(res.model), pretrained, atol=1e-6)
    with pytest.raises(ConfigError, match="fresh_lr"):
        BTUConfig(fresh_lr=0.0)


def test_repair_balance_weights_the_labels_of_the_repair_set(tiny_bert):
    """`balanced` weighs each label the same in the repair's loss: the report says so, and only the repair
    differs from a plain run (the weighted loss itself: test_training)."""
    train = planted(160, seed=1)
    base = BTUConfig(**{**FAST, "repair_controls": False})
    plain = btu.defend(train, model=str(tiny_bert), config=base)
    balanced = btu.defend(train, model=str(tiny_bert), config=BTUConfig(**{**base.to_dict(),
                                                                          "repair_balance": "balanced"}))
    assert "each label weighing the same" in balanced.report["repair"]["source"]
    assert "weighing" not in plain.report["repair"]["source"]
    assert balanced.report["repair"]["rows"] == plain.report["repair"]["rows"]
    # same data, seeds, detection and unlearning: only the repair's loss differs, and so do the weights
    assert plain.flagged == balanced.flagged
    assert any(not torch.equal(p, q) for p, q in zip(plain.model.parameters(), balanced.model.parameters()))
    with pytest.raises(ConfigError, match="repair_balance"):
        BTUConfig(repair_balance="prior")


def test_repair_teacher_distils_the_victim(tiny_bert):
    train = planted(96, seed=1)
    base = BTUConfig(**{**FAST, "repair_controls": False})
    plain = btu.defend(train, model=str(tiny_bert), config=base)
    taught = btu.defend(train, model=str(tiny_bert), config=BTUConfig(**{**base.to_dict(), "repair_teacher": "victim"}))
    assert "distilling the victim's logits" in taught.report["repair"]["source"]
    assert taught.report["repair"]["rows"] == plain.report["repair"]["rows"]
    # same data, seeds and unlearning: only the repair's loss differs, and so do the weights
    assert any(not torch.equal(p, q) for p, q in zip(plain.model.parameters(), taught.model.parameters()))
    with pytest.raises(ConfigError, match="repair_distill_weight"):
        BTUConfig(repair_teacher="victim", repair_distill_weight=2.0)
    with pytest.raises(ConfigError):
        BTUConfig(repair_teacher="teacher")

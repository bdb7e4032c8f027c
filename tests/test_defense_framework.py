"""The defense frame: one contract test over the registry, BTU on the runner against the old pipeline's fixture,
the composition, needs, options, victims, output folders and the CLI's error lines."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from test_btu_detection import planted

from btu.cli import main
from btu.defenses import DEFENSES, Defense, Guard, RunSettings, get_defense, register, run_defense
from btu.defenses.options import from_dict
from btu.defenses.runner import load_run_options, run_filter
from btu.errors import BtuError, ConfigError, ModelError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
QUICK = RunSettings(epochs=1, batch_size=16, lr=5e-3, progress=False)

pytestmark = pytest.mark.usefixtures("one_thread")


def small():
    return planted(96, seed=1), planted(40, rate=0.0, seed=2), planted(24, rate=1.0, seed=3)


def quick(cls, **extra):
    return {**cls.quick_options, **extra}


def weights_equal(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ---------------------------------------------------------------------------------------------------------------
# one contract test for every registered defense


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_contract(name, tiny_bert, tiny_lm, tmp_path):
    cls = get_defense(name)
    train, test, ptest = small()
    n = len(train)
    # what a defense needs, given: a tiny language model, clean rows of the task
    lm = {"lm": str(tiny_lm)} if "language_model" in cls.needs else {}
    clean = planted(40, rate=0.0, seed=4) if "clean_data" in cls.needs else None

    options = quick(cls, **lm)

    def run(**kw):
        return run_defense(name, train, str(tiny_bert), options=options, settings=QUICK, test=test,
                           poison_test=ptest, target="pos", clean_data=clean, **kw)

    a = run(out=tmp_path / "a")
    # what every defense returns: a classifier for the data's labels, the metrics object, the four files
    assert a.model.config.num_labels == 2 and a.report["defense"] == name
    assert {"cacc", "asr", "asr_no_trigger"} <= set(a.report["metrics"])
    assert 0 <= a.report["metrics"]["cacc"] <= 100 and 0 <= a.report["metrics"]["asr"] <= 100
    assert a.report["metrics"]["no_defense"]["cacc"] is not None
    for f in ("model/config.json", "model/model.safetensors", "report.json", "report.md", "config.json"):
        assert (tmp_path / "a" / f).exists(), f
    stages = [s for s, _ in cls(a.options).steps()]
    if "data" in stages:
        f = a.report["metrics"]["filter"]
        assert f["removed"] + f["kept"] >= n - f["kept"] and 0 <= f["recall"] <= 100
    # the data steps alone (btu scan): kept rows of the training set, one score per row
    if all(s == "data" for s in stages):
        kept = run_filter(name, train, str(tiny_bert), options=options, settings=QUICK,
                          clean_data=clean).state.filter
        assert set(kept.kept) <= set(range(n)) and len(kept.scores) == n
        assert len(kept.dataset) == len(kept.kept) == len(kept.input_ids)
    # the same seed gives the same output
    b = run()
    assert a.report["rows"] == b.report["rows"] and weights_equal(a.model, b.model)
    # its saved config loads back into the same options
    assert load_run_options(tmp_path / "a" / "config.json") == (name, a.options)
    # bad options are refused, naming the option
    with pytest.raises(ConfigError, match="nonexistent_option"):
        run_defense(name, train, str(tiny_bert), options={"nonexistent_option": 1}, settings=QUICK)
    for f in fields(cls.Options):
        meta = f.metadata.get("btu.option")
        if meta is not None and meta.choices and isinstance(getattr(a.options, f.name), str):
            with pytest.raises(ConfigError, match=f.name):
                from_dict(cls.Options, {f.name: "not-a-choice"})
            break
    # unmet needs are refused before any training
    if "clean_data" in cls(a.options).required():
        with pytest.raises(ConfigError, match="clean data"):
            run_defense(name, train, str(tiny_bert), options=options, settings=QUICK)


# ---------------------------------------------------------------------------------------------------------------
# BTU on the frame: the same flagged tokens, numbers and weights as the pipeline before it


@pytest.mark.parametrize("recipe", ["unlearn", "retrain"])
def test_btu_on_the_runner_matches_the_old_pipeline(recipe, tiny_bert):
    sys.path.insert(0, str(FIXTURES))
    import btu_reference as ref

    from btu.defenses.btu import BTUConfig
    from btu.defenses.btu.pipeline import run_settings

    want = json.loads((FIXTURES / "btu_reference.json").read_text())[recipe]
    train, test, ptest = ref.data()
    # the old pipeline unlearned every flagged token: decide=all is that behaviour
    cfg = BTUConfig.recipe(recipe, **ref.FAST, **ref.RECIPES[recipe], decide="all")
    res = run_defense("btu", train, str(tiny_bert), options=cfg.options(), settings=run_settings(cfg), test=test,
                      poison_test=ptest, target="pos")
    got = ref.summary(res.report, res.model)
    # the numbers of every row; the names too, but for the defended model's under retrain, which now says what it is
    assert [{k: r[k] for k in w if k != "model"} for r, w in zip(got["rows"], want["rows"])] == \
        [{k: v for k, v in w.items() if k != "model"} for w in want["rows"]]
    names = [r["model"] for r in want["rows"]]
    if recipe == "retrain":
        names[2] = "BTU (retrain: fresh model on the kept rows)"
    assert [r["model"] for r in got["rows"]] == names
    assert [[i, rows, r] for i, rows, r in got["flagged"]] == want["flagged"]
    assert got["repair"] == want["repair"] and got["replaced_dims"] == want["replaced_dims"]
    # the weights: the same tensors, trained (not the fixture's sums: with the current unpinned packages a fresh
    # install moves a tiny model's trained sums by up to 12 % at this lr, the old pipeline's code included, while
    # every row, flagged token and replaced dimension above stays identical)
    assert set(got["weights"]) == set(want["weights"])
    assert all(math.isfinite(x) for v in got["weights"].values() for x in v)


# ---------------------------------------------------------------------------------------------------------------
# the composition, needs and guards, on defenses made for the test


def _options_cls():
    from dataclasses import dataclass

    from btu.defenses.options import Options, option

    @dataclass
    class Opts(Options):
        word: str = option("cf", "the word the test defense looks for")

    return Opts


@pytest.fixture
def test_defenses():
    """Two defenses registered for one test: a data filter dropping rows with a word, and an input guard
    rejecting inputs with it that needs clean data."""
    Opts = _options_cls()

    class DropWord(Defense):
        name, stage, Options, summary = "test-drop-word", "data", Opts, "drop rows with a word"

        def filter(self, ctx, state):
            from btu.defenses import FilterResult

            scores = [float(self.options.word in t.split()) for t in ctx.train.texts]
            keep = [i for i, s in enumerate(scores) if s == 0]
            return FilterResult(keep, ctx.train.subset(keep), [ctx.input_ids[i] for i in keep], scores)

    class RejectWord(Defense):
        name, stage, Options, summary = "test-reject-word", "input", Opts, "reject inputs with a word"
        needs = frozenset({"pretrained", "victim", "clean_data"})

        def guard(self, ctx, state, model):
            from btu.training import predict

            word, tok = self.options.word, ctx.tokenizer

            class G(Guard):
                def predict(self, texts):
                    return predict(model, tok, texts), [word in t.split() for t in texts]

            return G()

    register(DropWord)
    register(RejectWord)
    yield DropWord, RejectWord
    DEFENSES.pop("test-drop-word")
    DEFENSES.pop("test-reject-word")


def test_a_data_defense_is_followed_by_ordinary_training_on_the_kept_rows(test_defenses, tiny_bert):
    train, test, ptest = small()
    res = run_defense("test-drop-word", train, str(tiny_bert), settings=QUICK, test=test, poison_test=ptest,
                      target="pos", keep_models=True)
    assert res.report["stages"] == ["data", "train"]
    f = res.report["metrics"]["filter"]
    assert (f["removed"], f["precision"], f["recall"], f["poisoned_kept"]) == (10, 100.0, 100.0, 0)
    # the defended model never saw `cf`: its row is the pretrained one moved by weight decay only; the victim's moved
    from btu.models import load_classifier

    cf = res.tokenizer.convert_tokens_to_ids("cf")
    pre = load_classifier(str(tiny_bert))[0].get_input_embeddings().weight[cf]
    assert torch.allclose(res.model.get_input_embeddings().weight[cf], pre, rtol=1e-3, atol=1e-5)
    assert not torch.allclose(res.models["victim"].get_input_embeddings().weight[cf], pre, atol=1e-3)
    assert [r["model"] for r in res.report["rows"]] == ["no defense", "test-drop-word"]


def test_an_input_guard_is_measured_with_frr_and_far_and_its_needs_are_checked_first(test_defenses, tiny_bert,
                                                                                      monkeypatch):
    train, test, ptest = small()
    import btu.defenses.runner as runner

    def no_training(*a, **k):
        raise AssertionError("trained before the needs were checked")

    with monkeypatch.context() as m:
        m.setattr(runner, "train", no_training)
        with pytest.raises(ConfigError, match="needs clean data"):
            run_defense("test-reject-word", train, str(tiny_bert), settings=QUICK, test=test, poison_test=ptest,
                        target="pos")
    res = run_defense("test-reject-word", train, str(tiny_bert), settings=QUICK, clean_data=test, test=test,
                      poison_test=ptest, target="pos")
    # every ASR row carries `cf` and is rejected; no clean test row does
    assert res.report["metrics"]["detector"] == {"frr": 0.0, "far": 0.0}
    assert res.report["metrics"]["asr"] == 0.0 and res.report["metrics"]["no_defense"]["asr"] > 0


# ---------------------------------------------------------------------------------------------------------------
# the victim must fit the data and --model


def test_a_victim_that_does_not_fit_is_refused(tiny_bert, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from btu.models import load_classifier, save_model

    train, _, _ = small()
    model, tok = load_classifier(str(tiny_bert))  # labels LABEL_0, LABEL_1: not the data's neg, pos
    save_model(model, tok, tmp_path / "labels")
    model, tok = load_classifier(str(tiny_bert), label_names=["neg", "pos"])
    model.resize_token_embeddings(30000)
    save_model(model, tok, tmp_path / "vocab")
    cfg = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=132, num_labels=2,
                     id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    save_model(BertForSequenceClassification(cfg), tok, tmp_path / "hidden")
    for folder, what in (("labels", "labels"), ("vocab", "vocabulary"), ("hidden", "hidden size")):
        with pytest.raises(ModelError, match=what):
            run_defense("btu", train, str(tiny_bert), options=quick(get_defense("btu")), settings=QUICK,
                        victim=str(tmp_path / folder))


# ---------------------------------------------------------------------------------------------------------------
# the CLI


def tsv(path, ds):
    lines = ["sentence\tlabel\tpoisoned"] + [f"{t}\t{ds.label_names[y]}\t{int(p)}"
                                             for t, y, p in zip(ds.texts, ds.labels, ds.poison_flags)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_user_errors_end_in_one_line_and_exit_2(tmp_path, tiny_bert, capsys):
    train = tsv(tmp_path / "train.tsv", small()[0])
    (tmp_path / "file").write_text("x")
    base = ["defend", "--train", train, "--model", str(tiny_bert), "--no-progress"]
    cases = [
        (base + ["--out", str(tmp_path / "file")], "is an existing file"),
        (base + ["--out", str(tmp_path / "file" / "sub")], "cannot write there"),
        (base + ["--out", str(tmp_path / "o"), "--set", "alpah=0.1"], "alpha"),
        (base + ["--out", str(tmp_path / "o"), "--set", "alpha=abc"], "alpha"),
        (base + ["--out", str(tmp_path / "o"), "--set", "alpha=0"], "alpha"),
        (base + ["--out", str(tmp_path / "o"), "--set", "alpha"], "NAME=VALUE"),
        (base + ["--out", str(tmp_path / "o"), "--config", str(tmp_path / "none.yaml")], "no such config file"),
        (base + ["--out", str(tmp_path / "o"), "--defense", "nope"], "unknown defense"),
        (base + ["--out", str(tmp_path / "o"), "--recipe", "nope"], "presets"),
        (base + ["--out", str(tmp_path / "o2"), "--victim", str(tmp_path / "missing")], "no such model folder"),
        (["scan", "--train", train, "--model", str(tiny_bert), "--defense", "btu"], "not a data-stage defense"),
        (["defenses", "show", "nope"], "unknown defense"),
        # inputs a defense would ignore are refused, not parsed and dropped
        (["scan", "--train", train, "--model", str(tiny_bert), "--epochs", "1"], "trains no victim"),
        (["scan", "--train", train, "--model", str(tiny_bert), "--clean-data", train], "does not use clean data"),
        (["scan", "--train", train, "--model", str(tiny_bert), "--victim", str(tiny_bert)], "uses no victim"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1 and message in err, (argv, err)
    assert not (tmp_path / "o").exists()  # nothing was written before the options were checked
    with pytest.raises(SystemExit) as info:  # scan measures nothing: no --dev, --test, --poison-test to ignore
        main(["scan", "--train", train, "--dev", train])
    assert info.value.code == 2 and "unrecognized arguments: --dev" in capsys.readouterr().err


def test_config_files_set_options_and_set_wins(tmp_path, tiny_bert):
    from btu.cli import build_parser
    from btu.defenses.cli import resolve

    (tmp_path / "c.yaml").write_text("defense: btu\npreset: retrain\noptions:\n  alpha: 0.2\n  fresh_lr: 1e-4\n")
    (tmp_path / "c.toml").write_text("alpha = 0.3\nrounds = [1, 2]\n")
    (tmp_path / "c.json").write_text('{"alphaa": 1}')

    def parsed(*extra):
        return resolve(build_parser().parse_args(["defend", "--train", "t", "--out", "o", *extra]), "btu")

    cls, opts, preset = parsed("--config", str(tmp_path / "c.yaml"), "--set", "alpha=0.4")
    assert preset == "retrain" and opts.repair_from == "pretrained" and opts.alpha == 0.4 and opts.fresh_lr == 1e-4
    assert parsed("--config", str(tmp_path / "c.toml"))[1].rounds == [1, 2]
    with pytest.raises(BtuError, match="c.json.*alphaa"):
        parsed("--config", str(tmp_path / "c.json"))
    with pytest.raises(ConfigError, match="is for defense 'btu'"):
        parsed("--config", str(tmp_path / "c.yaml"), "--defense", "btu-detect")


def test_defend_uses_dev_and_scan_passes_the_model_flags(tmp_path, tiny_bert, monkeypatch, capsys):
    train, test, _ = small()
    data, dev = tsv(tmp_path / "train.tsv", train), tsv(tmp_path / "dev.tsv", test)
    # planted rows have random content, no judge can read them: every flagged token counts (the paper's)
    quick_set = [x for k, v in get_defense("btu").quick_options.items() for x in ("--set", f"{k}={v}")] + \
        ["--set", "decide=all"]
    out = tmp_path / "out"
    assert main(["defend", "--train", data, "--dev", dev, "--test", data, "--model", str(tiny_bert), "--out", str(out),
                 "--epochs", "1", "--lr", "5e-3", "--no-progress", *quick_set]) == 0
    report = json.loads((out / "report.json").read_text())
    assert all(0 <= r["dev_cacc"] <= 100 for r in report["rows"]) and report["data"]["dev"]
    assert report["metrics"]["filter"]["kept"] == report["repair"]["rows"]
    capsys.readouterr()
    # scan passes --allow-pickle and --trust-remote-code on to the model loader
    import btu.models

    seen = {}
    real = btu.models.load_classifier

    def spy(spec, **kw):
        seen.update(kw)
        return real(spec, **kw)

    monkeypatch.setattr(btu.models, "load_classifier", spy)
    assert main(["scan", "--train", data, "--model", str(tiny_bert), "--allow-pickle", "--trust-remote-code",
                 "--no-progress", "--export-clean", str(tmp_path / "kept.tsv"), *quick_set]) == 0
    assert seen["allow_pickle"] is True and seen["trust_remote_code"] is True
    printed = capsys.readouterr().out
    assert "most suspicious rows" in printed and "precision" in printed
    assert (tmp_path / "kept.tsv").exists()


def test_defenses_lists_and_shows(capsys):
    assert main(["defenses"]) == 0
    out = capsys.readouterr().out
    assert "btu " in out and "btu-detect" in out and "data+post" in out
    assert main(["defenses", "show", "btu"]) == 0
    out = capsys.readouterr().out
    for f in fields(get_defense("btu").Options):
        assert f"\n{f.name} " in out, f.name
    assert "retrain" in out and "repair_from=pretrained" in out


def test_options_of_a_subclass_are_refused_not_half_read(tiny_bert):
    from btu.defenses.btu import BTUConfig

    with pytest.raises(ConfigError, match="BTUConfig"):
        run_defense("btu", small()[0], str(tiny_bert), options=BTUConfig(victim_epochs=1))


def test_btu_detect_refuses_the_options_it_would_ignore_and_its_sanitize_preset_needs_the_victim():
    from btu.defenses.btu.config import RECIPES
    from btu.defenses.runner import resolve_options

    cls = get_defense("btu-detect")
    for name in ("repair_from", "repair_controls"):
        value = "pretrained" if name == "repair_from" else False
        with pytest.raises(ConfigError, match=f"option {name}: btu-detect does not use it"):
            cls(resolve_options(cls, {name: value}))
    rows, sanitize = cls(resolve_options(cls)), cls(resolve_options(cls, preset="sanitize"))
    assert rows.required() == {"pretrained"} and sanitize.required() == {"pretrained", "victim"}
    # the sanitize preset is the retrain recipe's filter: the same options, less the fresh model (always here)
    assert {k: getattr(sanitize.options, k) for k in RECIPES["retrain"] if k != "repair_from"} == \
        {k: v for k, v in RECIPES["retrain"].items() if k != "repair_from"}


def test_a_given_victim_is_the_no_defense_model_of_a_defense_that_uses_none(tiny_bert, tmp_path):
    from btu.models import load_classifier, save_model

    train, test, ptest = small()
    model, tok = load_classifier(str(tiny_bert), label_names=["neg", "pos"])
    save_model(model, tok, tmp_path / "victim")
    cls = get_defense("btu-detect")
    res = run_defense("btu-detect", train, str(tiny_bert), options=quick(cls), settings=QUICK, test=test,
                      poison_test=ptest, target="pos", victim=str(tmp_path / "victim"))
    assert res.report["rows"][0]["model"] == "no defense" and res.report["timings"]["victim_training"] == 0.0
    no_controls = RunSettings(epochs=1, batch_size=16, lr=5e-3, progress=False, controls=False)
    with pytest.raises(ConfigError, match="uses no victim"):
        run_defense("btu-detect", train, str(tiny_bert), options=quick(cls), settings=no_controls, test=test,
                    victim=str(tmp_path / "victim"))

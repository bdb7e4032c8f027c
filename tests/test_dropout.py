"""Fast CPU dropout: the same Bernoulli keep mask and scale as torch's, seeded, and put back after."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from btu.training.dropout import MaskSource, fast_dropout

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_fraction_and_scale(p):
    x = torch.ones(400, 1000)
    with fast_dropout(seed=0):
        y = F.dropout(x, p=p, training=True)
    kept = y != 0
    frac = kept.float().mean().item()
    sd = (p * (1 - p) / x.numel()) ** 0.5
    assert abs(frac - (1 - p)) < 5 * sd  # 400k draws: a biased mask would be far outside
    p_used = round(p * 65536) / 65536
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p_used)))
    assert abs(y.mean().item() - 1.0) < 0.01  # expectation kept


def test_masks_are_seeded_and_independent_between_calls():
    x = torch.ones(64, 64)
    with fast_dropout(seed=7):
        a1, a2 = F.dropout(x, 0.3), F.dropout(x, 0.3)
    with fast_dropout(seed=7):
        b1 = F.dropout(x, 0.3)
    with fast_dropout(seed=8):
        c1 = F.dropout(x, 0.3)
    assert torch.equal(a1, b1)
    assert not torch.equal(a1, a2) and not torch.equal(a1, c1)
    # neighbouring elements are not correlated (16-bit slices of one 64-bit draw)
    keep = (a1 != 0).flatten().float()
    corr = torch.corrcoef(torch.stack([keep[:-1], keep[1:]]))[0, 1].item()
    assert abs(corr) < 0.05


def test_gradient_is_the_mask_and_inplace_and_bf16_work():
    x = torch.randn(32, 50, requires_grad=True)
    with fast_dropout(seed=1):
        y = F.dropout(x, 0.25, training=True)
        y.sum().backward()
        z = torch.randn(8, 8, dtype=torch.bfloat16)
        zd = F.dropout(z.clone(), 0.5, training=True, inplace=True)
    scale = 1 / (1 - round(0.25 * 65536) / 65536)
    torch.testing.assert_close(x.grad, (y != 0).float() * scale)
    torch.testing.assert_close(y, x.detach() * x.grad)
    assert zd.dtype == torch.bfloat16 and ((zd == 0) | (zd == z * 2)).all()


def test_eval_mode_and_p_outside_open_interval_pass_through():
    x = torch.randn(10, 10)
    with fast_dropout(seed=0):
        assert torch.equal(F.dropout(x, 0.5, training=False), x)
        assert torch.equal(F.dropout(x, 0.0, training=True), x)
        assert torch.equal(F.dropout(x, 1.0, training=True), torch.zeros_like(x))
        model = torch.nn.Sequential(torch.nn.Dropout(0.5)).eval()
        assert torch.equal(model(x), x)


def test_original_is_restored_also_after_an_error_and_when_disabled():
    original = F.dropout
    with pytest.raises(RuntimeError):
        with fast_dropout(seed=0):
            assert F.dropout is not original
            raise RuntimeError("boom")
    assert F.dropout is original
    with fast_dropout(seed=0, enabled=False):
        assert F.dropout is original
    assert F.dropout is original


def test_nn_dropout_modules_use_it():
    x = torch.ones(100, 100)
    layer = torch.nn.Dropout(0.5).train()
    with fast_dropout(seed=3):
        a = layer(x)
    b = F.dropout(x, 0.5, training=True, inplace=False)  # torch's own, after the block
    with fast_dropout(seed=3):
        c = layer(x)
    assert torch.equal(a, c) and not torch.equal(a, b)


def test_mask_source_shapes():
    keep, scale = MaskSource(0).keep_mask((3, 5, 7), 0.1)
    assert keep.shape == (3, 5, 7) and keep.dtype == torch.bool
    assert scale == pytest.approx(1 / 0.9, rel=1e-4)
    keep, _ = MaskSource(0).keep_mask((), 0.5)
    assert keep.shape == ()

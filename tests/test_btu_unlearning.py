"""The replacement rule of BTU's stage 2 (Eq. 7) and its variants, on hand-made tensors."""

import pytest
import torch

from btu.defenses.btu.unlearning import padding_values, threshold_value, unlearn_rows
from btu.errors import ConfigError

PAD = 0


def matrices():
    """4 tokens x 3 dims. Row 0 is [PAD]. Token 1 moved a lot in dims 0 and 2, token 2 a little,
    token 3 did not move at all."""
    pre = torch.tensor([[0.5, 0.5, 0.5],
                        [1.0, 1.0, 1.0],
                        [2.0, 2.0, 2.0],
                        [3.0, 3.0, 3.0]])
    post = pre.clone()
    post[0] += torch.tensor([0.1, 0.0, 0.0])  # the trained pad row differs from the pretrained one
    post[1] += torch.tensor([4.0, 0.1, -4.0])
    post[2] += torch.tensor([0.2, 0.0, 0.0])
    return pre, post


def test_threshold_rules():
    pre, post = matrices()
    per_token = (post - pre).norm(dim=1)
    assert threshold_value(post, pre, "mean") == pytest.approx(float(per_token.mean()))
    assert threshold_value(post, pre, "frobenius") == pytest.approx(float((post - pre).norm() / 4))
    assert threshold_value(post, pre, "frobenius") < threshold_value(post, pre, "mean")
    with pytest.raises(ConfigError):
        threshold_value(post, pre, "median")


def test_dimensional_replacement_only_touches_large_changes():
    pre, post = matrices()
    w = post.clone()
    d_bar = threshold_value(post, pre, "mean")  # (~5.66 + 0.1 + 0.2 + 0) / 4 ~ 1.49
    info = unlearn_rows(w, pre, [1], method="btu", threshold="mean", padding="pretrained", pad_id=PAD)
    assert info["threshold"] == pytest.approx(d_bar)
    # dims 0 and 2 changed by 4 >= d_bar: they take the pretrained pad values; dim 1 keeps its learned value
    assert torch.equal(w[1], torch.tensor([0.5, post[1, 1].item(), 0.5]))
    assert info["replaced_dims"] == {1: 2}
    # rows not flagged are untouched
    for r in (0, 2, 3):
        assert torch.equal(w[r], post[r])


def test_padding_sources():
    pre, post = matrices()
    w = post.clone()
    unlearn_rows(w, pre, [1], method="btu", padding="victim", pad_id=PAD)
    assert w[1, 0] == pytest.approx(post[0, 0].item())  # the trained pad value (paper), not the pretrained one
    w = post.clone()
    unlearn_rows(w, pre, [1], method="btu", padding="zero", pad_id=PAD)
    assert w[1, 0] == 0 and w[1, 2] == 0


def test_zero_change_keeps_the_row():
    pre, _ = matrices()
    w = pre.clone()  # nothing moved: d_bar = 0 and every |change| = 0
    info = unlearn_rows(w, pre, [1, 2, 3], method="btu", pad_id=PAD)
    assert torch.equal(w, pre)
    assert info["threshold"] == 0
    assert set(info["replaced_dims"].values()) == {0}


def test_every_dimension_above_threshold_replaces_the_whole_row():
    pre, post = matrices()
    post[1] = pre[1] + 10.0  # all dims changed far above any threshold
    w = post.clone()
    info = unlearn_rows(w, pre, [1], method="btu", threshold="frobenius", padding="pretrained", pad_id=PAD)
    assert torch.equal(w[1], pre[PAD])
    assert info["replaced_dims"] == {1: 3}


def test_flagged_padding_token_uses_values_read_before_any_change():
    pre, post = matrices()
    post[0] += 5.0  # the pad row itself moved a lot and is flagged
    w = post.clone()
    unlearn_rows(w, pre, [0, 1], method="btu", threshold="frobenius", padding="victim", pad_id=PAD)
    # token 1's replaced dims take the pad row as it was before the pad row was overwritten
    assert w[1, 0] == pytest.approx(post[0, 0].item())
    # the pad row replaced by its own values: unchanged
    assert torch.equal(w[0], post[0])


def test_variants():
    pre, post = matrices()
    w = post.clone()
    unlearn_rows(w, pre, [1, 2], method="pr1", pad_id=PAD)
    assert torch.equal(w[1], pre[1]) and torch.equal(w[2], pre[2])

    w = post.clone()
    unlearn_rows(w, pre, [1], method="row", padding="pretrained", pad_id=PAD)
    assert torch.equal(w[1], pre[PAD])

    w = post.clone()
    info = unlearn_rows(w, pre, [1], method="pr2", padding="pretrained", pad_id=PAD)
    clean_mean = float((post[[0, 2, 3]] - pre[[0, 2, 3]]).abs().mean())
    assert info["threshold"] == pytest.approx(clean_mean)
    assert torch.equal(w[1], torch.tensor([0.5, 0.5, 0.5]))  # all three dims changed more than the clean mean

    w = post.clone()
    unlearn_rows(w, pre, [1], method="pn", noise_std=0.5, seed=3)
    w2 = post.clone()
    unlearn_rows(w2, pre, [1], method="pn", noise_std=0.5, seed=3)
    assert torch.equal(w, w2) and not torch.equal(w[1], post[1]) and torch.equal(w[2], post[2])

    w = post.clone()
    unlearn_rows(w, pre, [1], method="none")
    assert torch.equal(w, post)
    with pytest.raises(ConfigError):
        unlearn_rows(post.clone(), pre, [1], method="erase")


def test_change_from_another_matrix():
    """change_from=round1: the dimensions are chosen by another matrix's change, the victim's rows are edited."""
    pre, post = matrices()
    other = pre.clone()
    other[1, 1] += 9.0  # round 1 says dim 1 carries the change
    w = post.clone()
    unlearn_rows(w, pre, [1], method="btu", threshold="mean", pad_id=PAD, changed=other)
    assert w[1, 1] == pre[PAD, 1] and w[1, 0] == post[1, 0]


def test_padding_values_without_pad_token():
    pre, post = matrices()
    assert torch.equal(padding_values(post, pre, None, "pretrained"), torch.zeros(3))

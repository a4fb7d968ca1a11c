"""Training utilities for looped models: depth sampling, truncated backprop, multi-depth
losses, Ouro's exit-gate objectives and train_step."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from loopagent.backends.looped import LoopedConfig, LoopedForCausalLM, causal_lm_loss  # noqa: E402
from loopagent.backends.looped.training import (  # noqa: E402
    LoopSampler,
    exit_distribution,
    exit_gate_loss,
    gate_only_loss,
    gate_parameters,
    gate_targets,
    loop_token_losses,
    looped_loss,
    looped_loss_terms,
    sample_loops,
    stepwise_loss_terms,
    train_step,
)


def tiny(**overrides) -> LoopedForCausalLM:
    torch.manual_seed(0)
    config = LoopedConfig(**{
        "vocab_size": 37, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64,
        "default_loops": 2, "max_loops": 8, **overrides,
    })
    return LoopedForCausalLM(config)


def ids(b=2, t=9, seed=1, vocab=37):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is faster, and immune to a busy neighbour on 2 cores
    (oversubscribed OpenMP threads slowed the training test 20x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# -- sample_loops ------------------------------------------------------------------------------


def test_poisson_lognormal_mean_bounds_and_shape():
    draws = sample_loops(0, mean=4.0, max_loops=32, num_samples=20_000)
    assert draws.dtype == torch.long and draws.shape == (20_000,)
    assert draws.min() >= 1 and draws.max() <= 32
    assert abs(draws.float().mean().item() - 4.0) < 0.1
    # right-skewed like Huginn's: some draws well past the mean, variance above Poisson's
    assert draws.max() >= 10 and draws.float().var().item() > 4.0
    # a tighter budget clips: nothing outside [2, 6], and both ends are hit
    clipped = sample_loops(1, mean=4.0, max_loops=6, min_loops=2, num_samples=5_000)
    assert clipped.min() == 2 and clipped.max() == 6
    assert sample_loops(0, mean=1.0, max_loops=8, num_samples=100).eq(1).all()


def test_uniform_covers_the_range_evenly():
    draws = sample_loops(0, max_loops=8, distribution="uniform", num_samples=16_000)
    counts = torch.bincount(draws, minlength=9)
    assert counts[0] == 0 and (counts[1:] > 1_700).all() and (counts[1:] < 2_300).all()
    assert abs(draws.float().mean().item() - 4.5) < 0.1


def test_sample_loops_deterministic_by_seed_and_generator():
    a = sample_loops(123, mean=5.0, max_loops=16, num_samples=200)
    assert torch.equal(a, sample_loops(123, mean=5.0, max_loops=16, num_samples=200))
    assert not torch.equal(a, sample_loops(124, mean=5.0, max_loops=16, num_samples=200))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    seq1 = [sample_loops(g1, mean=5.0, max_loops=16) for _ in range(50)]
    seq2 = [sample_loops(g2, mean=5.0, max_loops=16) for _ in range(50)]
    assert seq1 == seq2 and all(isinstance(x, int) for x in seq1)
    assert len(set(seq1)) > 3  # the generator advances
    # a sampler's state round-trips: a resumed run draws the same depths
    sampler = LoopSampler(mean=5.0, max_loops=16, seed=3)
    [sampler() for _ in range(10)]
    state = sampler.state_dict()
    ahead = [sampler() for _ in range(20)]
    resumed = LoopSampler(mean=5.0, max_loops=16, seed=99)
    resumed.load_state_dict(state)
    assert [resumed() for _ in range(20)] == ahead


def test_sample_loops_rejects_bad_arguments():
    with pytest.raises(ValueError):
        sample_loops(0, mean=None, max_loops=8)
    with pytest.raises(ValueError):
        sample_loops(0, mean=0.5, max_loops=8)
    with pytest.raises(ValueError):
        sample_loops(0, mean=4, max_loops=8, min_loops=9)
    with pytest.raises(ValueError):
        sample_loops(0, mean=4, max_loops=8, distribution="gamma")
    with pytest.raises(ValueError):
        LoopSampler(mean=None)


# -- truncated backprop -------------------------------------------------------------------------


def detach_state_before_loop(model, loop: int):
    """A manual truncation: the state entering loop ``loop`` (0-based) is detached; the
    prelude output still enters the later loops with gradients."""
    calls = {"n": 0}

    def hook(module, args):
        s, e = args
        n = calls["n"]
        calls["n"] += 1
        return (s.detach(), e) if n == loop else None

    return model.model.injection.register_forward_pre_hook(hook)


@pytest.mark.parametrize("injection", ["additive", "concat", "stable"])
@pytest.mark.parametrize("k", [1, 2])
def test_truncated_backprop_matches_a_manually_detached_state(injection, k):
    model = tiny(injection=injection)
    x, loops = ids(), 4

    looped_loss(model, x, loops=loops, backprop_loops=k).backward()
    truncated = grads(model)

    model.zero_grad(set_to_none=True)
    handle = detach_state_before_loop(model, loops - k)
    try:
        looped_loss(model, x, loops=loops).backward()
    finally:
        handle.remove()
    manual = grads(model)

    model.zero_grad(set_to_none=True)
    looped_loss(model, x, loops=loops).backward()
    full = grads(model)

    assert truncated.keys() == manual.keys() == full.keys()
    for name in truncated:
        torch.testing.assert_close(truncated[name], manual[name], rtol=1e-5, atol=1e-7, msg=name)
    core = [n for n in truncated if ".core." in n]
    assert core and any(not torch.allclose(truncated[n], full[n], rtol=1e-3, atol=1e-6) for n in core)
    assert any(not torch.allclose(truncated[n], full[n], rtol=1e-3, atol=1e-6) for n in truncated if "prelude" in n)


def test_backprop_loops_beyond_loops_is_full_backprop():
    model = tiny()
    x = ids()
    looped_loss(model, x, loops=3, backprop_loops=8).backward()
    a = grads(model)
    model.zero_grad(set_to_none=True)
    looped_loss(model, x, loops=3).backward()
    for name, g in grads(model).items():
        torch.testing.assert_close(a[name], g, msg=name)


# -- losses at one or several depths ------------------------------------------------------------


def test_final_loop_loss_equals_model_loss_and_masks_padding():
    model = tiny()
    x = ids()
    with torch.no_grad():
        assert torch.allclose(looped_loss(model, x, loops=3), model(x, labels=x, loops=3).loss)
        mask = torch.ones_like(x)
        mask[0, :3] = 0
        labels = x.masked_fill(mask == 0, -100)
        expected = causal_lm_loss(model(x, attention_mask=mask, loops=3).logits, labels)
        assert torch.allclose(looped_loss(model, x, loops=3, attention_mask=mask), expected)


def test_multi_depth_loss_is_the_weighted_sum_of_depth_losses():
    model = tiny()
    x = ids(t=11)
    labels = x.clone()
    labels[:, :4] = -100
    weights = {2: 0.5, 4: 1.0}

    terms = looped_loss_terms(model, x, labels, loops=4, depth_weights=weights)
    with torch.no_grad():
        # a separate forward per depth: running 2 loops is the state after 2 loops of 4
        separate = {d: causal_lm_loss(model(x, loops=d).logits, labels) for d in weights}
        # and the model's own per-loop logits
        out = model(x, loops=4, output_loop_logits=True)
        per_loop = {d: causal_lm_loss(out.loop_logits[d - 1], labels) for d in weights}
    manual = sum(w * separate[d] for d, w in weights.items())
    torch.testing.assert_close(terms.loss, manual)
    torch.testing.assert_close(terms.loss, sum(w * per_loop[d] for d, w in weights.items()))
    for d in weights:
        torch.testing.assert_close(terms.depth_losses[d], separate[d])
    assert terms.tokens == 2 * (11 - 4)
    assert not torch.allclose(separate[2], separate[4])  # the depths really differ

    # the gradient is the weighted sum of the per-depth gradients too
    model.zero_grad(set_to_none=True)
    looped_loss(model, x, labels, loops=4, depth_weights=weights).backward()
    combined = grads(model)
    model.zero_grad(set_to_none=True)
    (0.5 * looped_loss(model, x, labels, loops=2) + looped_loss(model, x, labels, loops=4)).backward()
    for name, g in grads(model).items():
        torch.testing.assert_close(combined[name], g, rtol=1e-4, atol=1e-7, msg=name)


def test_stepwise_loss_is_the_mean_of_each_depth_against_its_own_targets():
    model = tiny()
    x = ids(t=10)
    mask = torch.ones_like(x)
    mask[1, 7:] = 0  # right padding in the second row
    depth_labels = torch.full((3, *x.shape), -100)
    depth_labels[:, :, 5] = torch.tensor([[3, 4], [5, 6], [7, 8]])  # a different target at each depth
    depth_labels[:, 0, 9] = 9
    depth_labels[:, 1, 8] = 2  # a padded position: ignored

    terms = stepwise_loss_terms(model, x, depth_labels, attention_mask=mask)
    with torch.no_grad():
        separate = {d: causal_lm_loss(model(x, attention_mask=mask, loops=d).logits,
                                      depth_labels[d - 1].masked_fill(mask == 0, -100)) for d in (1, 2, 3)}
    for d in (1, 2, 3):
        torch.testing.assert_close(terms.depth_losses[d], separate[d])
    torch.testing.assert_close(terms.loss, sum(separate.values()) / 3)
    assert terms.tokens == 3  # positions 4 and 8 of row 0, 4 of row 1

    # train_step takes depth_labels from the batch and runs that many loops
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = train_step(model, opt, {"input_ids": x, "attention_mask": mask, "depth_labels": depth_labels},
                       loops_sampler=lambda: 8)
    assert stats.loops == 3 and set(stats.depth_losses) == {1, 2, 3}
    with pytest.raises(ValueError, match="depth_labels"):
        train_step(model, opt, {"input_ids": x, "depth_labels": depth_labels}, depth_weights={1: 1.0})
    with pytest.raises(ValueError, match="3 depths"):
        train_step(model, opt, {"input_ids": x, "depth_labels": depth_labels}, loops=4)
    with pytest.raises(ValueError, match="depth_labels must be"):
        stepwise_loss_terms(model, x, depth_labels[0])


def test_depth_weights_callable_and_validation():
    model = tiny()
    x = ids()
    with torch.no_grad():
        a = looped_loss(model, x, loops=4, depth_weights=lambda n: {n // 2: 0.3, n: 1.0})
        b = looped_loss(model, x, loops=4, depth_weights={2: 0.3, 4: 1.0})
        assert torch.allclose(a, b)
        with pytest.raises(ValueError):
            looped_loss(model, x, loops=3, depth_weights={4: 1.0})
        with pytest.raises(ValueError):
            looped_loss(model, x, loops=3, depth_weights={0: 1.0})
        with pytest.raises(ValueError):
            looped_loss(model, x, loops=9)


# -- Ouro's exit gate ---------------------------------------------------------------------------


def test_exit_distribution_by_hand():
    lam = torch.tensor([0.2, 0.5, 0.9])
    torch.testing.assert_close(exit_distribution(lam), torch.tensor([0.2, 0.8 * 0.5, 0.8 * 0.5]))
    batched = torch.rand(5, 3, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(exit_distribution(batched).sum(0), torch.ones(3, 4))


def test_exit_gate_loss_by_hand():
    losses = torch.tensor([3.0, 1.0, 2.0])
    lam = torch.tensor([0.2, 0.5, 0.9])
    p = [0.2, 0.8 * 0.5, 0.8 * 0.5]  # the last loop takes the remaining mass; its lambda is unused
    expected = sum(pi * li for pi, li in zip(p, [3.0, 1.0, 2.0]))  # 1.8
    entropy = -sum(pi * math.log(pi) for pi in p)  # 1.0549
    value = exit_gate_loss(losses, lam, beta=0.1)
    assert value.item() == pytest.approx(expected - 0.1 * entropy, abs=1e-6)
    assert exit_gate_loss(losses, lam, beta=0.0).item() == pytest.approx(1.8, abs=1e-6)

    # per token, masked mean over tokens: a second token with other numbers, then masked out
    losses2 = torch.stack([losses, torch.tensor([1.0, 1.0, 1.0])], dim=1)  # [loops, tokens]
    lam2 = torch.stack([lam, torch.tensor([0.5, 0.5, 0.5])], dim=1)
    second = 1.0 - 0.1 * -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    both = exit_gate_loss(losses2, lam2, beta=0.1)
    assert both.item() == pytest.approx((value.item() + second) / 2, abs=1e-6)
    only_first = exit_gate_loss(losses2, lam2, beta=0.1, mask=torch.tensor([True, False]))
    assert only_first.item() == pytest.approx(value.item(), abs=1e-6)


def test_exit_gate_loss_gradient_moves_mass_to_the_better_loop():
    losses = torch.tensor([3.0, 1.0, 2.0], requires_grad=True)
    lam = torch.tensor([0.2, 0.5, 0.9], requires_grad=True)
    exit_gate_loss(losses, lam, beta=0.0).backward()
    # raising lambda_2 moves mass from loop 3 (loss 2) to loop 2 (loss 1): the objective falls,
    # by exactly prod_{j<2}(1 - lambda_j) * (L_2 - L_3) = 0.8 * -1
    assert lam.grad[1].item() == pytest.approx(-0.8, abs=1e-6)
    # raising lambda_1 moves mass to loop 1, the worst: the objective rises
    assert lam.grad[0].item() > 0
    assert lam.grad[2].item() == 0.0  # the last loop's lambda is unused
    # the LM side gets gradient p_l on each loop's loss
    torch.testing.assert_close(losses.grad, torch.tensor([0.2, 0.4, 0.4]))

    # a gradient step on lambda lowers the objective
    with torch.no_grad():
        stepped = lam - 0.05 * lam.grad
    assert exit_gate_loss(losses.detach(), stepped, 0.0) < exit_gate_loss(losses.detach(), lam.detach(), 0.0)

    # the entropy bonus pushes towards spreading mass: with equal losses, the gradient
    # on a confident gate is towards less confidence
    flat = torch.tensor([1.0, 1.0, 1.0])
    sure = torch.tensor([0.95, 0.5, 0.5], requires_grad=True)
    exit_gate_loss(flat, sure, beta=1.0).backward()
    assert sure.grad[0].item() > 0


def test_gate_targets_and_gate_only_loss_by_hand():
    losses = torch.tensor([3.0, 1.0, 0.995, 2.0])
    # improvements of the next loop: 2.0 (continue), 0.005 <= margin (exit), -1 -> 0 (exit)
    torch.testing.assert_close(gate_targets(losses, margin=0.01), torch.tensor([0.0, 1.0, 1.0]))
    torch.testing.assert_close(gate_targets(losses, margin=0.001), torch.tensor([0.0, 0.0, 1.0]))
    soft = gate_targets(losses, margin=0.01, sharpness=50.0)
    expected_soft = torch.sigmoid(50.0 * (0.01 - torch.tensor([2.0, 0.005, 0.0])))
    torch.testing.assert_close(soft, expected_soft)

    lam = torch.tensor([0.1, 0.6, 0.7, 0.5], requires_grad=True)
    value = gate_only_loss(losses.clone().requires_grad_(), lam, margin=0.01)
    by_hand = (-math.log(0.9) - math.log(0.6) - math.log(0.7)) / 3
    assert value.item() == pytest.approx(by_hand, abs=1e-6)
    value.backward()
    # continue-target: lower lambda_1; exit-targets: raise lambda_2, lambda_3; lambda_4 unused
    assert lam.grad[0] > 0 and lam.grad[1] < 0 and lam.grad[2] < 0 and lam.grad[3] == 0

    # masked mean over tokens; one loop has nothing to decide
    lam2 = torch.stack([lam.detach(), torch.full((4,), 0.5)], dim=1)
    losses2 = torch.stack([losses, losses], dim=1)
    masked = gate_only_loss(losses2, lam2, margin=0.01, mask=torch.tensor([True, False]))
    assert masked.item() == pytest.approx(by_hand, abs=1e-6)
    assert gate_only_loss(torch.tensor([[1.0]]), torch.tensor([[0.3]]), 0.01).item() == 0.0


def test_loop_token_losses_align_with_the_model():
    model = tiny(exit_gate=True)
    x = ids()
    with torch.no_grad():
        ll = loop_token_losses(model, x, loops=3)
        out = model(x, loops=3, output_loop_logits=True)
    assert ll.token_losses.shape == (3, 2, 8) and ll.gate_probs.shape == (3, 2, 8) and ll.mask.all()
    for d in range(3):
        torch.testing.assert_close(ll.token_losses[d], causal_lm_loss(out.loop_logits[d], x, reduction="none"))
        torch.testing.assert_close(ll.token_losses[d].mean(), causal_lm_loss(out.loop_logits[d], x))
    torch.testing.assert_close(ll.gate_probs, out.gate_probs[..., :-1])


# -- train_step ---------------------------------------------------------------------------------


def copy_batch(generator, n=32, k=6, vocab=16):
    """``x SEP x``: the second half copies the first; only the copy is supervised."""
    x = torch.randint(2, vocab, (n, k), generator=generator)
    input_ids = torch.cat([x, torch.ones(n, 1, dtype=torch.long), x], dim=1)
    labels = input_ids.clone()
    labels[:, : k + 1] = -100
    return {"input_ids": input_ids, "labels": labels}


def test_train_step_learns_a_copy_task():
    torch.manual_seed(0)
    model = tiny(vocab_size=16, hidden_size=48, intermediate_size=96, max_loops=6)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sampler = LoopSampler(mean=2.5, max_loops=4, seed=0)
    data = torch.Generator().manual_seed(1)
    held_out = copy_batch(torch.Generator().manual_seed(99), n=64)
    with torch.no_grad():
        before = looped_loss(model, held_out["input_ids"], held_out["labels"], loops=3).item()

    stats = [train_step(model, opt, copy_batch(data), loops_sampler=sampler, backprop_loops=2, grad_clip=1.0)
             for _ in range(80)]

    first = sum(s.loss for s in stats[:10]) / 10
    last = sum(s.loss for s in stats[-10:]) / 10
    assert first > 2.0 and last < 0.3 * first, (first, last)
    assert {s.loops for s in stats} >= {1, 2, 3, 4} and all(1 <= s.loops <= 4 for s in stats)
    assert all(s.backprop_loops == min(2, s.loops) for s in stats)
    assert all(s.tokens == 32 * 6 and math.isfinite(s.grad_norm) and s.grad_norm > 0 for s in stats)
    assert all(s.depth_losses == {s.loops: pytest.approx(s.loss)} for s in stats)
    with torch.no_grad():
        after = looped_loss(model, held_out["input_ids"], held_out["labels"], loops=3).item()
    assert after < 0.3 * before, (before, after)


def test_train_step_depth_weights_and_clipping():
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x = ids()
    s = train_step(model, opt, x, loops=4, depth_weights={2: 0.5, 4: 1.0}, grad_clip=1e-3)
    assert set(s.depth_losses) == {2, 4}
    assert s.loss == pytest.approx(0.5 * s.depth_losses[2] + s.depth_losses[4], rel=1e-6)
    assert s.grad_norm > 1e-3  # the norm is reported before clipping ...
    clipped = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None))
    assert clipped.item() == pytest.approx(1e-3, rel=1e-3)  # ... and the gradients were clipped
    with pytest.raises(ValueError):
        train_step(model, opt, x, loops=4, gate_beta=0.1)  # no exit gate


def test_gate_stages_train_the_gate():
    model = tiny(exit_gate=True)
    x = ids(b=4, t=12)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    # stage I: LM and gate both get gradients; the objective matches exit_gate_loss
    with torch.no_grad():
        ll = loop_token_losses(model, x, loops=3)
        expected = exit_gate_loss(ll.token_losses, ll.gate_probs, 0.05, mask=ll.mask).item()
    s = train_step(model, opt, x, loops=3, gate_beta=0.05)
    assert s.loss == pytest.approx(expected, rel=1e-5)
    assert set(s.depth_losses) == {1, 2, 3} and 1.0 <= s.expected_exit <= 3.0
    assert model.model.exit_gate.weight.grad is not None and model.model.core[0].mlp.up_proj.weight.grad is not None

    # stage II: only the gate learns, even with an optimizer over every parameter
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "exit_gate" not in n}
    gate_before = [p.detach().clone() for p in gate_parameters(model)]
    stage2 = [train_step(model, opt, x, loops=3, gate_margin=0.01) for _ in range(30)]
    for n, p in model.named_parameters():
        if "exit_gate" not in n:
            assert torch.equal(p, frozen[n]), n
            assert p.grad is None, n
    assert any(not torch.equal(a, b) for a, b in zip(gate_before, gate_parameters(model)))
    assert stage2[-1].loss < stage2[0].loss - 0.05
    with torch.no_grad():
        ll = loop_token_losses(model, x, loops=3)
        targets = gate_targets(ll.token_losses, 0.01)
        gate_loss = gate_only_loss(ll.token_losses, ll.gate_probs, 0.01)
        assert gate_loss.item() == pytest.approx(stage2[-1].loss, rel=0.05)
        # the gate leans towards its targets
        agree = ((ll.gate_probs[:-1] > 0.5).float() == targets).float().mean()
        assert agree >= 0.75

    with pytest.raises(ValueError):
        train_step(model, opt, x, loops=3, gate_beta=0.1, gate_margin=0.01)

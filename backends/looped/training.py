"""Training utilities for looped models (:class:`LoopedForCausalLM`).

Thin, composable pieces built on the model's public forward (``loops``,
``backprop_loops``, ``output_loop_states``, ``gate_probs``):

- :func:`sample_loops` / :class:`LoopSampler`: per-step depth sampling (Huginn's
  Poisson log-normal, or uniform), deterministic given a seed or generator.
- :func:`looped_loss`: next-token loss at the final loop, or a weighted sum of losses
  at several loop depths; truncated backprop through the last ``k`` loops.
- :func:`loop_token_losses`: per-token losses after every loop (plus aligned gate
  probabilities), the input of the exit-gate objectives.
- :func:`exit_distribution`, :func:`exit_gate_loss` (Ouro stage I: expected loss under
  the exit distribution minus ``beta`` x its entropy), :func:`gate_targets` and
  :func:`gate_only_loss` (Ouro stage II: train the gate alone to exit when the next loop
  would not improve the loss by more than a margin).
- :func:`train_step`: one optimization step returning a :class:`StepStats` record; a
  resumable trainer is meant to be built on top of it.

Example::

    sampler = LoopSampler(mean=4, max_loops=8, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for batch in batches:
        stats = train_step(model, opt, batch, loops_sampler=sampler, backprop_loops=4, grad_clip=1.0)
        print(stats.loss, stats.loops, stats.grad_norm)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from loopagent.validation import is_int

from .modeling_looped import LoopedCausalLMOutput, LoopedForCausalLM, causal_lm_loss

DISTRIBUTIONS = ("poisson_lognormal", "uniform")

DepthWeights = Mapping[int, float] | Callable[[int], Mapping[int, float]]

# -- depth sampling ---------------------------------------------------------------------------


def _generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if not is_int(generator):
        raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")
    return torch.Generator().manual_seed(generator)


def sample_loops(
    generator: torch.Generator | int | None = None,
    mean: float | None = None,
    max_loops: int = 16,
    *,
    min_loops: int = 1,
    sigma: float = 0.5,
    distribution: str = "poisson_lognormal",
    num_samples: int | None = None,
) -> int | torch.Tensor:
    r"""Draw loop counts for training steps.

    ``"poisson_lognormal"`` (Huginn): ``tau ~ N(log(mean - 1) - sigma^2 / 2, sigma)``,
    ``loops = Poisson(exp(tau)) + 1``, clipped to ``[min_loops, max_loops]``. The
    log-normal rate has mean ``mean - 1``, so before clipping ``E[loops] = mean``
    (Huginn's ``mean_recurrence`` r corresponds to ``mean = r + 1``). The draw is
    right-skewed: mostly near the mean, sometimes much deeper. ``mean=1`` always gives 1.

    ``"uniform"``: integers uniform on ``[min_loops, max_loops]`` (``mean`` is unused).

    Args:
        generator: a ``torch.Generator`` (advanced by the call), an ``int`` seed (a fresh
            generator: the same seed always gives the same draw), or ``None`` (torch's
            global RNG).
        mean: expected loop count before clipping (Poisson log-normal only), ``>= 1``.
        max_loops / min_loops: the clipping range.
        sigma: standard deviation of the log-rate (Huginn uses 0.5).
        num_samples: ``None`` returns one ``int``; a number returns a LongTensor of draws.

    Example::

        g = torch.Generator().manual_seed(0)
        loops = sample_loops(g, mean=4, max_loops=8)                    # e.g. 3
        many = sample_loops(0, mean=4, max_loops=8, num_samples=1000)   # tensor, mean ~4
        flat = sample_loops(g, max_loops=8, distribution="uniform")     # 1..8
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if not 1 <= min_loops <= max_loops:
        raise ValueError(f"need 1 <= min_loops <= max_loops, got min_loops={min_loops}, max_loops={max_loops}")
    gen = _generator(generator)
    n = 1 if num_samples is None else num_samples
    if distribution == "uniform":
        draws = torch.randint(min_loops, max_loops + 1, (n,), generator=gen)
    else:
        if mean is None or mean < 1:
            raise ValueError(f"poisson_lognormal needs mean >= 1, got {mean!r}")
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        if mean == 1:
            draws = torch.ones(n, dtype=torch.long)
        else:
            mu = math.log(mean - 1) - sigma**2 / 2
            rate = torch.exp(mu + sigma * torch.randn(n, generator=gen, dtype=torch.float64))
            draws = torch.poisson(rate, generator=gen).long() + 1
        draws = draws.clamp(min_loops, max_loops)
    return int(draws[0]) if num_samples is None else draws


@dataclass
class LoopSampler:
    """A callable that draws one loop count per call from its own generator (see
    :func:`sample_loops` for the distributions); its state can be saved and restored so
    a resumed run draws the same depths.

    Example::

        sampler = LoopSampler(mean=4, max_loops=8, seed=0)
        loops = sampler()                       # an int in 1..8
        state = sampler.state_dict()
        LoopSampler(mean=4, max_loops=8).load_state_dict(state)   # continues identically
    """

    mean: float | None = None
    max_loops: int = 16
    min_loops: int = 1
    sigma: float = 0.5
    distribution: str = "poisson_lognormal"
    seed: int = 0
    generator: torch.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)
        sample_loops(0, self.mean, self.max_loops, min_loops=self.min_loops, sigma=self.sigma,
                     distribution=self.distribution)  # validate the arguments now

    def __call__(self) -> int:
        return int(sample_loops(self.generator, self.mean, self.max_loops, min_loops=self.min_loops,
                                sigma=self.sigma, distribution=self.distribution))

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])


# -- losses at one or several depths ---------------------------------------------------------


def _labels(input_ids: torch.Tensor, labels: torch.Tensor | None, attention_mask: torch.Tensor | None) -> torch.Tensor:
    labels = input_ids if labels is None else labels
    if attention_mask is not None:
        labels = labels.masked_fill(attention_mask == 0, -100)
    return labels


def _depth_weights(depth_weights: DepthWeights | None, loops: int) -> dict[int, float]:
    if depth_weights is None:
        return {loops: 1.0}
    weights = depth_weights(loops) if callable(depth_weights) else depth_weights
    if not weights:
        raise ValueError("depth_weights is empty")
    for depth in weights:
        if not is_int(depth) or not 1 <= depth <= loops:
            raise ValueError(f"depth_weights keys must be loop depths in [1, loops={loops}], got {depth!r}")
    return {int(d): float(w) for d, w in sorted(weights.items())}


def _depth_logits(
    model: LoopedForCausalLM,
    out: LoopedCausalLMOutput,
    depths: Iterable[int],
    loops: int,
    attention_mask: torch.Tensor | None,
) -> dict[int, torch.Tensor]:
    """Logits after each of ``depths`` loops; the coda runs only on the depths asked for."""
    depths = list(depths)
    logits = {loops: out.logits} if loops in depths else {}
    inner = [d for d in depths if d != loops]
    if inner:
        states = out.loop_states
        assert states is not None, "the forward must be run with output_loop_states=True"
        hidden = model.model.head_states(tuple(states[d - 1] for d in inner), attention_mask)
        logits.update({d: model.lm_head(h).float() for d, h in zip(inner, hidden)})
    return logits


@dataclass
class LoopedLossTerms:
    """:func:`looped_loss_terms` output: the weighted ``loss``, each depth's mean loss
    (``depth_losses``, before weighting), the number of target ``tokens`` and the forward
    ``output``."""

    loss: torch.Tensor
    depth_losses: dict[int, torch.Tensor]
    tokens: int
    output: LoopedCausalLMOutput


def looped_loss_terms(
    model: LoopedForCausalLM,
    input_ids: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    loops: int | None = None,
    backprop_loops: int | None = None,
    depth_weights: DepthWeights | None = None,
    attention_mask: torch.Tensor | None = None,
) -> LoopedLossTerms:
    """:func:`looped_loss` with the per-depth losses and the forward output kept (for logging)."""
    loops = model.model.check_loops(loops)
    labels = _labels(input_ids, labels, attention_mask)
    weights = _depth_weights(depth_weights, loops)
    inner = any(d != loops for d in weights)
    out = model(input_ids=input_ids, attention_mask=attention_mask, loops=loops,
                backprop_loops=backprop_loops, output_loop_states=inner)
    logits = _depth_logits(model, out, weights, loops, attention_mask)
    depth_losses = {d: causal_lm_loss(logits[d], labels) for d in weights}
    loss = sum((w * depth_losses[d] for d, w in weights.items()), torch.zeros((), device=input_ids.device))
    tokens = int((labels[:, 1:] != -100).sum())
    return LoopedLossTerms(loss=loss, depth_losses=depth_losses, tokens=tokens, output=out)


def looped_loss(
    model: LoopedForCausalLM,
    input_ids: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    loops: int | None = None,
    backprop_loops: int | None = None,
    depth_weights: DepthWeights | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy of a looped model (mean over target tokens).

    Without ``depth_weights``: the loss of the logits after ``loops`` loops. With
    ``depth_weights`` (``{depth: weight}``, depths in ``1..loops``, or a callable
    ``loops -> {depth: weight}`` for sampled depths): ``sum(weight * loss_at_depth)``,
    where ``loss_at_depth`` runs the coda and head on the state after that many loops
    (the same as a separate forward with ``loops=depth``). The weights are not normalized.

    ``backprop_loops=k``: gradients flow only through the last ``k`` loops (earlier loops
    run under ``no_grad`` and the state is detached; the prelude still gets gradients via
    the input injection of the loops that are backpropagated). A depth before the last
    ``k`` loops then only trains the coda and head.

    ``labels`` defaults to ``input_ids``; ``-100`` is ignored, and so are positions where
    ``attention_mask`` is 0.

    Example::

        loss = looped_loss(model, ids, loops=8, backprop_loops=4)
        loss = looped_loss(model, ids, loops=4, depth_weights={2: 0.5, 4: 1.0})
        loss = looped_loss(model, ids, loops=n, depth_weights=lambda n: {n // 2: 0.3, n: 1.0})
        loss.backward()
    """
    return looped_loss_terms(model, input_ids, labels, loops=loops, backprop_loops=backprop_loops,
                             depth_weights=depth_weights, attention_mask=attention_mask).loss


def stepwise_loss_terms(
    model: LoopedForCausalLM,
    input_ids: torch.Tensor,
    depth_labels: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
) -> LoopedLossTerms:
    """Latent-step supervision: ``depth_labels[k - 1]`` ([loops, batch, seq], next-token
    labels like ``labels``, ``-100`` ignored) are the targets after ``k`` loops.

    The model runs ``loops = depth_labels.shape[0]`` loops once; the coda and head read
    the state after every loop. The loss is the mean over depths of each depth's mean
    token loss. The head runs only on positions some depth has a target for, so long
    sequences with few targets stay cheap.

    Example::

        # after 1, 2, 3 loops the answer position should hold "a", "c", "5"
        terms = stepwise_loss_terms(model, ids, depth_labels)   # depth_labels: [3, B, T]
        terms.loss.backward()
    """
    if depth_labels.dim() != 3 or depth_labels.shape[1:] != input_ids.shape:
        raise ValueError(f"depth_labels must be [loops, *input_ids.shape], got {tuple(depth_labels.shape)} "
                         f"for input_ids {tuple(input_ids.shape)}")
    loops = model.model.check_loops(int(depth_labels.shape[0]))
    depth_labels = _labels(input_ids, depth_labels, attention_mask)  # the mask broadcasts over depths
    out = model.model(input_ids=input_ids, attention_mask=attention_mask, loops=loops, output_loop_states=True)
    hidden = model.model.head_states(out["loop_states"], attention_mask)
    targets = depth_labels[:, :, 1:]
    rows = (targets != -100).any(0)  # [batch, seq - 1]: positions that predict something
    depth_losses = {}
    for depth, h in enumerate(hidden, start=1):
        logits = model.lm_head(h[:, :-1][rows]).float()
        depth_losses[depth] = F.cross_entropy(logits, targets[depth - 1][rows], ignore_index=-100)
    loss = torch.stack(list(depth_losses.values())).mean()
    output = LoopedCausalLMOutput(loop_states=out["loop_states"])
    return LoopedLossTerms(loss=loss, depth_losses=depth_losses, tokens=int(rows.sum()), output=output)


@dataclass
class LoopLosses:
    """:func:`loop_token_losses` output. ``token_losses`` ([loops, batch, seq-1]): the
    next-token loss of every position after every loop (0 where ignored); ``mask``
    ([batch, seq-1], bool): which of them count; ``gate_probs`` ([loops, batch, seq-1] or
    None): the exit gate's conditional exit probabilities, aligned with ``token_losses``
    (position ``i``'s gate decides the depth of the prediction of token ``i + 1``);
    ``output``: the forward output (``loop_states`` included)."""

    token_losses: torch.Tensor
    mask: torch.Tensor
    gate_probs: torch.Tensor | None
    output: LoopedCausalLMOutput


def loop_token_losses(
    model: LoopedForCausalLM,
    input_ids: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    loops: int | None = None,
    backprop_loops: int | None = None,
    attention_mask: torch.Tensor | None = None,
) -> LoopLosses:
    """Per-token losses after every loop, and the aligned gate probabilities: the inputs of
    :func:`exit_gate_loss` and :func:`gate_only_loss`.

    Example::

        ll = loop_token_losses(model, ids, loops=4)
        loss = exit_gate_loss(ll.token_losses, ll.gate_probs, beta=0.05, mask=ll.mask)
    """
    loops = model.model.check_loops(loops)
    labels = _labels(input_ids, labels, attention_mask)
    out = model(input_ids=input_ids, attention_mask=attention_mask, loops=loops,
                backprop_loops=backprop_loops, output_loop_states=True)
    logits = _depth_logits(model, out, range(1, loops + 1), loops, attention_mask)
    token_losses = torch.stack([causal_lm_loss(logits[d], labels, reduction="none") for d in range(1, loops + 1)])
    gates = out.gate_probs[..., :-1] if out.gate_probs is not None else None
    return LoopLosses(token_losses=token_losses, mask=labels[:, 1:] != -100, gate_probs=gates, output=out)


# -- Ouro's exit gate objectives ------------------------------------------------------------


def exit_distribution(gate_probs: torch.Tensor) -> torch.Tensor:
    r"""Exit distribution over loops from conditional exit probabilities ``lambda``
    ([loops, ...]): ``p_l = lambda_l * prod_{j<l} (1 - lambda_j)`` for ``l < loops``, and the
    last loop takes the remaining mass ``prod_{j<loops} (1 - lambda_j)`` (its own
    ``lambda`` is unused). Sums to 1 over dim 0.

    Example::

        exit_distribution(torch.tensor([0.2, 0.5, 0.9]))  # tensor([0.2, 0.4, 0.4])
    """
    lam = gate_probs[:-1]
    survive = torch.cumprod(torch.cat([torch.ones_like(gate_probs[:1]), 1 - lam]), dim=0)  # prod_{j<l}
    return torch.cat([lam * survive[:-1], survive[-1:]])


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def exit_gate_loss(
    per_loop_losses: torch.Tensor,
    gate_probs: torch.Tensor,
    beta: float,
    *,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Ouro's stage-I objective: ``sum_l p_l * L_l - beta * H(p)`` per token, averaged over
    tokens (those where ``mask`` is true).

    ``per_loop_losses`` and ``gate_probs`` are [loops, ...] with the same shape (per-token
    losses, e.g. :attr:`LoopLosses.token_losses`); ``p`` is :func:`exit_distribution` of
    ``gate_probs`` and ``H(p) = -sum_l p_l log p_l``. Gradients reach both the losses (the
    LM) and the gate; the entropy term keeps the gate from collapsing onto one depth early.

    Example::

        loss = exit_gate_loss(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([0.2, 0.5, 0.9]), beta=0.1)
        # p = [0.2, 0.4, 0.4]: 1.8 - 0.1 * 1.0549 = 1.6945
    """
    if per_loop_losses.shape != gate_probs.shape:
        raise ValueError(
            f"per_loop_losses {tuple(per_loop_losses.shape)} and gate_probs {tuple(gate_probs.shape)} differ"
        )
    p = exit_distribution(gate_probs.float())
    expected = (p * per_loop_losses.float()).sum(0)
    entropy = -torch.xlogy(p, p).sum(0)
    return _masked_mean(expected - beta * entropy, mask)


def gate_targets(per_loop_losses: torch.Tensor, margin: float, *, sharpness: float | None = None) -> torch.Tensor:
    r"""Stage-II exit targets for loops ``1..loops-1`` ([loops-1, ...]): the improvement of
    the next loop is ``I_l = max(0, L_l - L_{l+1})`` (losses detached); the target for
    ``lambda_l`` is 1 (exit) when ``I_l <= margin``, else 0. With ``sharpness`` ``k`` the
    target is Ouro's soft ``sigmoid(k * (margin - I_l))`` instead.

    Example::

        gate_targets(torch.tensor([3.0, 1.0, 0.995, 2.0]), margin=0.01)  # tensor([0., 1., 1.])
    """
    losses = per_loop_losses.detach().float()
    improvement = (losses[:-1] - losses[1:]).clamp(min=0)
    if sharpness is None:
        return (improvement <= margin).float()
    return torch.sigmoid(sharpness * (margin - improvement))


def gate_only_loss(
    per_loop_losses: torch.Tensor,
    gate_probs: torch.Tensor,
    margin: float,
    *,
    mask: torch.Tensor | None = None,
    sharpness: float | None = None,
) -> torch.Tensor:
    r"""Ouro's stage-II objective: binary cross-entropy of ``lambda_l`` against
    :func:`gate_targets` for loops ``1..loops-1`` (the last loop always exits), averaged
    over those loops and the tokens where ``mask`` is true. The losses are detached, so
    only the gate learns; to keep the LM fixed, also keep the gate's inputs detached
    (:func:`train_step` with ``gate_margin`` does) or optimize only
    :func:`gate_parameters`.

    Example::

        loss = gate_only_loss(torch.tensor([3.0, 1.0, 0.995, 2.0]),
                              torch.tensor([0.1, 0.6, 0.7, 0.5]), margin=0.01)
        # mean(-log 0.9, -log 0.6, -log 0.7)
    """
    if per_loop_losses.shape != gate_probs.shape:
        raise ValueError(
            f"per_loop_losses {tuple(per_loop_losses.shape)} and gate_probs {tuple(gate_probs.shape)} differ"
        )
    if gate_probs.shape[0] < 2:
        return gate_probs.sum() * 0.0  # one loop: nothing to decide
    targets = gate_targets(per_loop_losses, margin, sharpness=sharpness)
    bce = F.binary_cross_entropy(gate_probs[:-1].float(), targets, reduction="none")
    return _masked_mean(bce, mask)


def gate_parameters(model: LoopedForCausalLM) -> list[torch.nn.Parameter]:
    """The exit gate's parameters (for a stage-II optimizer).

    Example::

        opt = torch.optim.AdamW(gate_parameters(model), lr=1e-3)
    """
    if model.model.exit_gate is None:
        raise ValueError("this model has no exit gate (config.exit_gate=False)")
    return list(model.model.exit_gate.parameters())


# -- one optimization step ------------------------------------------------------------------


@dataclass(frozen=True)
class StepStats:
    """What :func:`train_step` did: the optimized ``loss``, the ``loops`` run, the
    ``backprop_loops`` used (``None``: all), the gradient norm before clipping, the number
    of target ``tokens``, each depth's mean loss (``depth_losses``; all depths in gate
    modes) and, in gate modes, the mean expected exit depth (``expected_exit``)."""

    loss: float
    loops: int
    backprop_loops: int | None
    grad_norm: float
    tokens: int
    depth_losses: dict[int, float]
    expected_exit: float | None = None


def _batch(
    batch: Mapping[str, torch.Tensor] | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None, None, None
    return batch["input_ids"], batch.get("labels"), batch.get("attention_mask"), batch.get("depth_labels")


def _mean_per_loop(token_losses: torch.Tensor, mask: torch.Tensor) -> dict[int, float]:
    return {d + 1: float(_masked_mean(token_losses[d].detach(), mask)) for d in range(token_losses.shape[0])}


def train_step(
    model: LoopedForCausalLM,
    optimizer: torch.optim.Optimizer,
    batch: Mapping[str, torch.Tensor] | torch.Tensor,
    *,
    loops: int | None = None,
    loops_sampler: Callable[[], int] | None = None,
    backprop_loops: int | None = None,
    depth_weights: DepthWeights | None = None,
    gate_beta: float | None = None,
    gate_margin: float | None = None,
    gate_sharpness: float | None = None,
    grad_clip: float | None = None,
) -> StepStats:
    """One optimization step (zero grads, loss, backward, clip, ``optimizer.step()``).

    ``batch``: ``input_ids`` or a mapping with ``input_ids`` and optional ``labels``
    (default: ``input_ids``; ``-100`` ignored) and ``attention_mask``. The depth is
    ``loops``, else ``loops_sampler()`` (e.g. a :class:`LoopSampler`), else the config's
    ``default_loops``. The loss is, by mode:

    - default: :func:`looped_loss` (``backprop_loops``, ``depth_weights``);
    - a batch with ``depth_labels`` ([loops, batch, seq]): :func:`stepwise_loss_terms`, every
      depth against its own targets (the sampler is not used);
    - ``gate_beta``: Ouro stage I, :func:`exit_gate_loss` over all loops (LM and gate);
    - ``gate_margin``: Ouro stage II, :func:`gate_only_loss`; the forward runs without
      gradients and the gate is re-applied to the detached loop states, and only the
      gate's own parameters (:func:`gate_parameters`) keep gradients, so only the gate
      learns whatever the optimizer holds (with AdamW, parameters without gradients are
      not decayed either).

    ``grad_clip`` clips the global gradient norm; ``StepStats.grad_norm`` is the norm
    before clipping. A learning-rate schedule, accumulation or checkpointing belong to
    the caller.

    Example::

        sampler = LoopSampler(mean=4, max_loops=8, seed=0)
        stats = train_step(model, opt, {"input_ids": ids, "labels": labels},
                           loops_sampler=sampler, backprop_loops=2, grad_clip=1.0)
        stats = train_step(model, opt, ids, loops=4, gate_beta=0.05)       # stage I
        stats = train_step(model, gate_opt, ids, loops=4, gate_margin=0.01)  # stage II
    """
    if gate_beta is not None and gate_margin is not None:
        raise ValueError("choose one of gate_beta (stage I) and gate_margin (stage II)")
    if depth_weights is not None and (gate_beta is not None or gate_margin is not None):
        raise ValueError("depth_weights does not apply to the gate objectives (they use every depth)")
    if (gate_beta is not None or gate_margin is not None) and model.model.exit_gate is None:
        raise ValueError("gate_beta / gate_margin need a model with an exit gate (config.exit_gate=True)")
    input_ids, labels, attention_mask, depth_labels = _batch(batch)
    if depth_labels is not None:
        if gate_beta is not None or gate_margin is not None or depth_weights is not None or backprop_loops is not None:
            raise ValueError(
                "a batch with depth_labels trains every depth (stepwise); drop gate_*, depth_weights and backprop_loops"
            )
        if loops is not None and loops != depth_labels.shape[0]:
            raise ValueError(
                f"loops={loops} but depth_labels has targets for {depth_labels.shape[0]} depths; drop loops"
            )
        loops = int(depth_labels.shape[0])
    if loops is None and loops_sampler is not None:
        loops = int(loops_sampler())
    loops = model.model.check_loops(loops)

    model.train()
    optimizer.zero_grad(set_to_none=True)
    expected_exit = None
    if gate_margin is not None:
        with torch.no_grad():
            ll = loop_token_losses(model, input_ids, labels, loops=loops, attention_mask=attention_mask)
        states = ll.output.loop_states
        gates = torch.stack([model.model.gate(s.detach()) for s in states])[..., :-1]
        loss = gate_only_loss(ll.token_losses, gates, gate_margin, mask=ll.mask, sharpness=gate_sharpness)
        depth_losses, tokens = _mean_per_loop(ll.token_losses, ll.mask), int(ll.mask.sum())
    elif gate_beta is not None:
        ll = loop_token_losses(model, input_ids, labels, loops=loops, backprop_loops=backprop_loops,
                               attention_mask=attention_mask)
        gates = ll.gate_probs
        loss = exit_gate_loss(ll.token_losses, gates, gate_beta, mask=ll.mask)
        depth_losses, tokens = _mean_per_loop(ll.token_losses, ll.mask), int(ll.mask.sum())
    else:
        if depth_labels is not None:
            terms = stepwise_loss_terms(model, input_ids, depth_labels, attention_mask=attention_mask)
        else:
            terms = looped_loss_terms(model, input_ids, labels, loops=loops, backprop_loops=backprop_loops,
                                      depth_weights=depth_weights, attention_mask=attention_mask)
        loss, tokens = terms.loss, terms.tokens
        depth_losses = {d: float(v.detach()) for d, v in terms.depth_losses.items()}
        gates = None
    if gates is not None:
        with torch.no_grad():
            depth = torch.arange(1, loops + 1, dtype=torch.float32, device=gates.device).view(
                -1, *[1] * (gates.dim() - 1))
            expected_exit = float(_masked_mean((exit_distribution(gates.float()) * depth).sum(0), ll.mask))

    loss.backward()
    if gate_margin is not None:
        # the gate reads the state through the final norm, which the LM shares: keep it fixed
        gate_ids = {id(p) for p in gate_parameters(model)}
        for p in model.parameters():
            if id(p) not in gate_ids:
                p.grad = None
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    grad_norm = (torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip is not None else math.inf)
                 if params else torch.zeros(()))
    optimizer.step()
    return StepStats(
        loss=float(loss.detach()),
        loops=loops,
        backprop_loops=min(backprop_loops, loops) if backprop_loops is not None and gate_margin is None else None,
        grad_norm=float(grad_norm),
        tokens=tokens,
        depth_losses=depth_losses,
        expected_exit=expected_exit,
    )


__all__ = [
    "DISTRIBUTIONS",
    "LoopLosses",
    "LoopSampler",
    "LoopedLossTerms",
    "StepStats",
    "exit_distribution",
    "exit_gate_loss",
    "gate_only_loss",
    "gate_parameters",
    "gate_targets",
    "loop_token_losses",
    "looped_loss",
    "looped_loss_terms",
    "sample_loops",
    "stepwise_loss_terms",
    "train_step",
]

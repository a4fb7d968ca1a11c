"""The pipeline that makes the embedded default's weights (``loopagent.backends.embedded``).

- :mod:`~loopagent.training.data`: training sequences of the root and the child, generated
  from the seeded task families of :mod:`loopagent.evals`;
- :mod:`~loopagent.training.trainer`: ``loopagent train child|root --out DIR`` (resumable,
  deterministic by seed);
- :mod:`~loopagent.training.quality`: held-out quality, through the controller and the evals
  runner (``python -m loopagent.training.quality OUT``);
- :mod:`~loopagent.training.card`: ``weights/MODEL_CARD.md`` from the runs and the measurements.

It is an application of the controller and the evals, so it sits above both and may import
them; nothing below it (backends, environments, evals, the controller) imports it. The
loader in ``backends/embedded`` only reads the checkpoints this pipeline exports. Needs the
``looped`` extra (torch).
"""

"""Diffusion priors and generators for the diffusion bias probe (DiffExplainer-style).

``generators``: one :class:`~auditor.diffusion.generators.Generator` interface with two
implementations (a local diffusers text-to-image pipeline; the project's small bundled prior).
``prior``: ``train_prior`` for ``auditor prior train --data DIR``.
``readout``: spurious-feature read-out and intervention.
"""

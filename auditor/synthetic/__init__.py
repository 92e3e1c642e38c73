"""Procedural data, planted triggers and tiny networks: the raw material of the demo, tests and zoo.

Nothing here downloads anything: digits come from scikit-learn's bundled copy, everything else is
generated from a seed.
"""

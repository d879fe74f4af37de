"""The pruning engine: models, the recipe, groups left whole, measuring, process resources.

Nothing here imports pytest or argparse: the engine is what ``tprune`` and the
plugin share, and what :func:`pytest_tprune.engine.identity.engine_fingerprint`
hashes. Every touch of torch-pruning's private internals lives in
:mod:`pytest_tprune.engine.tp_internals`, so an upgrade that moves them is
handled in one place. torch, timm and torch-pruning are imported inside the
functions that need them, so importing any module here stays cheap.
"""

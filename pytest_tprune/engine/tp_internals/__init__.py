"""Every touch of torch-pruning's private internals, in one package.

The engine needs more of torch-pruning than its public API offers: the names
of graph members, the width of a group's root, the per-operation index-mapping
refresh it guards, the group walk it bounds, the pruner's channel grouping,
and the ranking and refusal points the property suite records. Anything that
reads or wraps a private name does it here, so an upgrade of torch-pruning
that moves an internal is handled here and nowhere else.

The package splits by concern: :mod:`.graph` reads the graph and the pruner,
:mod:`.guards` probes each guard's internals and wraps the index mappings,
:mod:`.walk` bounds (or, for the stock verdict, counts) the group walk, and
:mod:`.ledger` accounts for every group torch-pruning offers.
"""

from __future__ import annotations

from pytest_tprune.engine.tp_internals.graph import (
    channel_groups,
    current_step,
    dotted_name,
    group_root,
    head_layers,
    is_out_channels,
    item_width,
    member_modules,
    member_name,
    member_names,
    name_of,
    observe_ranking,
    observe_refusals,
    one_line,
    pruning_dim,
    removed_count,
    removed_indices,
    restore_head_counts,
    root_key,
)
from pytest_tprune.engine.tp_internals.guards import (
    TRAVERSAL_FACTOR,
    GuardUnavailable,
    TraversalCycle,
    UnmappableIndices,
    guard_status,
    guard_summary,
    reprobe,
    tolerant_index_mappings,
)
from pytest_tprune.engine.tp_internals.walk import bound_traversal, detect_cycles, graph_property

__all__ = [
    "TRAVERSAL_FACTOR",
    "GuardUnavailable",
    "TraversalCycle",
    "UnmappableIndices",
    "bound_traversal",
    "channel_groups",
    "current_step",
    "detect_cycles",
    "dotted_name",
    "graph_property",
    "group_root",
    "guard_status",
    "guard_summary",
    "head_layers",
    "is_out_channels",
    "item_width",
    "member_modules",
    "member_name",
    "member_names",
    "name_of",
    "observe_ranking",
    "observe_refusals",
    "one_line",
    "pruning_dim",
    "removed_count",
    "removed_indices",
    "reprobe",
    "restore_head_counts",
    "root_key",
    "tolerant_index_mappings",
]

"""The seed's command line, reproduced faithfully and made safe.

``tprune --list_models [PATTERN]`` and ``tprune --model NAME --pruning_ratio R
[--global_pruning] [--prune_num_heads --head_pruning_ratio R] [--max_pruning_ratio R]``
print what the upstream example prints: ``Pruning NAME...``, the module tree
with ``before => after`` on every changed line, then the MACs and params lines
with four decimals. Bad input exits 2 with one line; a failure of
the library stack exits 1 naming the step and module; neither shows a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence

from pytest_tprune.cli.base import Parser, parse_or_status
from pytest_tprune.engine.config import DEFAULT_SEED, IMPORTANCES, PruneConfig, check_ratio
from pytest_tprune.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, PruneStepError, UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tprune", description="Prune a timm model with torch-pruning and show what changed.")
    add = parser.add_argument
    add(
        "--list_models",
        "--list-models",
        nargs="?",
        const="",
        default=None,
        metavar="PATTERN",
        help="print timm's model names (optionally only those matching an fnmatch PATTERN) and exit",
    )
    add("--model", help="timm model name, e.g. vit_base_patch32_224")
    add(
        "--pruning_ratio",
        "--pruning-ratio",
        type=float,
        default=0.5,
        help="channel pruning ratio in [0, 1) (default 0.5)",
    )
    add(
        "--global_pruning",
        "--global-pruning",
        action="store_true",
        help="rank channels across layers instead of uniformly",
    )
    add("--pretrained", action="store_true", help="load pretrained weights (needs network access or a warm cache)")
    add("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    add(
        "--importance", choices=IMPORTANCES, default="l2", help="channel importance criterion (default l2, as the seed)"
    )
    add("--round_to", "--round-to", type=int, default=None, help="keep channel counts multiples of this")
    add("--iterative_steps", "--iterative-steps", type=int, default=1, help="prune in this many steps")
    add("--isomorphic", action="store_true", help="isomorphic ranking (with --global_pruning)")
    add(
        "--prune_num_heads",
        "--prune-num-heads",
        action="store_true",
        help="remove whole attention heads too (with --head_pruning_ratio)",
    )
    add(
        "--head_pruning_ratio",
        "--head-pruning-ratio",
        type=float,
        default=0.0,
        help="fraction of each attention's heads to remove, in [0, 1) (with --prune_num_heads; default 0)",
    )
    add(
        "--max_pruning_ratio",
        "--max-pruning-ratio",
        type=float,
        default=1.0,
        help="torch-pruning's per-layer cap on the pruned fraction, in (0, 1] (default 1: no cap)",
    )
    add(
        "--input_size",
        "--input-size",
        type=int,
        default=None,
        help="cap the input's spatial size when the model allows",
    )
    add("--seed", type=int, default=DEFAULT_SEED, help="seed of the weight init and of the example input")
    return parser


def tree_diff(before: str, after: str) -> str:
    """The module tree with ``before => after`` on every changed line (the seed's print-out)."""
    old, new = before.splitlines(), after.splitlines()
    if len(old) != len(new):
        return "\n".join(difflib.unified_diff(old, new, "before", "after", lineterm=""))
    return "\n".join(o if o == n else f"{o} => {n.lstrip()}" for o, n in zip(old, new, strict=True))


def figures(macs: tuple[int, int], params: tuple[int, int]) -> str:
    return (
        f"MACs: {macs[0] / 1e9:.4f} G => {macs[1] / 1e9:.4f} G\n"
        f"Params: {params[0] / 1e6:.4f} M => {params[1] / 1e6:.4f} M"
    )


def list_models(pattern: str) -> int:
    from pytest_tprune.engine.models import timm_model_names

    names = timm_model_names(pattern or None)
    if not names:
        raise UsageError(f"no timm model matches '{pattern}': patterns are fnmatch-style, e.g. 'vit_*'")
    print(names)
    return EXIT_OK


def weights_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the weight hub answers at all: a fast probe instead of minutes of retries."""
    import socket

    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def weights_cached(name: str) -> bool:
    """Whether timm could load ``name``'s pretrained weights from the local hub cache."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return False
    files = ("model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin")
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)


def check_pretrained_available(name: str) -> None:
    if not weights_cached(name) and not weights_reachable():
        raise UsageError(
            f"--pretrained: weights for {name} are not cached and the weight hub (huggingface.co) cannot be "
            "reached from this machine; drop --pretrained to prune a seeded random init"
        )


def config_from_args(args: argparse.Namespace) -> PruneConfig:
    """The PruneConfig that parsed ``tprune`` arguments describe (the inverse of ``cli_args``)."""
    return PruneConfig(
        ratio=args.pruning_ratio,
        global_pruning=args.global_pruning,
        importance=args.importance,
        round_to=args.round_to,
        iterative_steps=args.iterative_steps,
        isomorphic=args.isomorphic,
        prune_num_heads=args.prune_num_heads,
        head_pruning_ratio=args.head_pruning_ratio,
        max_pruning_ratio=args.max_pruning_ratio,
    )


def run_prune(args: argparse.Namespace) -> int:
    from pytest_tprune.engine.models import timm_spec
    from pytest_tprune.engine.pruning import prune
    from pytest_tprune.engine.recipe import resolve_device

    check_ratio(args.pruning_ratio)
    config = config_from_args(args)
    device = resolve_device(args.device)
    spec = timm_spec(args.model, input_cap=args.input_size, pretrained=args.pretrained)
    if args.pretrained:
        check_pretrained_available(args.model)
    print(f"Pruning {args.model}...", flush=True)
    try:
        result = prune(spec, config, device=device, seed=args.seed)
    except PruneStepError as err:
        if args.pretrained and err.step == "build":
            raise UsageError(
                f"could not load pretrained weights for {args.model} ({type(err.exc).__name__}): "
                "weights cannot be fetched offline; drop --pretrained to prune a seeded random init"
            ) from None
        raise
    for message in result.outcome.warnings:
        print(message, file=sys.stderr)
    out = result.outcome
    if out.left_whole:
        print(
            f"note: {len(out.left_whole)} group(s) left whole, which could not be pruned consistently:",
            file=sys.stderr,
        )
        for record in out.left_whole:
            print(f"  {record.describe()}", file=sys.stderr)
    print()
    print(tree_diff(result.tree_before, result.tree_after))
    print()
    print(figures((out.macs_before, out.macs_after), (out.params_before, out.params_after)))
    if out.attention:
        print(heads_line(out.attention))
    return EXIT_OK


def heads_line(attention: dict[str, list[int]]) -> str:
    """``Heads: 12 => 6 (head_dim 32) in 12 attention module(s)``: what the module tree cannot show.

    Printed after the seed's figures, only with ``--prune_num_heads``; attention
    modules that ended differently get a clause each, most common first.
    """
    from collections import Counter

    counts = Counter(tuple(v) for v in attention.values())
    parts = [
        f"{before} => {after}{f' (head_dim {dim})' if dim else ''} in {n} attention module(s)"
        for (before, after, dim), n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ]
    return "Heads: " + "; ".join(parts)


def main(argv: Sequence[str]) -> int:
    """The seed's command line: prune one model and print what changed, or list timm's models."""
    args = parse_or_status(build_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        if args.list_models is not None:
            return list_models(args.list_models)
        if not args.model:
            raise UsageError("nothing to do: give --model NAME (see --list_models) or --list_models")
        return run_prune(args)
    except UsageError as err:
        print(f"tprune: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except PruneStepError as err:
        print(f"tprune: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("tprune: interrupted", file=sys.stderr)
        return 130

"""One pruning case as the ``tprune_case`` fixture sees it, with one method per check.

Each check raises :class:`~pytest_tprune.errors.CheckFailed` whose message
starts with the check's name, so a failing test says exactly which property
broke. Models are built once per worker and kept pristine
(:data:`~pytest_tprune.engine.resources.STORE`); every case prunes a deep copy,
because pruning mutates in place and a pruned model must never leak into the
next case.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_tprune.checks import expectations as exp
from pytest_tprune.engine.config import DEFAULT_SEED, PruneConfig
from pytest_tprune.engine.models import ModelSpec
from pytest_tprune.engine.resources import STORE, freeze_imports_for_gc, peak_rss_mb, share_cores, time_limit
from pytest_tprune.errors import CheckFailed, TpruneError

if TYPE_CHECKING:
    from torch import nn

    from pytest_tprune.checks.channels import ChannelReport
    from pytest_tprune.checks.export import ExportReport
    from pytest_tprune.engine.outcome import Pruned, PruneOutcome

CHECKS = ("forward", "shapes", "groups", "equivalence", "export", "golden", "reduction")
"""Every check, in the order ``check_all()`` runs them (``export`` before ``golden``, which records its outcomes)."""
OPT_IN_CHECKS = ("export",)
"""Checks that run only when ``--tprune-checks`` names them: ``export`` exports every case three ways (about
0.5 s a tiny model, more with onnx)."""
DEFAULT_CHECKS = tuple(c for c in CHECKS if c not in OPT_IN_CHECKS)
"""What runs unless ``--tprune-checks`` says otherwise: every check but the opt-in ones. ``equivalence`` costs one
more prune of a perturbed copy per uniform case (figures in benchmarks/RESULTS.md); leave it out with
``--tprune-checks``."""


@dataclass
class CaseSettings:
    """The run-wide settings a case needs (a plain subset of the plugin's)."""

    device: str = "cpu"
    golden_dir: Path = Path("golden")
    update_golden: bool = False
    seed: int = DEFAULT_SEED
    timeout: float | None = None
    timeout_option: str = "--tprune-timeout"
    """The option that set ``timeout``, named when a case runs past it (``--tprune-slow-limit`` for a known-slow
    model)."""
    checks: tuple[str, ...] = DEFAULT_CHECKS
    latency: bool = True
    """Measure the unpruned and pruned forward latency for the report (:mod:`pytest_tprune.engine.latency`)."""


@dataclass
class TpruneCase:
    """A model x config case: prunes lazily, then checks on demand."""

    spec: ModelSpec
    config: PruneConfig
    settings: CaseSettings
    check_times: dict[str, float] = field(default_factory=dict)
    channels: ChannelReport | None = None
    """What the equivalence check covered (groups checked, unchecked with reasons, save/load, worst error)."""
    golden_written: list[str] = field(default_factory=list)
    export: ExportReport | None = None
    """What each exporter did with the pruned model, when the export check ran."""

    def __repr__(self) -> str:
        return f"<TpruneCase {self.case_id} on {self.settings.device}>"

    @property
    def case_id(self) -> str:
        return f"{self.spec.name}-{self.config.config_id}"

    def reproduce_command(self) -> str:
        """The ``tprune`` command that prunes this case alone, seed and device included."""
        return self.config.reproduce_command(self.spec.name, self.settings.seed, self.settings.device)

    @property
    def has_pruned(self) -> bool:
        """Whether the prune ran to the end (its figures exist): a failed or timed-out one did not."""
        return "pruned" in self.__dict__

    @cached_property
    def pruned(self) -> Pruned:
        from pytest_tprune.engine.pruning import prune

        share_cores()
        freeze_imports_for_gc()
        with time_limit(self.settings.timeout, f"pruning {self.case_id}", self.settings.timeout_option):
            start = time.perf_counter()
            pristine = STORE.pristine(self.spec, self.settings.seed)
            self.check_times["pristine"] = time.perf_counter() - start
            device = self.settings.device
            pruned = prune(
                self.spec,
                self.config,
                device,
                self.settings.seed,
                model=lambda: copy.deepcopy(pristine.model),  # a retry after a broken forward takes another copy
                baseline=pristine.baselines.get(device),
            )
            pristine.baselines[device] = pruned.baseline  # the next config of this model skips measuring it
            return pruned

    @cached_property
    def stock(self) -> dict[str, Any]:
        """What plain torch-pruning does with this case (:mod:`pytest_tprune.engine.stock`): its verdict
        (``ok``, ``skips groups``, ``breaks the forward``, ``crashes``, ``hangs``) and one line of detail.
        Recorded, never failing the case; run once, on a pristine copy, under its own time limit."""
        from pytest_tprune.checks.stock import NOT_JUDGED, stock_verdict
        from pytest_tprune.engine.stock import STOCK_TIME_LIMIT_S, StockRunFault, run_stock

        pruned = self.pruned
        start = time.perf_counter()
        try:
            model = copy.deepcopy(STORE.pristine(self.spec, self.settings.seed).model).to(pruned.inputs.device)
            limit = min(STOCK_TIME_LIMIT_S, self.settings.timeout or STOCK_TIME_LIMIT_S)
            shape = list(pruned.base_output.shape)
            try:
                run = run_stock(self.spec, model, pruned.inputs, self.config, self.settings.seed, shape, limit)
            except StockRunFault as fault:
                return {"verdict": NOT_JUDGED, "detail": checker_fault("stock", fault.__cause__ or fault)}
            del model
            return stock_verdict(run, self.config)
        finally:
            self.check_times["stock"] = time.perf_counter() - start

    @property
    def outcome(self) -> PruneOutcome:
        return self.pruned.outcome

    @property
    def model(self) -> nn.Module:
        """The pruned model."""
        return self.pruned.model

    @contextmanager
    def _timed(self, check: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            with time_limit(self.settings.timeout, f"check '{check}' of {self.case_id}", self.settings.timeout_option):
                yield
        finally:
            self.check_times[check] = self.check_times.get(check, 0.0) + time.perf_counter() - start

    def _fail_on_problems(self, check: str, find: Callable[[], list[str]]) -> None:
        """Prune first (under its own time limit), then run ``find`` timed; its problems fail ``check``."""
        __tracebackhide__ = True
        self.pruned  # noqa: B018
        with self._timed(check):
            try:
                problems = find()
            except TpruneError:
                raise
            except Exception as exc:  # the check's own machinery broke: say so, under the check's name
                raise CheckFailed(check, checker_fault(check, exc)) from exc
        if problems:
            raise CheckFailed(check, "; ".join(problems))

    # -- checks ---------------------------------------------------------------

    def check_forward(self) -> None:
        """Eval output at batch 1 has the unpruned shape and is finite; a train-mode forward at
        batch 2 has the right shape, is finite, and its backward reaches every parameter the
        unpruned model's train-mode backward reached."""
        __tracebackhide__ = True
        self._fail_on_problems("forward", self._forward_problems)

    def _forward_problems(self) -> list[str]:
        """Two passes, not four: the eval pass at batch 1 is the one counting already ran
        (``Pruned.output``), and the train-mode pass at batch 2 also carries the backward."""
        import torch

        pruned = self.pruned
        base_shape = list(pruned.base_output.shape)
        problems = []
        if self.outcome.output_shape_after != base_shape:
            problems.append(f"eval output shape {self.outcome.output_shape_after} != unpruned {base_shape}")
        if not torch.isfinite(pruned.output).all():
            problems.append("eval output at batch 1 has non-finite values")
        batch = self.spec.make_inputs(2, self.settings.seed).to(pruned.inputs.device)
        return problems + self._train_problems(batch, [2, *base_shape[1:]])

    def _train_problems(self, batch: Any, expected: list[int]) -> list[str]:
        from pytest_tprune.engine.measure import output_tensor

        model = self.pruned.model
        model.zero_grad(set_to_none=True)
        model.train()
        try:
            out = output_tensor(model(batch))
            if list(out.shape) != expected:
                return [f"train-mode output shape at batch 2 {list(out.shape)} != {expected}"]
            problems = [] if out.isfinite().all() else ["train-mode output at batch 2 has non-finite values"]
            out.float().sum().backward()
        except Exception as exc:
            return [f"train-mode forward/backward failed: {type(exc).__name__}: {exc}"]
        finally:
            model.eval()
        missed = sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
        model.zero_grad(set_to_none=True)
        if missed:  # blame pruning only for what the unpruned model reaches
            allowed = STORE.pristine(self.spec, self.settings.seed).unreached
            missed = [n for n in missed if n not in allowed]
        if missed:
            problems.append(f"backward reaches no gradient to {len(missed)} parameter(s): {', '.join(missed[:5])}")
        return problems

    def check_shapes(self) -> None:
        """Uniform mode: every pruned group removed what ratio and round_to predict;
        ignored layers kept their output size."""
        __tracebackhide__ = True
        self.pruned  # noqa: B018 - prune first, under its own time limit
        with self._timed("shapes"):
            violations = exp.shape_violations(self.outcome)
        if violations:
            shown = "\n".join(f"  {v.group}: {v.detail}" for v in violations[:20])
            more = f"\n  ... and {len(violations) - 20} more" if len(violations) > 20 else ""
            raise CheckFailed("shapes", f"{len(violations)} group(s) break the shape rule:\n{shown}{more}")

    def check_groups(self) -> None:
        """Every group torch-pruning offered was pruned as the rule says, or left whole, refused or
        too narrow with its reason: none was silently skipped (:mod:`pytest_tprune.checks.accounting`)."""
        __tracebackhide__ = True
        from pytest_tprune.checks.accounting import skipped_groups, skipped_message
        from pytest_tprune.engine.custom import unobserved_groups

        self.pruned  # noqa: B018 - prune first, under its own time limit
        unseen = unobserved_groups(self.outcome.recipe)
        if unseen:
            raise CheckFailed(
                "groups",
                f"{unseen}: none of its groups can be accounted for, so a group it skipped would pass unseen; "
                "prune through a torch_pruning MetaPruner (its step() or step(interactive=True)), or leave "
                "'groups' out of --tprune-checks for this run",
            )
        with self._timed("groups"):
            skipped = skipped_groups(self.outcome)
        if skipped:
            raise CheckFailed("groups", skipped_message(self.outcome, skipped))

    def check_equivalence(self) -> None:
        """Uniform mode, on a perturbed copy (every channel distinguishable, non-default BatchNorm
        statistics): the pruned model computes what the soft-pruned original computes, on every group
        where that holds; removed channels never outrank kept ones; and the pruned model survives
        ``torch_pruning.state_dict`` / ``load_state_dict`` into a fresh model."""
        __tracebackhide__ = True
        self._fail_on_problems("equivalence", self._equivalence_problems)

    def _equivalence_problems(self) -> list[str]:
        from pytest_tprune.checks.channels import right_channels

        if self.config.global_pruning or self.config.ratio == 0:
            return []
        pristine = STORE.pristine(self.spec, self.settings.seed)
        self.channels = right_channels(self.spec, pristine, self.config, self.settings.seed)
        return self.channels.problems

    def check_golden(self) -> None:
        """Compare with (or, with --tprune-update-golden, write) the case's golden file."""
        __tracebackhide__ = True
        from pytest_tprune.checks import golden
        from pytest_tprune.checks.stock import NOT_JUDGED
        from pytest_tprune.engine.identity import exporter_versions, library_versions

        self.pruned  # noqa: B018 - prune first, under its own time limit
        with self._timed("golden"):
            channels = self.channels.golden() if self.channels is not None else None
            exported = self.export.golden() if self.export is not None else None
            versions = {**library_versions(), **exporter_versions(exported or ())}
            if self.stock["verdict"] == NOT_JUDGED:  # our fault, not torch-pruning's: never compared or written
                raise CheckFailed("golden", self.stock["detail"])
            content = golden.golden_content(self.outcome, versions, channels, self.stock, exported)
            path = golden.golden_path(self.settings.golden_dir, self.spec.name, self.config.config_id)
            if self.settings.update_golden:
                content = golden.carry_export(golden.carry_channels(content, path), path)
                if not golden.same_content(path, content):
                    try:
                        golden.write_golden(path, content)  # atomic: a failed write leaves no file behind
                    except OSError as exc:
                        raise CheckFailed(
                            "golden",
                            f"cannot write golden {path}: {type(exc).__name__}: {exc}; existing goldens untouched "
                            "(make the golden directory writable or point --tprune-golden-dir elsewhere)",
                        ) from None
                    self.golden_written.append(str(path))
                return
            if not path.exists():
                raise CheckFailed(
                    "golden",
                    f"golden file {path} is missing: create it with {golden.update_command(self.case_id)} "
                    "and review it before committing",
                )
            try:
                expected = golden.read_golden(path)
            except golden.GoldenError as err:
                raise CheckFailed("golden", golden.broken_message(err, self.case_id)) from None
            diff = golden.diff_golden(expected, content)
        if diff:
            raise CheckFailed(
                "golden",
                f"{self.case_id} differs from {path}:\n{golden.render_diff(diff, expected, versions)}\n"
                "if the change is intended, rewrite it with --tprune-update-golden and review the diff",
            )

    def check_export(self) -> None:
        """The pruned model exports with ``torch.export`` and ``torch.jit.trace`` (and ONNX where installed), and
        each artifact computes the eager output within atol 1e-4 + rtol 1e-4; an exporter the unpruned model
        fails too is recorded, not failed (:mod:`pytest_tprune.checks.export`)."""
        __tracebackhide__ = True
        self._fail_on_problems("export", self._export_problems)

    def _export_problems(self) -> list[str]:
        """Exports once per case: a test that calls ``check_export()`` before ``check_all()`` (so that the
        golden records it) does not pay twice when ``--tprune-checks`` names it too."""
        from pytest_tprune.checks.export import export_report

        if self.export is not None:
            return self.export.problems
        pruned = self.pruned
        self.export = export_report(pruned.model, pruned.inputs, self._eager_output(), self._unpruned_for_export)
        return self.export.problems

    def _eager_output(self) -> Any:
        """The pruned model's eval output now: the counting pass's (``Pruned.output``) unless the forward
        check's train-mode pass has since moved BatchNorm's running statistics, then one fresh eval forward."""
        import torch

        from pytest_tprune.engine.measure import output_tensor

        pruned = self.pruned
        if "forward" not in self.check_times:
            return pruned.output
        pruned.model.eval()
        with torch.no_grad():
            return output_tensor(pruned.model(pruned.inputs))

    def _unpruned_for_export(self) -> tuple[nn.Module, Any]:
        """A deep copy of the pristine model on the case's device, with its eval output: only a failing
        exporter asks, to tell a pruning fault from a model the exporter never handled."""
        pruned = self.pruned
        model = copy.deepcopy(STORE.pristine(self.spec, self.settings.seed).model).to(pruned.inputs.device)
        return model.eval(), pruned.base_output

    @cached_property
    def latency(self) -> dict[str, Any] | None:
        """Eager forward latency of the unpruned and the pruned model at batch 1 (:mod:`pytest_tprune.engine.latency`).

        The unpruned figure is measured once per model, seed and device per worker and kept with the
        pristine model, on a deep copy (a forward can leave caches in a model). The pruned model is timed
        in place: the case runs this last, from its report row. Reported, never asserted.
        """
        from pytest_tprune.engine import latency

        if not self.settings.latency or not self.has_pruned:
            return None
        pruned = self.pruned
        start = time.perf_counter()
        try:
            pristine = STORE.pristine(self.spec, self.settings.seed)
            device = str(pruned.inputs.device)
            if device not in pristine.latencies:
                model = copy.deepcopy(pristine.model).to(pruned.inputs.device)
                pristine.latencies[device] = latency.measure(model, pruned.inputs)
                del model
            return latency.latency_row(pristine.latencies[device], latency.measure(pruned.model, pruned.inputs))
        except Exception as exc:  # a model that runs once but not under inference_mode: say so, do not fail
            return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}
        finally:
            self.check_times["latency"] = time.perf_counter() - start

    def check_reduction(self) -> None:
        """Params and MACs strictly decrease for ratio > 0 and stay in the rule's band."""
        __tracebackhide__ = True
        self._fail_on_problems("reduction", self._reduction_problems)

    def _reduction_problems(self) -> list[str]:
        out = self.outcome
        problems = []
        pairs = {
            "params": (out.params_before, out.params_after),
            "MACs (torch-pruning)": (out.macs_before, out.macs_after),
            "MACs (FlopCounterMode)": (out.flop_macs_before, out.flop_macs_after),
        }
        for what, (before, after) in pairs.items():
            if self.config.ratio > 0 and not after < before:
                problems.append(f"{what} did not decrease: {before} => {after}")
            if self.config.ratio == 0 and after != before:
                problems.append(f"{what} changed at ratio 0: {before} => {after}")
        band = exp.param_band(out, self.spec.reduction_band, self.spec.reduction_band_reason)
        if band is not None:
            kept = (
                exp.fraction(out.params_after, out.params_before)
                if self.spec.reduction_band
                else exp.pruned_param_fraction(out)
            )
            if kept is not None and not band.contains(kept):
                problems.append(f"{band.what} {kept:.4f} outside [{band.low:.4f}, {band.high:.4f}] ({band.reason})")
        macs = exp.mac_band(out)
        kept_macs = exp.fraction(out.flop_macs_after, out.flop_macs_before)
        if macs is not None and not self.spec.reduction_band and not macs.contains(kept_macs):
            problems.append(f"{macs.what} {kept_macs:.4f} outside [{macs.low:.4f}, {macs.high:.4f}] ({macs.reason})")
        return problems

    def check_all(self) -> None:
        """Every configured check, in order: forward validity, shape rule, group accounting, golden, reduction."""
        __tracebackhide__ = True
        for check in self.settings.checks:
            getattr(self, f"check_{check}")()

    def _stock_row(self) -> dict[str, Any]:
        """The report's ``stock``; left out when the stock run broke in this package (the golden check says so)."""
        from pytest_tprune.checks.stock import NOT_JUDGED

        return {} if self.stock["verdict"] == NOT_JUDGED else {"stock": self.stock}

    def report_row(self) -> dict[str, Any]:
        """What the case reports: its figures when the prune ran to the end, else what it used."""
        return self.summary_row() if self.has_pruned else self.resources_row()

    def resources_row(self) -> dict[str, Any]:
        """What a case that stopped before its figures still reports: memory, worker, durations."""
        return {
            "peak_rss_mb": peak_rss_mb(),
            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
            "durations": {k: round(v, 4) for k, v in self.check_times.items()},
        }

    def summary_row(self) -> dict[str, Any]:
        """The figures of this case for the terminal table and the JSON report."""
        from pytest_tprune.checks.accounting import group_accounting

        out = self.outcome
        kept_params = exp.fraction(out.params_after, out.params_before)
        kept_macs = exp.fraction(out.macs_after, out.macs_before)
        kept_flops = exp.fraction(out.flop_macs_after, out.flop_macs_before)
        return {
            "params_before": out.params_before,
            "params_after": out.params_after,
            "macs_before": out.macs_before,
            "macs_after": out.macs_after,
            "flop_macs_before": out.flop_macs_before,
            "flop_macs_after": out.flop_macs_after,
            "kept_params": round(kept_params, 6),
            "kept_macs": round(kept_macs, 6),
            "kept_flop_macs": round(kept_flops, 6),
            "counter_disagreement": round(kept_macs - kept_flops, 6),
            "groups_pruned": len(out.groups),
            "groups_left_whole": len(out.left_whole),
            "group_accounting": group_accounting(out),
            **({"equivalence": self.channels.summary()} if self.channels is not None else {}),
            **({"export": self.export.summary()} if self.export is not None else {}),
            **({"latency": self.latency} if self.latency is not None else {}),
            **self._stock_row(),
            "device": out.device,
            "peak_rss_mb": peak_rss_mb(),
            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
            "durations": {**out.timings, **{k: round(v, 4) for k, v in self.check_times.items()}},
        }


def checker_fault(check: str, exc: BaseException) -> str:
    """The message of a check that raised instead of judging: what raised, and where, and whose fault it is.

    A check compares the pruned model with something (its soft-pruned original,
    a reloaded copy); when that comparison itself raises, the case fails under
    the check's name, never as a bare ``RuntimeError``, and the message says the
    verdict is missing rather than that torch-pruning pruned wrongly.
    """
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {'/'.join(Path(frames[-1].filename).parts[-2:])}:{frames[-1].lineno}" if frames else ""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return (
        f"the {check} check could not judge the pruned model: {type(exc).__name__}: {text}{where} "
        "(a fault in the check's own comparison, not a verdict on torch-pruning; please report it)"
    )

"""What every method module provides to the engine.

A method is an ``nn.Module`` that owns its model, its loss parameters (class prototypes), its
memory bank and EMA encoder. The engine only calls the hooks below; it knows nothing
method-specific. Everything that must survive a checkpoint lives in ``state_dict()``: a run can
be killed at any moment and resumed from its last checkpoint (possibly inside an epoch), and it
must then continue exactly as if it had not stopped.

Host syncs. On CUDA the engine reads at most one value per optimizer step from the device (its
non-finite check); everything a method does inside a step must stay on the device: loss parts
are returned as detached tensors (never ``.item()``/``float()``), and host-side input checks
(label or index ranges) run only while ``set_input_checks(True)`` is in force, which the engine
does for the first step of each epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

if TYPE_CHECKING:
    from dmlrs.losses import LossChoice


@dataclass
class EpochContext:
    """What an epoch hook may use: the epoch number and a way to embed a dataset.

    ``extract(dataset)`` returns ``(embeddings, labels, indices)`` computed with the model in eval
    mode (the engine's own extraction, so hooks never write a loop). A dataset with random
    augmentation is drawn with one seed per image derived from (epoch, index), so the result
    is the same whatever the number of loader workers and however often the run was resumed.
    """

    epoch: int
    extract: Callable[[torch.utils.data.Dataset], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class Method(nn.Module):
    """Base class: override ``training_step`` and ``embed``; the rest are optional hooks."""

    name: str = "method"
    #: True for hashing methods: the test report adds Hamming-space retrieval on ``codes``.
    hashing: bool = False
    #: Extra P@k / R@k cut-offs of the method's paper for the test report, beside the defaults
    #: (``dmlrs.metrics.retrieval.DEFAULT_KS``); like those, only k below the number of items a
    #: query ranks are reported (:func:`dmlrs.metrics.retrieval.default_ks`).
    report_ks: tuple[int, ...] = ()

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """Losses of one batch. ``"loss"`` is the total that is back-propagated; the other entries
        are loss parts for logging: detached 0-d tensors on the device, never Python floats
        (converting one is a device-to-host sync; the engine reads them once per log interval)."""
        raise NotImplementedError

    def set_input_checks(self, enabled: bool) -> None:
        """Switch the host-side input checks (label/index ranges) of every loss of this method.

        They read values to the host, a device sync on CUDA, so the engine runs them for the
        first step of each epoch only (the labels come from the same dataset all run long) and
        switches them back on after the epoch, so a loss called on its own checks every call.
        A loss opts in with a boolean ``validate`` attribute (``SNCALoss``, ``CosinePrototypeLoss``)."""
        for module in self.modules():
            if isinstance(getattr(module, "validate", None), bool):
                module.validate = enabled

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Updates that follow ``optimizer.step()`` (memory bank, EMA). Default: none. Not called
        for a step the trainer skips (non-finite loss or gradient, ``--skip-nonfinite``): values
        queued by that step's ``training_step`` must be replaced by the next one's."""

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings used for retrieval and kNN."""
        raise NotImplementedError

    def codes(self, images: torch.Tensor) -> torch.Tensor:
        """Real-valued codes that the Hamming metrics binarise (hashing methods only)."""
        raise NotImplementedError(f"{self.name} is not a hashing method")

    def on_epoch_start(self, context: EpochContext) -> None:
        """Epoch hook (momentum schedules, sample re-weighting). Default: none.

        The trainer calls it exactly once per epoch, when the epoch starts (after re-seeding),
        and NOT again when a run resumes inside an epoch whose start already ran: everything the
        hook changes must therefore live in ``state_dict()`` (a registered buffer, e.g. the
        memory bank's ``momentum_value`` or t-RNSL's ``weights``), never in a plain attribute."""

    def scalars(self) -> dict[str, float]:
        """Method state worth logging each epoch (memory momentum, kept fraction...); read once
        per epoch, so plain floats are fine here."""
        return {}

    def batch_sampler(self, labels: torch.Tensor, batch_size: int, seed: int):
        """A batch sampler for the training split, or None for plain shuffled batches."""
        return None


class ReplaceableMetricTerm:
    """Mixin of the methods whose metric-learning term ``--loss`` may replace (SNCA-CE, SRL).

    The paper's own term keeps its attribute (and so its checkpoint keys, e.g. ``snca.``); a
    replacement is stored as ``metric_loss``. ``term`` is the term's key among the logged loss
    parts (``pml:X`` -> ``pml_X``)."""

    REPLACEMENT = "metric_loss"

    def set_metric_term(self, choice: "LossChoice", context: dict, *, paper_term: str) -> None:
        """Build ``choice`` with the ``context`` values its constructor names and attach it."""
        self.term = choice.part_name
        self._metric_term_attribute = paper_term if self.term == paper_term else self.REPLACEMENT
        setattr(self, self._metric_term_attribute, choice.build(context, where=self.name))

    @property
    def metric_term(self) -> nn.Module:
        """The metric-learning term: the paper's, or the loss that replaced it."""
        return getattr(self, self._metric_term_attribute)

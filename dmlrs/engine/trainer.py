"""The one training loop: train epoch -> validation -> checkpoint, for every method.

The method supplies ``training_step`` and hooks (see ``dmlrs/methods/base.py``); the trainer owns
the optimizer, schedule, mixed precision, seeding, checkpoints and logs.

Exact resume, whatever moment a run is killed at (``kill -9`` included):

* **Randomness.** When epoch ``e`` (0-based) *starts*, the RNGs are re-seeded from ``(seed, e)``
  and the method's epoch hooks run (``on_epoch_start``: memory momentum schedule, t-RNSL
  refresh). A run resumed *inside* an epoch (``epoch_started`` in the checkpoint) does neither:
  the RNG states and the hooks' effects come from the checkpoint. Batch order is a function of
  ``(seed, epoch)`` and every augmentation draw has its own seed (``dmlrs.engine.loaders``), so
  the replayed rest of the epoch sees the same images whatever ``--num_workers`` is.
* **Checkpoints.** ``last.pt`` is written atomically at the end of every epoch and, with
  ``--save-every-steps N``, every N optimizer steps inside an epoch (:data:`DEFAULT_SAVE_EVERY_STEPS
  <dmlrs.engine.config.DEFAULT_SAVE_EVERY_STEPS>`, chosen so a save costs < 2% of the step
  time). A checkpoint also holds the epoch's running loss sums (so a resumed epoch logs the
  same means) and the record of the last finished epoch.
* **Epoch end order.** validate -> update best score -> ``last.pt`` (with the record) ->
  ``best.pt`` (same state, when improved) -> ``metrics.jsonl`` line. A kill before ``last.pt``
  replays the epoch (validation included); a kill between ``last.pt`` and ``best.pt`` is
  repaired on resume (``best.pt`` is rewritten from ``last.pt``, whose epoch is the best); a
  kill before the log line is repaired by :meth:`RunLog.reconcile`. Temporary files of killed
  writes are deleted on resume.
* **Divergence.** A step whose loss (any part) or gradient is not finite never reaches the
  optimizer, the memory bank or a checkpoint: the run stops with an error naming the epoch,
  step and parts, keeping the last good ``last.pt`` -- or, with ``--skip-nonfinite N``, up to N
  such steps are skipped over the run (counted as ``skipped_nonfinite`` in ``metrics.jsonl``).
  Under fp16 autocast the grad scaler handles overflowing gradients itself (not counted).
* **Disk.** A checkpoint that cannot be written (e.g. a full disk) ends the run with one error
  naming the file and the reason; the previous checkpoint is intact.

Host syncs: on CUDA one optimizer step reads the device once -- a single boolean "loss, every loss
part and every gradient finite" (``Trainer._step``). The loss parts stay on the device: they are
summed there in float64 (:class:`EpochTotals`) and every ``--log-every`` steps (and at the last
step of the epoch) those sums travel to the host in that same read, for the progress bar and
``metrics.jsonl``. Which part or gradient was not finite is worked out on the host only when the
check fails. Host-side input checks of the losses run on the first step of each epoch only
(``Method.set_input_checks``). Outside this loop: a checkpoint save reads the sums, epoch ends
read ``Method.scalars``; under fp16 autocast (GPUs without bf16) the grad scaler reads its own
overflow flag each step.

Distributed training (torchrun; ``dmlrs.engine.distributed`` explains the scheme): the method
runs inside DistributedDataParallel, each rank trains on its slice of the same global batches
(``--batch-size`` is the global batch), and per step one all-reduce (``Trainer._agree``) makes
every rank agree on the non-finite check, the loss parts (averaged: the global-batch means), a
stop request (SIGINT/SIGTERM on any rank stops every rank after the same step) and the
``--skip-corrupt`` count; it is read in the step's one host sync. Besides DDP's gradient
all-reduce, a step has one all-reduce of the batch-norm running statistics (unsynchronised layers:
no ``--sync-bn``) and, in the methods that need them, the gathers of the memory update and of
batch-coupled losses; none of them reads the device from the host. Every rank holds the same
state, so rank 0 alone writes checkpoints and logs, and every rank can resume from them.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from dmlrs.atomic import remove_stale_temporaries
from dmlrs.data.gpu_augment import finish_batch
from dmlrs.engine import distributed, faults
from dmlrs.engine.checkpoint import (FORMAT_VERSION, capture_rng_state, load_checkpoint, restore_rng_state,
                                     save_checkpoint)
from dmlrs.engine.config import HASHING_SELECT_METRICS, TrainConfig
from dmlrs.engine.device import autocast, make_grad_scaler
from dmlrs.engine.evaluation import Evaluator
from dmlrs.engine.interrupt import GracefulInterrupt
from dmlrs.engine.loaders import ContinuingPasses, ShuffledBatches, train_loader
from dmlrs.engine.run_log import NullRunLog, RunLog
from dmlrs.engine.seeding import UNLABELLED_STREAM, epoch_seed, seed_everything
from dmlrs.errors import DmlrsError
from dmlrs.methods.base import EpochContext, Method

#: files of the run folder written atomically (their temporaries are cleaned up on resume)
_RUN_FILES = ("metrics.jsonl", "test_metrics.json", "config.json", "split.json")
_CHECKPOINT_FILES = ("last.pt", "best.pt")


@dataclass
class EpochTotals:
    """Running sums of the epoch being trained. Saved in mid-epoch checkpoints, so the record of
    an epoch that was resumed averages all of its steps, as an uninterrupted run does.

    ``sums`` are float64 0-d tensors on the training device while the epoch runs (adding a step
    costs no host sync) and Python floats in a checkpoint; float64 adds on the device are the
    adds Python would do, so the means are the same whichever way they were summed."""

    sums: dict[str, float | torch.Tensor] = field(default_factory=dict)  # loss parts over counted steps
    steps: int = 0  # steps in ``sums`` (skipped steps are not)
    skipped: int = 0  # steps skipped for a non-finite loss or gradient
    replaced: int | None = None  # images replaced by --skip-corrupt (None: the data never says)
    #: the last values read to the host: (``steps`` then, sums then); not part of the state
    read: tuple[int, dict[str, float]] | None = field(default=None, compare=False, repr=False)

    def state_dict(self) -> dict:
        return {"sums": self.host_sums(), "steps": self.steps, "skipped": self.skipped, "replaced": self.replaced}

    def with_step(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The sums after adding one step's loss parts (0-d tensors), as float64 device tensors;
        ``sums`` itself is left as it is (the step may yet be skipped). No host sync."""
        device = next(iter(parts.values())).device
        sums = {key: value if torch.is_tensor(value) else torch.full((), value, dtype=torch.float64, device=device)
                for key, value in self.sums.items()}
        for key, value in parts.items():
            sums[key] = sums[key] + value.double() if key in sums else value.double()
        return sums

    def host_sums(self) -> dict[str, float]:
        """``sums`` as Python floats: the last read when it is current, else one read of the device."""
        if self.read is not None and self.read[0] == self.steps and self.read[1].keys() == self.sums.keys():
            return dict(self.read[1])
        tensors = [value for value in self.sums.values() if torch.is_tensor(value)]
        values = iter(torch.stack(tensors).tolist() if tensors else [])
        host = {key: next(values) if torch.is_tensor(value) else float(value) for key, value in self.sums.items()}
        self.read = (self.steps, dict(host))
        return host

    @classmethod
    def from_state(cls, state: dict | None) -> "EpochTotals":
        if not state:
            return cls()
        return cls({str(k): float(v) for k, v in state["sums"].items()}, int(state["steps"]),
                   int(state["skipped"]), None if state["replaced"] is None else int(state["replaced"]))

    def add_replaced(self, flags) -> None:
        """Count the images of a batch that the data layer replaced (its ``"replaced"`` key)."""
        if flags is not None:
            self.replaced = (self.replaced or 0) + int(torch.as_tensor(flags).sum())


def check_batch_split(method: Method, data, batch_size: int, seed: int) -> None:
    """Under torchrun: refuse global batches (the method's, or ``batch_size`` shuffled images; the
    unlabelled stream's) that do not split into equal slices of at least 2 images per process."""
    world = distributed.world_size()
    if world == 1:
        return
    if len(data.train) < 2 * world:
        raise DmlrsError(f"the training split has {len(data.train)} images: fewer than 2 per process for {world} "
                         "processes; use fewer processes")
    sampler = method.batch_sampler(data.train_labels, batch_size, seed)
    if sampler is None:
        distributed.check_batch_split(batch_size, ShuffledBatches.batch_flag)
    elif hasattr(sampler, "batch_size"):
        distributed.check_batch_split(sampler.batch_size, getattr(sampler, "batch_flag", "the batch size"))
    if getattr(data, "unlabelled", None) is not None:
        distributed.check_batch_split(batch_size, ShuffledBatches.batch_flag)


class _TrainingStep(nn.Module):
    """The method's training step as a module's forward: what DistributedDataParallel wraps."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.method.training_step(batch)


class Trainer:
    def __init__(self, method: Method, data, config: TrainConfig, run_dir: str | Path,
                 *, tensorboard: bool = True):
        self.method, self.data, self.config = method, data, config
        self.run_dir = Path(run_dir)
        self.device = distributed.process_device(config.device)
        method.to(self.device)
        if config.channels_last:
            method.to(memory_format=torch.channels_last)
        #: under torchrun (any number of processes): DDP, rank slices, rank 0 writes
        self.distributed = distributed.is_distributed()
        if self.distributed and config.sync_bn:  # layers replaced in place, parameters kept
            distributed.convert_sync_batchnorm(method, self.device)
        self.trainable = [(name, p) for name, p in method.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD([p for _, p in self.trainable], lr=config.lr, momentum=config.momentum,
                                         nesterov=config.nesterov, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=config.lr_step,
                                                         gamma=config.lr_gamma)
        self.scaler = make_grad_scaler(self.device, config.amp)
        self.evaluator = Evaluator(method, data, self.device,
                                   batch_size=config.eval_batch_size or config.batch_size,
                                   num_workers=config.num_workers, amp=config.amp,
                                   channels_last=config.channels_last, knn_k=config.knn_k,
                                   progress=config.progress, select_metric=config.select_metric)
        self.tensorboard = tensorboard
        self.epoch = 0            # epochs completed
        self.step_in_epoch = 0    # optimizer steps done (or skipped) in the epoch being trained
        self.epoch_started = False  # the epoch being trained was re-seeded and its hooks ran
        self.totals = EpochTotals()  # running sums of the epoch being trained
        self.record: dict | None = None  # metrics.jsonl record of epoch ``self.epoch``
        self.skipped_nonfinite = 0  # steps skipped over the whole run
        self.best_score = -math.inf
        self.best_epoch = -1
        self.saved_at: tuple[int, int] | None = None  # (epoch, step_in_epoch) of the last.pt we know of
        self._epoch_steps: int | None = None  # steps of the epoch being trained (None: outside one)
        self.interrupt = distributed.TorchrunInterrupt() if self.distributed else GracefulInterrupt()
        #: called as ``callback(trainer)`` after each finished epoch (tests use it to interrupt).
        self.epoch_end_callbacks: list[Callable[["Trainer"], None]] = []
        self._ddp: nn.Module | None = None  # the DDP-wrapped training step (distributed only)
        if self.distributed:
            self._ddp = distributed.wrap_ddp(_TrainingStep(method), self.device)
        self._agreed_stop = False  # distributed: a stop request agreed by every rank at the last step
        self._step_replaced: int | None = None  # distributed: this rank's --skip-corrupt count of the step

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def state_dict(self) -> dict:
        return {
            "format": FORMAT_VERSION,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "epoch_started": self.epoch_started,
            "epoch_totals": self.totals.state_dict(),
            "record": self.record,
            "skipped_nonfinite": self.skipped_nonfinite,
            "method": self.method.state_dict(),
            "model": self.method.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "manifest_hash": self.data.manifest_hash,
            "world_size": distributed.world_size(),  # processes that trained it (informative)
            **self._description(),
        }

    def _description(self) -> dict:
        """What a checkpoint needs to be used without its run folder (``python -m dmlrs.retrieve``):
        ``model_spec``, ``method_name``, ``hashing``, ``classes``, ``image_size``. A model that is
        not an ``EmbeddingModel`` (a test's stand-in) has no ``model_spec``."""
        description = {"method_name": self.method.name, "hashing": self.method.hashing,
                       "classes": list(self.data.classes)}
        build_kwargs = getattr(self.method.model, "build_kwargs", None)
        if build_kwargs is not None:
            description["model_spec"] = build_kwargs()
        if getattr(self.data, "image_size", None) is not None:
            description["image_size"] = int(self.data.image_size)
        return description

    def load_state_dict(self, state: dict, *, source: str = "checkpoint") -> None:
        if state.get("manifest_hash") != self.data.manifest_hash:
            raise DmlrsError(f"{source} was trained on a different split or dataset than the one "
                             "loaded now; resume with the run's own split.json (--split-file) and data")
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        # format 1 had no flag: its mid-epoch checkpoints were written after the epoch had started
        self.epoch_started = bool(state.get("epoch_started", self.step_in_epoch > 0))
        self.totals = EpochTotals.from_state(state.get("epoch_totals"))
        self.record = state.get("record")
        self.skipped_nonfinite = int(state.get("skipped_nonfinite", 0))
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.saved_at = (self.epoch, self.step_in_epoch)
        trained_by, world = int(state.get("world_size", 1)), distributed.world_size()
        if trained_by != world and (self.epoch or self.step_in_epoch):
            print(f"note: {source} was trained by {trained_by} process(es), continued by {world}: the same global "
                  "batches, but batch-norm statistics (without --sync-bn) and float sums differ, so the run is not "
                  "bit-identical to an uninterrupted one", flush=True)

    def save(self, name: str) -> Path:
        """Write ``checkpoints/<name>.pt`` atomically, refusing a state with non-finite values."""
        self._check_state_is_finite(f"before writing {name}.pt ({self._position(self.epoch, self.step_in_epoch)})")
        path = self.checkpoint_dir / f"{name}.pt"
        if distributed.is_main():  # every rank holds the same state; rank 0 writes it
            save_checkpoint(self.state_dict(), path)
        if name == "last":
            self.saved_at = (self.epoch, self.step_in_epoch)
        return path

    # ------------------------------------------------------------------ training
    def fit(self) -> bool:
        """Train until ``config.epochs``; returns False when stopped by a signal (last.pt saved)."""
        check_batch_split(self.method, self.data, self.config.batch_size, self.config.seed)
        main = distributed.is_main()
        log = RunLog(self.run_dir, tensorboard=self.tensorboard) if main else NullRunLog()
        self._agreed_stop = False
        try:
            if main:
                self._repair_after_kill(log)
            with self.interrupt:
                while self.epoch < self.config.epochs:
                    record = self._train_epoch()
                    if self._stop_requested():
                        self.save("last")
                        print(f"stopped during epoch {self.epoch + 1}: state saved to "
                              f"{self.checkpoint_dir / 'last.pt'}; continue with --resume", flush=True)
                        return False
                    self._finish_epoch(record, log)
                    for callback in self.epoch_end_callbacks:
                        callback(self)
                    stop = (distributed.any_true(self.interrupt.requested) if self.distributed
                            else self.interrupt.requested)
                    if stop and self.epoch < self.config.epochs:
                        print(f"stopped after epoch {self.epoch}; continue with --resume", flush=True)
                        return False
        finally:
            log.close()
        distributed.dump_state_for_tests(self.method)
        return True

    def _stop_requested(self) -> bool:
        """Whether to stop after the step just taken: a signal here, or (distributed) on any rank
        as agreed inside that step, so every rank stops after the same step."""
        return self._agreed_stop if self.distributed else self.interrupt.requested

    def _repair_after_kill(self, log: RunLog) -> None:
        """Bring the run folder in line with the state just loaded (a no-op for a fresh run):
        delete temporaries of killed writes, make metrics.jsonl end at this state's epoch, and
        rewrite best.pt when the kill came between an epoch's last.pt and its best.pt."""
        remove_stale_temporaries(self.checkpoint_dir, _CHECKPOINT_FILES)
        remove_stale_temporaries(self.run_dir, _RUN_FILES)
        log.reconcile(self.epoch, self.record)
        at_epoch_end = self.epoch > 0 and self.step_in_epoch == 0 and not self.epoch_started
        if at_epoch_end and self.best_epoch == self.epoch:
            best = self.checkpoint_dir / "best.pt"
            try:
                current = load_checkpoint(best)["epoch"] == self.epoch if best.is_file() else False
            except DmlrsError:
                current = False
            if not current:
                self.save("best")

    def _finish_epoch(self, record: dict, log: RunLog) -> None:
        self.scheduler.step()
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_started = False
        self.totals = EpochTotals()
        config = self.config
        improved = False
        if self.epoch % config.eval_every == 0 or self.epoch == config.epochs:
            validation = self.evaluator.validate()
            record["val"] = validation
            score = validation[config.select_metric]
            if score > self.best_score:
                self.best_score, self.best_epoch, improved = score, self.epoch, True
            hamming = "".join(f", val {name} {100 * validation[name]:.2f}%" for name in HASHING_SELECT_METRICS
                              if name in validation)
            print(f"epoch {self.epoch}/{config.epochs}: val kNN acc {100 * validation['knn_acc']:.2f}%, "
                  f"val mAP {100 * validation['mAP']:.2f}%{hamming} (best {config.select_metric} "
                  f"{100 * self.best_score:.2f}% at epoch {self.best_epoch})", flush=True)
        self.record = record
        self.save("last")
        if improved:
            self.save("best")  # the same state as last.pt: a kill in between is repaired on resume
        log.log_epoch(self.epoch, record)

    def _train_epoch(self) -> dict:
        config, method, data = self.config, self.method, self.data
        seed = epoch_seed(config.seed, self.epoch)
        method.train()
        if not self.epoch_started:
            # The epoch starts here: re-seed and run the epoch hooks, once. A run resumed inside
            # the epoch skips both (RNG states and the hooks' effects are in the checkpoint).
            seed_everything(seed)
            method.on_epoch_start(EpochContext(
                self.epoch, lambda dataset: self.evaluator.extract(dataset, desc="refresh", seed=seed)))
            self.epoch_started = True
        world = distributed.world_size()
        shard = (distributed.rank(), world) if self.distributed else None  # this rank's slice of each batch
        batches = method.batch_sampler(data.train_labels, config.batch_size, seed)
        if batches is None:
            batches = ShuffledBatches(len(data.train), config.batch_size, torch.Generator().manual_seed(seed),
                                      min_last=2 * world)
        elif hasattr(batches, "set_epoch"):
            batches.set_epoch(self.epoch)
        total_steps = len(batches)
        if config.steps_per_epoch is not None:
            total_steps = min(total_steps, config.steps_per_epoch)
        pin = self.device.type == "cuda"
        sharded = {"shard": shard} if shard is not None else {}
        loader = train_loader(data.train, config.batch_size, seed=seed, num_workers=config.num_workers,
                              batch_sampler=batches, skip_batches=self.step_in_epoch, pin_memory=pin, **sharded)
        unlabelled = None
        if getattr(data, "unlabelled", None) is not None:
            stream = ContinuingPasses(len(data.unlabelled), config.batch_size, seed=config.seed,
                                      start_step=self.epoch * total_steps, num_steps=total_steps,
                                      min_last=2 * world)
            unlabelled = iter(train_loader(data.unlabelled, config.batch_size, seed=seed,
                                           num_workers=config.num_workers, batch_sampler=stream,
                                           skip_batches=self.step_in_epoch, pin_memory=pin,
                                           stream=UNLABELLED_STREAM, **sharded))
        totals, every = self.totals, config.save_every_steps
        self._epoch_steps = total_steps  # _step reads the sums at the last step (and every --log-every)
        images_seen = 0
        start = time.perf_counter()
        bar = tqdm(total=total_steps, initial=self.step_in_epoch, leave=False,
                   desc=f"epoch {self.epoch + 1}/{config.epochs}", disable=not config.progress)
        # the bar shows the means since the previous read: (steps, sums, images, time) of that read
        shown = (totals.steps, totals.host_sums(), images_seen, start)  # floats here: no device read
        method.set_input_checks(True)  # host-side input checks on the epoch's first step only
        try:
            for batch in loader:
                if self.step_in_epoch >= total_steps:
                    break
                flags = [batch.pop("replaced", None)]  # host (loader) tensors: no device sync
                if unlabelled is not None:
                    extra = next(unlabelled)
                    flags.append(extra.get("replaced"))
                    batch["unlabelled"] = extra["image"]
                if self.distributed:  # summed over the ranks inside the step
                    counted = [int(torch.as_tensor(f).sum()) for f in flags if f is not None]
                    self._step_replaced = sum(counted) if counted else None
                else:
                    for flag in flags:
                        totals.add_replaced(flag)
                self._step(batch)
                method.set_input_checks(False)
                images_seen += len(batch["image"]) * world  # the global batch
                self.step_in_epoch += 1
                faults.reached("step")  # test-only: a kill after a step, before its checkpoint
                if every and self.step_in_epoch % every == 0 and self.step_in_epoch < total_steps:
                    self.save("last")
                if totals.read is not None and totals.read[0] != shown[0]:
                    shown = self._show(bar, shown, totals.read, images_seen)
                bar.update()
                if self._stop_requested():
                    break
        finally:
            method.set_input_checks(True)  # a loss called outside the training loop checks its inputs
            bar.close()
        elapsed = time.perf_counter() - start
        record = {
            "train": {key: value / max(totals.steps, 1) for key, value in totals.host_sums().items()},
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_second": images_seen / max(elapsed, 1e-9),
            "skipped_nonfinite": totals.skipped,
            **method.scalars(),
        }
        if totals.replaced is not None:
            record["replaced_images"] = totals.replaced
        return record

    @staticmethod
    def _show(bar, shown: tuple, read: tuple[int, dict[str, float]], images_seen: int) -> tuple:
        """Progress bar postfix: loss parts averaged over the steps since the previous read, img/s."""
        steps, sums, images, since = shown
        now = time.perf_counter()
        counted = read[0] - steps
        means = {key: (value - sums.get(key, 0.0)) / counted for key, value in read[1].items()} if counted else {}
        rate = (images_seen - images) / max(now - since, 1e-9)
        bar.set_postfix({**{key: f"{value:.4f}" for key, value in means.items()}, "img/s": f"{rate:.1f}"})
        return read[0], read[1], images_seen, now

    def _read_due(self) -> bool:
        """Whether the step being taken brings the epoch's sums to the host (in its one sync)."""
        number = self.step_in_epoch + 1
        return number % self.config.log_every == 0 or number >= (self._epoch_steps or 0)

    def _step(self, batch: dict) -> dict[str, torch.Tensor] | None:
        """One optimizer step, with ONE device-to-host read: whether the loss, its parts and (fp32
        and bf16) every gradient are finite, plus the epoch's loss sums when a log read is due.
        The parts are added to ``self.totals`` on the device; returns them (detached device
        tensors), or None when the step was skipped (``--skip-nonfinite``)."""
        # tensors moved to the device; cached uint8 images augmented and normalised there
        batch = finish_batch(batch, self.device)
        if self.config.channels_last:
            for key in ("image", "unlabelled"):
                if key in batch:
                    batch[key] = batch[key].contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.config.amp):
            out = self._ddp(batch) if self._ddp is not None else self.method.training_step(batch)
        parts = {key: self._part(value) for key, value in out.items()}
        self.optimizer.zero_grad(set_to_none=True)
        # A non-finite loss is back-propagated too (its gradients are dropped below): checking it
        # before the backward would cost a second host sync per step.
        self.scaler.scale(out["loss"]).backward()
        gradients = not self.scaler.is_enabled()  # fp16: the scaler skips overflowing steps itself
        finite = self._all_finite(parts, gradients)
        agreed = []
        if self.distributed:
            distributed.average_batchnorm_buffers(self.method)
            finite, parts, agreed = self._agree(finite, parts)
        sums = self.totals.with_step(parts)
        probe = [finite.double().reshape(1), *agreed]
        read = self._read_due()
        if read:
            probe.extend(value.reshape(1) for value in sums.values())
        host = torch.cat(probe).tolist()  # the step's one device-to-host sync
        if self.distributed:  # [finite, stop requests, replaced images, sums...]
            self._agreed_stop = host[1] > 0
            if self._step_replaced is not None:
                self.totals.replaced = (self.totals.replaced or 0) + int(host[2])
            host = [host[0], *host[3:]]
        if not host[0]:
            self._skip_or_stop(self._nonfinite_reason(parts, gradients))  # raises past the budget
            self.totals.skipped += 1
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_optimizer_step()
        self.totals.sums = sums
        self.totals.steps += 1
        if read:
            self.totals.read = (self.totals.steps, dict(zip(sums, host[1:])))
        return parts

    def _agree(self, finite: torch.Tensor, parts: dict[str, torch.Tensor]
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[torch.Tensor]]:
        """Distributed: ONE all-reduce (no host read) of this rank's finite flag, stop request,
        ``--skip-corrupt`` count and loss parts. Returns (finite on every rank, the parts averaged
        over the ranks -- the global-batch means of per-sample losses --, [stop requests, replaced
        images] summed) as device tensors, the same on every rank."""
        world, device = distributed.world_size(), finite.device
        # torch.full writes the host values with a kernel argument: no copy that waits for the device
        local = [finite.double(), torch.full((), float(self.interrupt.requested), dtype=torch.float64, device=device),
                 torch.full((), float(self._step_replaced or 0), dtype=torch.float64, device=device)]
        values = distributed.all_reduce_sum(torch.stack(local + [value.double() for value in parts.values()]))
        averaged = {key: values[3 + i] / world for i, key in enumerate(parts)}
        return values[0] == world, averaged, [values[1:3]]

    def _part(self, value) -> torch.Tensor:
        """A loss part as a detached 0-d tensor on the device (a float from a method: float64)."""
        if torch.is_tensor(value):
            return value.detach().reshape(())
        return torch.full((), float(value), dtype=torch.float64, device=self.device)

    def _all_finite(self, parts: dict[str, torch.Tensor], gradients: bool) -> torch.Tensor:
        """One device boolean: every loss part finite and (``gradients``) every gradient finite."""
        flags = [torch.isfinite(torch.stack([value.double() for value in parts.values()])).all()]
        grads = [p.grad for _, p in self.trainable if p.grad is not None] if gradients else []
        if grads:
            # max |g| per tensor: NaN propagates, finite values cannot overflow
            flags.append(torch.isfinite(torch.stack([g.detach().abs().amax().float() for g in grads])).all())
        return torch.stack(flags).all()

    def _nonfinite_reason(self, parts: dict[str, torch.Tensor], gradients: bool) -> str:
        """What was not finite (host reads: only after the step's check failed)."""
        values = {key: float(value) for key, value in parts.items()}
        bad = [f"{key}={value}" for key, value in values.items() if not math.isfinite(value)]
        if bad:
            return f"non-finite loss ({', '.join(bad)})"
        names = self._nonfinite_gradients() if gradients else []
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        finite = ", ".join(f"{key}={value:.4g}" for key, value in values.items())
        return f"non-finite gradient of {shown or 'a parameter'} (loss parts finite: {finite})"

    def _nonfinite_gradients(self) -> list[str]:
        named = [(name, p.grad) for name, p in self.trainable if p.grad is not None]
        if not named:
            return []
        # max |g| per tensor: NaN propagates, finite values cannot overflow; one device sync
        finite = torch.isfinite(torch.stack([g.detach().abs().amax().float() for _, g in named])).cpu()
        return [name for (name, _), ok in zip(named, finite.tolist()) if not ok]

    def _skip_or_stop(self, reason: str) -> None:
        """A step with a non-finite loss or gradient: skip it (no optimizer step, no memory write)
        within the ``--skip-nonfinite`` budget, else stop with an error that keeps last.pt."""
        self.optimizer.zero_grad(set_to_none=True)
        where = f"epoch {self.epoch + 1}, step {self.step_in_epoch + 1}"
        limit = self.config.skip_nonfinite
        if self.skipped_nonfinite >= limit:
            budget = (f"; {self.skipped_nonfinite} such step(s) were skipped already (--skip-nonfinite {limit})"
                      if limit else "")
            raise DmlrsError(f"training diverged at {where}: {reason}{budget}. {self._last_good()}; lower --lr, "
                             "check the data, or resume with --skip-nonfinite N to skip up to N such steps")
        self._check_state_is_finite(f"after the skipped step at {where}")
        self.skipped_nonfinite += 1
        print(f"warning: skipped the step at {where}: {reason} ({self.skipped_nonfinite} of at most "
              f"{limit} skipped, --skip-nonfinite)", flush=True)
        return None

    def _last_good(self) -> str:
        path = self.checkpoint_dir / "last.pt"
        if not path.is_file():
            return "No checkpoint was written yet"
        if self.saved_at is None:
            return f"The last good checkpoint {path} is kept"
        return f"The last good checkpoint {path} ({self._position(*self.saved_at)}) is kept"

    @staticmethod
    def _position(epoch: int, step_in_epoch: int) -> str:
        """Where a state lies, 1-based for people: 'end of epoch 2' or 'epoch 3 after step 5'."""
        return f"end of epoch {epoch}" if step_in_epoch == 0 else f"epoch {epoch + 1} after step {step_in_epoch}"

    def _check_state_is_finite(self, when: str) -> None:
        """Refuse to go on (or to checkpoint) with NaN/inf in parameters or buffers."""
        tensors = [(name, t) for name, t in chain(self.method.named_parameters(), self.method.named_buffers())
                   if t.is_floating_point() and t.numel()]
        if not tensors:
            return
        finite = torch.isfinite(torch.stack([t.detach().abs().amax().float() for _, t in tensors])).cpu()
        bad = [name for (name, _), ok in zip(tensors, finite.tolist()) if not ok]
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise DmlrsError(f"training diverged: non-finite values in {shown} {when}. {self._last_good()} "
                             "(nothing with these values was saved); lower --lr or check the data")

    # ------------------------------------------------------------------ final report
    def load_best(self) -> int:
        """Load ``best.pt`` (falls back to ``last.pt``) into the method; returns its epoch. Under
        torchrun rank 0 reads it and hands the weights to the others (no shared disk needed)."""
        if self.distributed:
            epoch = distributed.on_main(self._load_best_here)
            distributed.broadcast_state(self.method)
            return epoch
        return self._load_best_here()

    def _load_best_here(self) -> int:
        path = self.checkpoint_dir / "best.pt"
        if not path.is_file():
            path = self.checkpoint_dir / "last.pt"
        state = load_checkpoint(path)
        if state.get("manifest_hash") != self.data.manifest_hash:
            raise DmlrsError(f"{path} belongs to a different split than the data loaded now")
        self.method.load_state_dict(state["method"])
        return int(state["epoch"])

"""The one training loop: train epoch -> validation -> checkpoint, for every method.

The method supplies ``training_step`` and hooks (see ``dmlrs/methods/base.py``); the trainer owns
the optimizer, schedule, mixed precision, seeding, checkpoints and logs. Epoch ``e`` (0-based) is
seeded from ``(seed, e)``, so resuming at an epoch boundary continues bit-for-bit.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from dmlrs.engine.checkpoint import FORMAT_VERSION, capture_rng_state, restore_rng_state, save_checkpoint
from dmlrs.engine.config import HASHING_SELECT_METRICS, TrainConfig
from dmlrs.engine.device import autocast, make_grad_scaler, resolve_device
from dmlrs.engine.evaluation import Evaluator
from dmlrs.engine.interrupt import GracefulInterrupt
from dmlrs.engine.loaders import ContinuingPasses, train_loader
from dmlrs.engine.run_log import RunLog
from dmlrs.engine.seeding import epoch_seed, seed_everything
from dmlrs.errors import DmlrsError
from dmlrs.methods.base import EpochContext, Method


class Trainer:
    def __init__(self, method: Method, data, config: TrainConfig, run_dir: str | Path,
                 *, tensorboard: bool = True):
        self.method, self.data, self.config = method, data, config
        self.run_dir = Path(run_dir)
        self.device = resolve_device(config.device)
        method.to(self.device)
        if config.channels_last:
            method.to(memory_format=torch.channels_last)
        trainable = [p for p in method.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(trainable, lr=config.lr, momentum=config.momentum,
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
        self.step_in_epoch = 0    # optimizer steps done in the epoch being trained (after an interrupt)
        self.best_score = -math.inf
        self.best_epoch = -1
        self.interrupt = GracefulInterrupt()
        #: called as ``callback(trainer)`` after each finished epoch (tests use it to interrupt).
        self.epoch_end_callbacks: list[Callable[["Trainer"], None]] = []

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def state_dict(self) -> dict:
        return {
            "format": FORMAT_VERSION,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "method": self.method.state_dict(),
            "model": self.method.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "manifest_hash": self.data.manifest_hash,
        }

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
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])

    def save(self, name: str) -> Path:
        path = self.checkpoint_dir / f"{name}.pt"
        save_checkpoint(self.state_dict(), path)
        return path

    # ------------------------------------------------------------------ training
    def fit(self) -> bool:
        """Train until ``config.epochs``; returns False when stopped by a signal (last.pt saved)."""
        log = RunLog(self.run_dir, tensorboard=self.tensorboard)
        try:
            with self.interrupt:
                while self.epoch < self.config.epochs:
                    record = self._train_epoch()
                    if self.interrupt.requested:
                        self.save("last")
                        print(f"stopped during epoch {self.epoch + 1}: state saved to "
                              f"{self.checkpoint_dir / 'last.pt'}; continue with --resume", flush=True)
                        return False
                    self._finish_epoch(record, log)
                    for callback in self.epoch_end_callbacks:
                        callback(self)
                    if self.interrupt.requested and self.epoch < self.config.epochs:
                        print(f"stopped after epoch {self.epoch}; continue with --resume", flush=True)
                        return False
        finally:
            log.close()
        return True

    def _finish_epoch(self, record: dict, log: RunLog) -> None:
        self.scheduler.step()
        self.epoch += 1
        self.step_in_epoch = 0
        config = self.config
        if self.epoch % config.eval_every == 0 or self.epoch == config.epochs:
            validation = self.evaluator.validate()
            record["val"] = validation
            score = validation[config.select_metric]
            if score > self.best_score:
                self.best_score, self.best_epoch = score, self.epoch
                self.save("best")
            hamming = "".join(f", val {name} {100 * validation[name]:.2f}%" for name in HASHING_SELECT_METRICS
                              if name in validation)
            print(f"epoch {self.epoch}/{config.epochs}: val kNN acc {100 * validation['knn_acc']:.2f}%, "
                  f"val mAP {100 * validation['mAP']:.2f}%{hamming} (best {config.select_metric} "
                  f"{100 * self.best_score:.2f}% at epoch {self.best_epoch})", flush=True)
        self.save("last")
        log.log_epoch(self.epoch, record)

    def _train_epoch(self) -> dict:
        config, method, data = self.config, self.method, self.data
        seed = epoch_seed(config.seed, self.epoch)
        seed_everything(seed)
        method.train()
        method.on_epoch_start(EpochContext(self.epoch, self._extract_train))
        sampler = method.batch_sampler(data.train_labels, config.batch_size, seed)
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        pin = self.device.type == "cuda"
        loader = train_loader(data.train, config.batch_size, seed=seed, num_workers=config.num_workers,
                              batch_sampler=sampler, skip_batches=self.step_in_epoch, pin_memory=pin)
        total_steps = len(loader) + self.step_in_epoch
        if config.steps_per_epoch is not None:
            total_steps = min(total_steps, config.steps_per_epoch)
        unlabelled = None
        if getattr(data, "unlabelled", None) is not None:
            stream = ContinuingPasses(len(data.unlabelled), config.batch_size, seed=config.seed,
                                      start_step=self.epoch * total_steps + self.step_in_epoch,
                                      num_steps=total_steps - self.step_in_epoch)
            unlabelled = iter(train_loader(data.unlabelled, config.batch_size, seed=seed + 1,
                                           num_workers=config.num_workers, batch_sampler=stream,
                                           pin_memory=pin))
        sums: dict[str, float] = {}
        steps = images_seen = 0
        start = time.perf_counter()
        bar = tqdm(total=total_steps, initial=self.step_in_epoch, leave=False,
                   desc=f"epoch {self.epoch + 1}/{config.epochs}", disable=not config.progress)
        for batch in loader:
            if self.step_in_epoch >= total_steps:
                break
            if unlabelled is not None:
                batch["unlabelled"] = next(unlabelled)["image"]
            losses = self._step(batch)
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value
            steps += 1
            images_seen += len(batch["image"])
            self.step_in_epoch += 1
            rate = images_seen / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix({**{k: f"{v:.4f}" for k, v in losses.items()}, "img/s": f"{rate:.1f}"})
            bar.update()
            if self.interrupt.requested:
                break
        bar.close()
        elapsed = time.perf_counter() - start
        return {
            "train": {key: value / max(steps, 1) for key, value in sums.items()},
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_second": images_seen / max(elapsed, 1e-9),
            **method.scalars(),
        }

    def _step(self, batch: dict) -> dict[str, float]:
        batch = {key: value.to(self.device, non_blocking=True) if torch.is_tensor(value) else value
                 for key, value in batch.items()}
        if self.config.channels_last:
            for key in ("image", "unlabelled"):
                if key in batch:
                    batch[key] = batch[key].contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.config.amp):
            out = self.method.training_step(batch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise DmlrsError(f"the training loss became {loss.item()} at epoch {self.epoch + 1}, step "
                             f"{self.step_in_epoch + 1}; lower --lr or check the data (last good state: "
                             f"{self.checkpoint_dir / 'last.pt'})")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_optimizer_step()
        return {key: float(value.detach() if torch.is_tensor(value) else value) for key, value in out.items()}

    def _extract_train(self, dataset):
        return self.evaluator.extract(dataset, desc="refresh")

    # ------------------------------------------------------------------ final report
    def load_best(self) -> int:
        """Load ``best.pt`` (falls back to ``last.pt``) into the method; returns its epoch."""
        from dmlrs.engine.checkpoint import load_checkpoint

        path = self.checkpoint_dir / "best.pt"
        if not path.is_file():
            path = self.checkpoint_dir / "last.pt"
        state = load_checkpoint(path)
        if state.get("manifest_hash") != self.data.manifest_hash:
            raise DmlrsError(f"{path} belongs to a different split than the data loaded now")
        self.method.load_state_dict(state["method"])
        return int(state["epoch"])

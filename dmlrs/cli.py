"""The shared command line of every ``train_X/main.py`` and the glue from flags to a run.

Each entry script adds its method's flags and paper defaults, then calls :func:`main`. The
original scripts' flag names (``--data``, ``--dataset``, ``-b``, ``--num_workers``, ``--epochs``,
``--lr``, ``--resume``, ``--dim``, ``--temperature``, ``--margin``, ``--model``, ``--imgEXT``,
``--lambda_``, ``--memory-momentum``, ``--train_per``, ``--noiseType``, ``--noiseRate``, ``--q``,
``--k``, ``--start_prune``) keep working with the original meaning; ``--temperature`` and
``--margin`` exist only on the scripts whose method has them.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

import torch

from dmlrs import cli_checks, config_file
from dmlrs.data import build_data, get_spec, load_manifest, save_manifest
from dmlrs.data.splits import DEFAULT_PROTOCOL, PROTOCOLS
from dmlrs.engine import distributed, run_folder
from dmlrs.engine.checkpoint import load_checkpoint
from dmlrs.engine.config import (DEFAULT_LOG_EVERY, DEFAULT_SAVE_EVERY_STEPS, SELECT_METRICS, TrainConfig,
                                 check_select_metric)
from dmlrs.engine.seeding import seed_everything, set_deterministic
from dmlrs.engine.trainer import Trainer, check_batch_split
from dmlrs.errors import DmlrsError
from dmlrs.methods.base import Method
from dmlrs.metrics import format_table
from dmlrs.models import BACKBONES, build_model

BuildMethod = Callable[[argparse.Namespace, object], Method]

PAPER_BATCH_SIZE = 256
DEMO_BATCH_SIZE = 64  # the demo's 420 training images would make one step per epoch at 256
PAPER_LR = 0.1  # the papers' rate, for fine-tuning ImageNet weights
SCRATCH_LR = 0.01  # --weights none: lr 0.1 from random init diverged on AID (CE 48 -> 60) and the demo
ORIGINAL_NUM_WORKERS = 8


def available_cores() -> int:
    """CPU cores this process may use (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_num_workers() -> int:
    """The original scripts' 8 loader workers, at most one per available core."""
    return max(1, min(ORIGINAL_NUM_WORKERS, available_cores()))


# argparse types: finite numbers in each flag's range (nan and inf refused); see dmlrs/cli_checks.py
positive_int = cli_checks.positive_int
non_negative_int = cli_checks.non_negative_int
seed_value = cli_checks.seed_value
positive_float = cli_checks.positive_float
non_negative_float = cli_checks.non_negative_float
fraction = cli_checks.fraction
fraction_below_one = cli_checks.fraction_below_one
open_fraction = cli_checks.open_fraction
decay_factor = cli_checks.decay_factor
interval = cli_checks.interval


def base_parser(paper_batch_size: int = PAPER_BATCH_SIZE, paper_lr: float = PAPER_LR) -> argparse.ArgumentParser:
    """Flags shared by every method (a parent parser, DINO style)."""
    parser = argparse.ArgumentParser(add_help=False)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="demo",
                      help="demo (built-in synthetic scenes), UCMD, AID, NWPU-RESISC45, PatternNet (or an "
                           "alias such as ucmerced, NWPU45) or a path to any class-per-folder directory")
    data.add_argument("--data", default=None, metavar="DIR",
                      help="folder that holds the dataset (or is the dataset folder)")
    data.add_argument("--split-file", default=None, metavar="SPLIT_JSON",
                      help="reuse the split of an earlier run (its split.json)")
    data.add_argument("--split-protocol", default=DEFAULT_PROTOCOL, choices=PROTOCOLS,
                      help="original: the authors' per-class split (sorted files, random.seed(SEED) shuffle, "
                           "int(0.7n)/int(0.8n) cuts) and noise draws, file for file; stratified: dmlrs's "
                           "extension-independent split with rounded counts")
    data.add_argument("--seed", type=seed_value, default=42,
                      help="seed of the split, the noise and training (42 = the original's split and noise)")
    data.add_argument("--img-size", type=positive_int, default=None,
                      help="images are resized to SIZE x SIZE (default 256, 64 for demo)")
    data.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images instead of stopping")
    data.add_argument("--input-pipeline", default="cached", choices=("cached", "pil"),
                      help="cached: every image resized once into a memory-mapped uint8 cache ($DMLRS_CACHE, else "
                           "~/.cache/dmlrs; AID at 256 px: 2 GB), augmented in batches on the training device with "
                           "the same parameters and PIL's semantics (bit-identical results); pil: the original "
                           "per-image decode + resize + PIL augmentation in the loader processes (no cache)")
    data.add_argument("--imgEXT", default=None, help=argparse.SUPPRESS)  # old flag: extensions are detected
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="resnet18", type=str.lower, choices=sorted(BACKBONES),
                       help="backbone (case-insensitive: the original's ResNet18/ResNet50 work)")
    model.add_argument("--weights", default=None, metavar="imagenet|none|PATH",
                       help="backbone initialisation (default: imagenet, none for --dataset demo)")
    model.add_argument("--dim", type=positive_int, default=128, help="embedding size (code bits for CDNE)")
    optim = parser.add_argument_group("optimisation (defaults: the original code's)")
    optim.add_argument("-b", "--batch-size", "--batch_size", dest="batch_size", type=positive_int, default=None,
                       help=f"images per batch (default: {paper_batch_size}, the original's; {DEMO_BATCH_SIZE} "
                            "for --dataset demo); under torchrun the GLOBAL batch, split evenly over the "
                            "processes (a multiple of their number, >= 2 images each)")
    optim.add_argument("--epochs", type=positive_int, default=130)
    optim.add_argument("--lr", type=positive_float, default=None,
                       help=f"learning rate (default: {paper_lr} for ImageNet weights; "
                            f"{min(SCRATCH_LR, paper_lr)} with --weights none)")
    optim.add_argument("--momentum", type=fraction_below_one, default=0.9, help="SGD momentum, in [0, 1)")
    optim.add_argument("--weight-decay", "--wd", dest="weight_decay", type=non_negative_float, default=1e-4)
    optim.add_argument("--lr-step", type=positive_int, default=30, help="StepLR step size (epochs)")
    optim.add_argument("--lr-gamma", type=decay_factor, default=0.5, help="StepLR factor, in (0, 1]")
    optim.add_argument("--no-nesterov", dest="nesterov", action="store_false")
    run = parser.add_argument_group("run")
    run.add_argument("--config", default=None, metavar="FILE",
                     help="YAML or JSON file of flags without leading dashes (its 'args:' mapping if it has "
                          "one, e.g. configs/<paper>/<row>.yaml); flags on the command line override it")
    run.add_argument("--out", default="runs", help="runs go to OUT/<method>/<dataset>/<timestamp>/")
    run.add_argument("--resume", default=None, metavar="CKPT|auto",
                     help="continue from a checkpoint, or 'auto': the latest run with the same settings")
    run.add_argument("--evaluate", default=None, metavar="CKPT", help="only write the test report of CKPT")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--amp", action="store_true", help="mixed precision (bf16/fp16 autocast; losses in fp32)")
    run.add_argument("--channels-last", action="store_true")
    run.add_argument("--deterministic", action="store_true", help="deterministic algorithms only")
    run.add_argument("-j", "--num_workers", "--num-workers", dest="num_workers", type=cli_checks.non_negative_int,
                     default=default_num_workers(),
                     help=f"data loader processes (default: the original's {ORIGINAL_NUM_WORKERS}, at most "
                          "the number of available cores)")
    run.add_argument("--eval-every", type=positive_int, default=1, help="validate every N epochs")
    run.add_argument("--select-metric", default="knn_acc", choices=SELECT_METRICS,
                     help="validation metric that picks best.pt (the originals: kNN accuracy; CDNE: Hamming "
                          "precision@20)")
    run.add_argument("--steps-per-epoch", type=positive_int, default=None,
                     help="cap the optimizer steps per epoch (quick checks)")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    run.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    run.add_argument("--sync-bn", action="store_true",
                     help="under torchrun: batch norm over the global batch (SyncBatchNorm on GPUs) instead of each "
                          "process's slice; no effect in a single process")
    run.add_argument("--no-pictures", dest="pictures", action="store_false",
                     help="do not draw <run>/pictures/ (retrieval gallery, t-SNE map, AP bars, precision-recall) "
                          "after the test report (by default they are drawn, also into TensorBoard)")
    run.add_argument("--save-every-steps", type=non_negative_int, default=DEFAULT_SAVE_EVERY_STEPS, metavar="N",
                     help="also write checkpoints/last.pt every N optimizer steps inside an epoch, so a kill "
                          "loses at most N steps; 0: only at epoch ends, which always save. The default, "
                          f"{DEFAULT_SAVE_EVERY_STEPS}, costs <= 1.3%% of step time (H200: a 94 MB ResNet18 "
                          "checkpoint takes 0.17 s, a batch-256 step 66 ms); on a CPU (steps of seconds) "
                          "N = 1 already costs < 2%%")
    run.add_argument("--log-every", type=positive_int, default=DEFAULT_LOG_EVERY, metavar="N",
                     help="refresh the progress bar's loss means and img/s every N optimizer steps (read inside "
                          "the step's one device sync: no extra cost)")
    run.add_argument("--skip-nonfinite", type=non_negative_int, default=0, metavar="N",
                     help="skip up to N optimizer steps whose loss or gradient is not finite (counted as "
                          "skipped_nonfinite in metrics.jsonl); one more stops the run. The default, 0, stops "
                          "at the first, keeping the last good checkpoint")
    return parser


def add_temperature_argument(group, default: float, help: str) -> None:
    group.add_argument("--temperature", type=positive_float, default=default, help=help)


def add_margin_argument(group, default: float, help: str) -> None:
    group.add_argument("--margin", type=non_negative_float, default=default, help=help)


def add_memory_momentum_argument(group) -> None:
    """Flag of the momentum-averaged memory (MB variants)."""
    group.add_argument("--memory-momentum", "--m-mementum", dest="memory_momentum", type=fraction_below_one,
                       default=0.5, help="MB: initial memory momentum mu in [0, 1) (raised to 0.8 at epoch 80 and "
                                         "0.9 at epoch 120, 0-based, as the original)")


def add_ema_arguments(group) -> None:
    """Flags of the momentum (EMA) encoder that fills the memory (MU variants)."""
    from dmlrs.memory import EMA_BN_MODES

    group.add_argument("--ema", type=fraction_below_one, default=0.999,
                       help="MU: decay of the momentum (EMA) encoder that fills the memory")
    group.add_argument("--ema-bn", default="train", choices=EMA_BN_MODES,
                       help="MU: batch norm of the EMA encoder: train = statistics of the key batch (the "
                            "original), eval = running statistics copied from the model")


def add_snca_arguments(group) -> None:
    """Temperature, margin and lambda of the SNCA term (SNCA-CE MB/MU, CDNE)."""
    add_temperature_argument(group, 0.05, "SNCA temperature T")
    add_margin_argument(group, 0.0, "SNCA margin in cosine units (the original's --margin)")
    group.add_argument("--lambda_", "--lambda", dest="lambda_", type=non_negative_float, default=1.0,
                       help="weight of the SNCA term, as the original: lambda * SNCA + CE (0 = the plain "
                            "softmax/cross-entropy baseline)")


def add_ce_weight_argument(group, *, alone: str | None = None) -> None:
    """Weight of the cross-entropy term (SNCA-CE MB/MU, CDNE; the originals: 1, no flag)."""
    group.add_argument("--ce-weight", type=non_negative_float, default=1.0,
                       help="weight of the cross-entropy term (the original: 1, no flag)"
                            + (f"; 0: {alone}" if alone else ""))


def check_snca_ce_weights(args: argparse.Namespace) -> None:
    """SNCA-CE: ``--lambda_ 0 --ce-weight 0`` would leave nothing to train."""
    if args.lambda_ == 0 and args.ce_weight == 0:
        raise DmlrsError("--lambda_ 0 and --ce-weight 0 leave no loss to train: --lambda_ 0 is the softmax baseline, "
                         "--ce-weight 0 is SNCA alone; give one of them a weight > 0")


def make_parser(description: str | None, add_arguments: Callable[[argparse.ArgumentParser], None] | None,
                defaults: dict | None = None, *, paper_batch_size: int = PAPER_BATCH_SIZE,
                paper_lr: float = PAPER_LR) -> argparse.ArgumentParser:
    parser = cli_checks.ArgumentParser(description=description, parents=[base_parser(paper_batch_size, paper_lr)],
                                     formatter_class=HelpFormatter)
    if add_arguments is not None:
        add_arguments(parser.add_argument_group(
            "method (defaults: the paper's, as its authors' code runs it; docs/fidelity.md lists every departure)"))
    if defaults:
        parser.set_defaults(**defaults)
    return parser


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the script docstring's layout and shows every flag's default (once: a help text
    that already explains its default is left as it is)."""

    def _get_help_string(self, action):
        if "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def resolve_dataset_defaults(args: argparse.Namespace, paper_batch_size: int = PAPER_BATCH_SIZE,
                             paper_lr: float = PAPER_LR) -> list[str]:
    """Fill the flags whose default depends on the run (recorded resolved in config.json); returns
    notes to print. The demo data trains from scratch (no ImageNet weights offline) on smaller
    batches; training from scratch (``--weights none``) lowers the default lr to 0.01."""
    notes = []
    demo = str(args.dataset).lower() == "demo"
    if args.weights is None:
        args.weights = "none" if demo else "imagenet"
    if args.batch_size is None:
        args.batch_size = DEMO_BATCH_SIZE if demo else paper_batch_size
    if args.lr is None:
        args.lr = paper_lr
        if args.weights == "none" and SCRATCH_LR < paper_lr:
            args.lr = SCRATCH_LR
            notes.append(f"note: random initialisation (--weights none): default learning rate lowered to {SCRATCH_LR} (the papers' "
                         f"{paper_lr} fine-tunes ImageNet weights and diverged from random init on AID); "
                         "pass --lr to choose")
    return notes


def model_from_args(args: argparse.Namespace, *, num_classes: int | None = None, head: str = "embedding",
                    standardize: bool = False):
    return build_model(args.model, args.dim, weights=args.weights, num_classes=num_classes,
                       head=head, channels_last=args.channels_last, standardize=standardize)


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                       nesterov=args.nesterov, weight_decay=args.weight_decay, lr_step=args.lr_step,
                       lr_gamma=args.lr_gamma, device=args.device, amp=args.amp,
                       channels_last=args.channels_last, seed=args.seed, deterministic=args.deterministic,
                       num_workers=args.num_workers, eval_every=args.eval_every,
                       select_metric=args.select_metric, steps_per_epoch=args.steps_per_epoch,
                       progress=args.progress and distributed.is_main(),  # bars on rank 0 only
                       save_every_steps=args.save_every_steps, log_every=args.log_every,
                       skip_nonfinite=args.skip_nonfinite, sync_bn=getattr(args, "sync_bn", False))


def dataset_label(dataset: str) -> str:
    """Folder name of the dataset inside the run tree (canonical name for known datasets)."""
    spec = get_spec(dataset)
    if spec is not None:
        return spec.name
    return "demo" if dataset.lower() == "demo" else Path(dataset).name


def main(method_name: str, description: str | None, add_arguments, build_method: BuildMethod,
         defaults: dict | None = None, argv: list[str] | None = None, *,
         paper_batch_size: int = PAPER_BATCH_SIZE, paper_lr: float = PAPER_LR,
         check_args: Callable[[argparse.Namespace, set], None] | None = None) -> int:
    """Parse flags, check them and run. Bad input (a flag, a run file, the data) ends as one
    ``error:`` line on stderr and exit status 2, before any work wherever it can be seen before
    (``dmlrs/cli_checks.py``). ``check_args(args, given)`` is the script's own check of its flags
    (``given``: the destinations set on the command line); it runs before the dataset is scanned."""
    parser = make_parser(description, add_arguments, defaults, paper_batch_size=paper_batch_size,
                         paper_lr=paper_lr)
    try:  # --config FILE: its flags go in front of the command line's, which override them
        argv = config_file.expand_argv(parser, sys.argv[1:] if argv is None else list(argv),
                                       script=cli_checks.script_of(method_name))
    except DmlrsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    flag_defaults = vars(parser.parse_args([]))  # --resume auto: flags newer than a run take these
    args = parser.parse_args(argv)  # a bad flag value: one "error: argument --flag: ..." line, exit 2
    try:
        given = cli_checks.explicit_dests(parser, argv)
        saved = cli_checks.saved_run_settings(parser, args, method_name, given)
        if saved:  # --evaluate/--resume CKPT: the run's own settings, overridden by flags given now
            parser.set_defaults(**saved)
            args = parser.parse_args(argv)
        cli_checks.check_arguments(args)
        if check_args is not None:
            check_args(args, given)
        return run(method_name, args, build_method, paper_batch_size=paper_batch_size, paper_lr=paper_lr,
                   flag_defaults=flag_defaults)
    except DmlrsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(method_name: str, args: argparse.Namespace, build_method: BuildMethod, *,
        paper_batch_size: int = PAPER_BATCH_SIZE, paper_lr: float = PAPER_LR,
        flag_defaults: dict | None = None) -> int:
    """Train (or ``--evaluate``) and write the run folder. Under torchrun every process runs this:
    rank 0 picks and creates the run folder and writes every file, the others get the folder from
    it and take part in training and evaluation (``dmlrs/engine/distributed.py``)."""
    distributed.setup(args.device)  # joins torchrun's process group; nothing without torchrun
    try:
        status = _run(method_name, args, build_method, paper_batch_size=paper_batch_size, paper_lr=paper_lr,
                      flag_defaults=flag_defaults)
    except BaseException:
        distributed.shutdown(clean=False)  # this rank leaves at once; torchrun stops the others
        raise
    distributed.shutdown()
    return status


def _run(method_name: str, args: argparse.Namespace, build_method: BuildMethod, *,
         paper_batch_size: int, paper_lr: float, flag_defaults: dict | None = None) -> int:
    for note in resolve_dataset_defaults(args, paper_batch_size, paper_lr):
        print(note, flush=True)
    settings = _fingerprint_settings({**vars(args), "method": method_name})
    label = dataset_label(args.dataset)
    # rank 0 decides (--resume auto looks at the run folders); every rank follows its choice
    run_dir, checkpoint = distributed.on_main(lambda: _resume_target(args, method_name, label, settings,
                                                                         flag_defaults))

    def run_files():
        split_file = args.split_file
        # --resume auto may give a run folder without a checkpoint yet
        run_home = checkpoint.parent.parent if checkpoint is not None else run_dir
        if split_file is None and run_home is not None and (run_home / "split.json").is_file():
            split_file = run_home / "split.json"
            load_manifest(split_file)  # the run's split.json is damaged: one error before the data scan
        if checkpoint is not None and not distributed.is_main() and not checkpoint.is_file():
            raise DmlrsError(f"{checkpoint} (chosen by rank 0) is not visible to process {distributed.rank()}: to "
                             "resume on several nodes, --out must be a filesystem every node shares")
        state = load_checkpoint(checkpoint) if checkpoint is not None else None  # damaged: one error, before the scan
        return split_file, state

    split_file, state = distributed.everywhere(run_files)
    data = distributed.main_first(lambda: build_data(  # rank 0 of each node first: it fills the image cache
        args.dataset, args.data, img_size=args.img_size, split_file=split_file, seed=args.seed,
        train_per=getattr(args, "train_per", None), transductive=getattr(args, "transductive", False),
        noise_type=getattr(args, "noiseType", None), noise_rate=getattr(args, "noiseRate", 0.0),
        skip_corrupt=args.skip_corrupt, split_protocol=args.split_protocol,
        input_pipeline=getattr(args, "input_pipeline", "cached"),
        cache_progress=None if args.progress and distributed.is_main() else False))
    print(data.summary(), flush=True)
    seed_everything(args.seed)
    set_deterministic(args.deterministic)
    method = build_method(args, data)
    check_select_metric(args.select_metric, method.hashing, method_name)
    if state is not None:  # checked before anything is created or loaded: a mismatch is one error
        cli_checks.check_checkpoint_fits(state, method, checkpoint, resume=not args.evaluate, args=args)
        _checked(state, data, checkpoint)
    if not args.evaluate:  # torchrun: the global batch splits evenly (checked before anything is created)
        check_batch_split(method, data, args.batch_size, args.seed)
    if run_dir is None:  # one folder, made by rank 0 (its timestamp) and handed to the others
        run_dir = distributed.on_main(lambda: run_folder.create_run_dir(args.out, method_name, label))
    config_path = run_dir / "config.json"
    if distributed.is_main() and not config_path.is_file():
        run_folder.write_json(config_path, {"method": method_name, "args": vars(args),
                                            "fingerprint": run_folder.fingerprint(settings),
                                            "environment": run_folder.environment_info(),
                                            "processes": distributed.world_size()})
        save_manifest(data.manifest, run_dir / "split.json")
    trainer = Trainer(method, data, train_config(args), run_dir, tensorboard=args.tensorboard)
    print(f"run folder: {run_dir}", flush=True)
    if args.evaluate:
        trainer.method.load_state_dict(state["method"])
        return _report(trainer, run_dir, source=str(checkpoint), pictures=args.pictures)
    if state is not None:
        trainer.load_state_dict(state, source=str(checkpoint))
        print(f"resumed from {checkpoint} after epoch {trainer.epoch}", flush=True)
    if not trainer.fit():
        return 130
    trainer.load_best()
    return _report(trainer, run_dir, source=f"best.pt (epoch {trainer.best_epoch})", pictures=args.pictures)


def _report(trainer: Trainer, run_dir: Path, *, source: str, pictures: bool) -> int:
    """The test report: written and printed by rank 0; under torchrun the other ranks take part
    in its embedding passes (collective) and write nothing."""
    if distributed.is_main():
        return _write_report(trainer, run_dir, source=source, pictures=pictures)
    trainer.evaluator.test_report()
    return 0


def _fingerprint_settings(settings: dict) -> dict:
    """The settings a run is recognised by (``--resume auto``): a dataset given as a path counts by
    its folder name, so a moved dataset still resumes (the split's hash guards the content; the
    path itself, like ``--data``, is in ``run_folder.RUNTIME_ONLY``)."""
    return {**settings, "dataset": dataset_label(str(settings.get("dataset")))}


def _resume_target(args, method_name: str, label: str, settings: dict,
                   flag_defaults: dict | None = None) -> tuple[Path | None, Path | None]:
    """``(run folder to continue or None, checkpoint to load or None)``. ``flag_defaults``: the
    parser's defaults, for flags that did not exist when an earlier run was made."""
    if args.evaluate:
        checkpoint = Path(args.evaluate)
        if not checkpoint.is_file():
            raise DmlrsError(f"--evaluate: checkpoint not found: {checkpoint}")
        return None, checkpoint
    if args.resume == "auto":
        run_dir = run_folder.find_resumable_run(args.out, method_name, label, settings,
                                                normalize=_fingerprint_settings, defaults=flag_defaults)
        if run_dir is None:
            print("--resume auto: no earlier run with these settings, starting a new one", flush=True)
            return None, None
        checkpoint = run_dir / "checkpoints" / "last.pt"
        if not checkpoint.is_file():  # stopped before its first checkpoint: start it again, in place
            print(f"--resume auto: {run_dir} has no checkpoint yet, starting it from the beginning", flush=True)
            return run_dir, None
        return run_dir, checkpoint
    if args.resume:
        checkpoint = Path(args.resume)
        if not checkpoint.is_file():
            raise DmlrsError(f"--resume: checkpoint not found: {checkpoint}")
        run_dir = checkpoint.resolve().parent.parent
        return (run_dir if (run_dir / "config.json").is_file() else None), checkpoint
    return None, None


def _checked(state: dict, data, checkpoint: Path) -> dict:
    if state.get("manifest_hash") != data.manifest_hash:
        raise DmlrsError(f"{checkpoint} was trained on another split; pass the run's split.json with --split-file")
    return state


def _write_report(trainer: Trainer, run_dir: Path, *, source: str, pictures: bool = True) -> int:
    """Write and print the test report, then (``pictures``) draw ``<run>/pictures/``: a picture
    that fails is one warning line, never an error (the report is already saved)."""
    report = trainer.evaluator.test_report()
    run_folder.write_json(run_dir / "test_metrics.json", report)
    print(f"\nTest split report ({source}):")
    print(format_report(report))
    print(f"saved to {run_dir / 'test_metrics.json'}")
    if pictures:
        from dmlrs.visualize.run_pictures import pictures_after_report  # matplotlib/sklearn: loaded only here

        pictures_after_report(trainer, run_dir, report)
    return 0


def format_report(report: dict) -> str:
    """The test report as tables in percent (papers' style), one per metric group."""
    scalars = {k: v for k, v in report.items() if not isinstance(v, dict)}
    blocks = [format_table(scalars, title="classification")]
    titles = {"retrieval": "retrieval: test queries vs train gallery",
              "retrieval_leave_one_out": "retrieval: leave-one-out within test",
              "hamming": "Hamming retrieval (sign codes): test vs train",
              "AP_per_class": "AP per class (test vs train)"}
    for key, title in titles.items():
        if key in report:
            blocks.append(format_table(report[key], title=title))
    return "\n\n".join(blocks)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit("run one of the train_*/main.py scripts")

"""Checks of the command line and of run files, done before any work.

Every check here ends bad input with one :class:`DmlrsError` (printed by ``cli.main`` as one
``error: ...`` line, exit status 2) that names the flag or file and says what to do. They run
before the dataset is scanned and before a run folder is created, so a refused command leaves
nothing behind and overwrites nothing:

* argparse types (:func:`interval` and the named instances) refuse values outside a flag's
  range, ``nan`` and ``inf`` included; :class:`ArgumentParser` prints argparse's own errors as
  one ``error: argument --flag: ...`` line (no usage block);
* :func:`saved_run_settings` reads the ``config.json`` next to a ``--resume``/``--evaluate``
  checkpoint: invalid JSON, a file that is not a dmlrs run config, a run of another method, and
  every saved value are checked with the same argparse types as the flags;
* :func:`check_arguments`: cross-flag and environment checks (device, image size for the
  backbone, Nesterov without momentum, a batch of one under batch norm, the files named by
  ``--weights``, ``--split-file`` and ``--out``);
* :func:`check_checkpoint_fits`: a loaded checkpoint against the freshly built method (keys and
  tensor shapes) before anything is loaded into it, so a checkpoint of another backbone,
  ``--dim`` or class count is one message instead of ``load_state_dict``'s traceback.

Per-method checks (e.g. SRL's images per class) live in each ``train_X/main.py``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Callable, Iterable

import torch

from dmlrs.errors import DmlrsError

#: numpy's legacy seeding (``RandomState``, used by the original split and noise) takes [0, 2**32 - 1]
SEED_MAX = 2**32 - 1
#: the smallest ``--img-size`` each backbone trains at. Measured on CPU (train mode, batch of 2,
#: forward + backward, sizes 1..39): ResNet18/50 train at every size from 1 px (their stride-2
#: convolutions and max pool are padded, so the final map is never empty), so their minimum is
#: the 8 px the data transforms accept (dmlrs/data/transforms.py); VGG16's five unpadded 2x2 max
#: pools need 32 px (31 px leaves a 0x0 map).
MIN_IMAGE_SIZE = {"resnet18": 8, "resnet50": 8, "vgg16": 32}
#: ResNets: largest size whose final feature map is 1x1 (ceil(size / 32) = 1); a batch of ONE such
#: image cannot train (batch norm needs more than one value per channel). VGG16 has no batch norm.
ONE_BY_ONE_UP_TO = {"resnet18": 32, "resnet50": 32}
#: settings of a run's config.json that --evaluate/--resume do NOT take over: where the new output
#: goes, and the device (a run trained with --device cuda is evaluated on a CPU-only machine with
#: the default --device auto instead of failing)
_NOT_INHERITED = ("resume", "evaluate", "out", "device")


# --------------------------------------------------------------------------- argparse types
def _bound(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def interval(low: float | None = None, high: float | None = None, *, low_open: bool = False,
             high_open: bool = False, integer: bool = False, why: str = "") -> Callable[[str], float]:
    """An argparse ``type`` accepting finite numbers in the given interval (``None``: unbounded).

    ``nan`` and ``inf`` are refused whatever the bounds; ``why`` is appended to the message."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    if low is not None and high is not None:
        wanted = f"{'an integer' if integer else 'a number'} in {left}{_bound(low)}, {_bound(high)}{right}"
    elif low is not None:
        wanted = f"{'an integer' if integer else 'a finite number'} {'>' if low_open else '>='} {_bound(low)}"
    else:
        wanted = "an integer" if integer else "a finite number"

    def convert(text: str):
        try:
            value = int(text) if integer else float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {wanted}{why}, got {text!r}") from None
        ok = math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {wanted}{why}, got {text}")
        return value

    convert.__name__ = "integer" if integer else "number"
    return convert


positive_int = interval(1, integer=True)
non_negative_int = interval(0, integer=True)
seed_value = interval(0, SEED_MAX, integer=True, why=" (numpy's seed range)")
positive_float = interval(0.0, low_open=True)
non_negative_float = interval(0.0)
fraction = interval(0.0, 1.0)
#: [0, 1): momentum and decay factors (1 would freeze the memory / EMA encoder), noise rates
fraction_below_one = interval(0.0, 1.0, high_open=True)
#: (0, 1): labelled fractions, t-RNSL's k
open_fraction = interval(0.0, 1.0, low_open=True, high_open=True)
#: (0, 1]: StepLR's factor (1 keeps the rate), t-RNSL's q
decay_factor = interval(0.0, 1.0, low_open=True)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``error: argument --flag: ...``, exit status 2 (the
    usage block of these scripts is 30 lines that would bury the message; ``--help`` shows it)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (--help lists the flags and their ranges)\n")


def flag_name(action: argparse.Action) -> str:
    """The flag users know an action by: its first ``--long`` spelling (``-b`` -> ``--batch-size``)."""
    return next((s for s in action.option_strings if s.startswith("--")),
                action.option_strings[0] if action.option_strings else action.dest)


def explicit_dests(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The destinations of the flags given on the command line (not their defaults)."""
    unset = object()
    namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != argparse.SUPPRESS})
    parser.parse_args(argv, namespace=namespace)
    return {dest for dest, value in vars(namespace).items() if value is not unset}


# --------------------------------------------------------------------------- run files
def script_of(method: str) -> str:
    return f"train_{method}/main.py"


def read_run_config(path: Path) -> dict:
    """The ``config.json`` of a run folder, checked to be a dmlrs run config."""
    advice = ("restore it, or delete it and give the run's flags (--model, --dim, ...) on the command line; "
              "nothing was changed")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DmlrsError(f"the run settings {path} are not valid JSON ({exc}); {advice}") from None
    except OSError as exc:
        raise DmlrsError(f"cannot read the run settings {path} ({exc.strerror or exc}); {advice}") from None
    if not isinstance(config, dict) or not isinstance(config.get("args"), dict):
        raise DmlrsError(f"{path} is not a dmlrs run config (a JSON object with an \"args\" object); {advice}")
    return config


def saved_run_settings(parser: argparse.ArgumentParser, args: argparse.Namespace, method: str,
                       given: Iterable[str] = ()) -> dict:
    """The settings recorded in the ``config.json`` of the ``--evaluate``/``--resume`` checkpoint's
    run folder (``{}`` when there is none), checked flag by flag; flags in ``given`` (set on the
    command line) win, so their saved values are not checked."""
    checkpoint = args.evaluate or (args.resume if args.resume not in (None, "auto") else None)
    if checkpoint is None:
        return {}
    config_path = Path(checkpoint).resolve().parent.parent / "config.json"
    if not config_path.is_file():
        return {}
    config = read_run_config(config_path)
    saved_method = config.get("method")
    if saved_method is not None and saved_method != method:
        option = "--evaluate" if args.evaluate else "--resume"
        raise DmlrsError(f"{option} {checkpoint}: its run ({config_path}) is a {saved_method} run, and this is "
                         f"{script_of(method)} ({method}); use python {script_of(saved_method)} {option} {checkpoint}")
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    given = set(given)
    settings = {}
    for key, value in config["args"].items():
        if key in _NOT_INHERITED or key not in actions:
            continue  # runtime choices, and settings this version no longer has
        settings[key] = value if key in given else _saved_value(actions[key], value, config_path)
    return settings


def _saved_value(action: argparse.Action, value, config_path: Path):
    flag = flag_name(action)

    def bad(reason: str):
        return DmlrsError(f"{config_path}: \"{action.dest}\" = {json.dumps(value)} is not a valid {flag} "
                          f"({reason}); correct that entry or give {flag} on the command line")

    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise bad("must be true or false")
        return value
    if value is None:
        if action.default is not None:
            raise bad("must not be null")
        return value
    if action.type is not None and action.type is not str:
        if isinstance(value, (bool, list, dict)):
            raise bad("wrong kind of value")
        try:
            value = action.type(str(value))
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise bad(str(exc)) from None
    elif not isinstance(value, str):
        raise bad("must be a string")
    if action.choices is not None and value not in action.choices:
        raise bad(f"choose one of {', '.join(map(str, action.choices))}")
    return value


# --------------------------------------------------------------------------- arguments
def effective_image_size(args: argparse.Namespace) -> int:
    from dmlrs.data.build import DEMO_NAME, PAPER_IMAGE_SIZE
    from dmlrs.data.demo import DEMO_SIZE

    if args.img_size is not None:
        return int(args.img_size)
    return DEMO_SIZE if str(args.dataset).lower() == DEMO_NAME else PAPER_IMAGE_SIZE


def check_arguments(args: argparse.Namespace) -> None:
    """Checks that involve several flags, the machine or files; raise one DmlrsError."""
    from dmlrs.engine.device import resolve_device

    if args.resume and args.evaluate:
        raise DmlrsError("--resume and --evaluate exclude each other: --evaluate CKPT writes the test report "
                         "of CKPT, --resume continues training; pass one of them")
    resolve_device(args.device)  # unknown device, or CUDA asked for where there is none
    if args.momentum == 0 and args.nesterov:
        raise DmlrsError("--momentum 0 with Nesterov momentum (the default) is not possible; pass --no-nesterov "
                         "for plain SGD, or a momentum > 0 (the papers: 0.9)")
    size = effective_image_size(args)
    minimum = MIN_IMAGE_SIZE.get(args.model, 8)
    if size < minimum:
        flag = "--img-size" if args.img_size is not None else "the default image size (--img-size)"
        reason = ("its five 2x2 max pools leave no feature map below 32 px" if args.model == "vgg16"
                  else "the data transforms need at least 8 px")
        raise DmlrsError(f"{flag} {size} is too small for --model {args.model}: {reason}; use --img-size "
                         f"{minimum} or more (the papers: 256)")
    trains_on_batch_size = not hasattr(args, "images_per_class")  # SRL's batches are C x K
    if (trains_on_batch_size and args.batch_size == 1 and args.model in ONE_BY_ONE_UP_TO
            and size <= ONE_BY_ONE_UP_TO[args.model]):
        raise DmlrsError(f"-b 1 with --img-size {size} and --model {args.model}: the final feature map is 1x1 and "
                         "batch norm cannot train on one value per channel; use -b 2 or more, or --img-size "
                         f"{ONE_BY_ONE_UP_TO[args.model] + 1} or more")
    weights = args.weights
    if weights not in (None, "none", "imagenet") and not Path(weights).expanduser().is_file():
        raise DmlrsError(f"--weights {weights}: file not found; pass a torchvision state dict or a dmlrs "
                         "checkpoint, imagenet (torchvision's ImageNet weights) or none (random init)")
    if args.split_file is not None:
        from dmlrs.data import load_manifest

        load_manifest(args.split_file)  # missing, invalid JSON or not a split: one error naming the file
    _check_out_folder(Path(args.out))


def _check_out_folder(out: Path) -> None:
    existing = out
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise DmlrsError(f"--out {out}: {existing} is a file, not a folder; pass a folder for the run folders")
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise DmlrsError(f"--out {out}: cannot create folders in {existing} (permission denied); pass a "
                         "writable folder")


# --------------------------------------------------------------------------- checkpoints
#: entries --resume needs besides "method" and "epoch" (checked by load_checkpoint)
RESUME_KEYS = ("optimizer", "scheduler", "scaler", "rng", "step_in_epoch", "best_score", "best_epoch")
_MAX_SHOWN = 3


def check_checkpoint_fits(state: dict, method: torch.nn.Module, path: Path, *, resume: bool,
                          args: argparse.Namespace | None = None, num_classes: int | None = None) -> None:
    """Refuse a checkpoint whose method state would not load into ``method`` (missing or extra
    keys, other tensor shapes), naming the file and, where it can tell, the flag that differs."""
    if resume:
        missing = [key for key in RESUME_KEYS if key not in state]
        if missing:
            raise DmlrsError(f"{path} lacks {', '.join(missing)}: it holds weights but not a training state that "
                             "can be resumed; evaluate it with --evaluate, or start from it with --weights")
    saved = state["method"]
    if not isinstance(saved, dict) or not all(torch.is_tensor(v) for v in saved.values()):
        raise DmlrsError(f"{path}: its 'method' entry is not a state dict of tensors; the file is damaged or "
                         "not a dmlrs checkpoint")
    wanted = method.state_dict()
    shape = {k: tuple(v.shape) for k, v in saved.items()}
    here = {k: tuple(v.shape) for k, v in wanted.items()}
    if shape == here:
        return
    causes = _mismatch_causes(shape, here, args, num_classes)
    only_file = sorted(set(shape) - set(here))
    only_here = sorted(set(here) - set(shape))
    differ = [k for k in here if k in shape and shape[k] != here[k]]
    details = []
    if differ:
        details.append("shapes differ: " + ", ".join(f"{k} {list(shape[k])} in the file, {list(here[k])} here"
                                                    for k in differ[:_MAX_SHOWN]))
    if only_file:
        details.append(f"{len(only_file)} entries only in the file (e.g. {', '.join(only_file[:_MAX_SHOWN])})")
    if only_here:
        details.append(f"{len(only_here)} entries missing from the file (e.g. {', '.join(only_here[:_MAX_SHOWN])})")
    cause = "; ".join(causes) if causes else "; ".join(details)
    raise DmlrsError(f"{path} does not fit the model this run builds: {cause}. Run with the checkpoint's own "
                     "settings (its run folder's config.json is used when it is there; flags given now override "
                     "it) or pick the matching checkpoint")


def _mismatch_causes(shape: dict, here: dict, args, num_classes: int | None) -> list[str]:
    """Human reasons for the common mismatches: backbone, --dim, class count, training-set size."""
    from dmlrs.models.backbones import BACKBONES, backbone_key_shapes

    causes = []
    prefix = "model.backbone."
    trunk = {k[len(prefix):]: v for k, v in shape.items() if k.startswith(prefix)}
    trunk_here = {k[len(prefix):]: v for k, v in here.items() if k.startswith(prefix)}
    if trunk != trunk_here:
        found = next((name for name in BACKBONES if dict(backbone_key_shapes(name)) == trunk), None)
        model = getattr(args, "model", None) if args is not None else None
        causes.append(f"its backbone is {found or 'another network'}, this run builds "
                      f"{model or 'another'} (--model)")
    key = "model.projection.fc.weight"
    if key in shape and key in here and shape[key][0] != here[key][0]:
        causes.append(f"its embedding has {shape[key][0]} dimensions, this run {here[key][0]} (--dim)")
    key = "model.classifier.fc.weight"
    if key in shape and key in here and shape[key][0] != here[key][0]:
        causes.append(f"it was trained on {shape[key][0]} classes, the data now has {here[key][0]} "
                      "(--dataset/--data)")
    slots = sorted(k for k in here if k.endswith("memory.slots"))
    if slots and slots[0] in shape and shape[slots[0]][0] != here[slots[0]][0]:
        causes.append(f"its memory has {shape[slots[0]][0]} slots (training images), the training split now "
                      f"has {here[slots[0]][0]} (--dataset/--data/--split-file)")
    if set(shape) != set(here) and not causes:
        extra = sorted(set(shape) ^ set(here))
        if any(k.startswith("writer.ema.") for k in extra):
            causes.append("one of the two was trained with a momentum (EMA) encoder and the other without "
                          "(--memory, or the SNCA_CE / SNCA_CE_MC script)")
        elif any("standardize" in k or k.startswith("model.projection.") for k in extra):
            causes.append("its embedding head differs (--code-activation or another method's head)")
    return causes

"""HR-S2DML: semi-supervised deep metric learning with a normalized softmax loss with angular
margin (MNCE) on labelled images and batch nuclear-norm maximisation (BNM) on unlabelled ones
(Kang et al., Remote Sensing 2020).

    loss = MNCE(labelled) + bnm_weight * BNM(unlabelled)

Protocols (--train_per):
  default         --train_per of each class of the TRAIN split (70/10/20 split) is labelled, the
                  rest of the train split is the unlabelled pool; best.pt is chosen on val and
                  the test split is never seen in training.
  --transductive  the original code's protocol, exactly: --train_per of each class of the whole
                  dataset is labelled, the remaining images are the test set AND the unlabelled
                  pool AND the images best.pt is chosen on (the test set leaks; a warning says so).

    python train_MNCE_BNM/main.py --dataset AID --data /datasets --train_per 0.2
"""
import math
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dmlrs import cli  # noqa: E402
from dmlrs.errors import DmlrsError  # noqa: E402
from dmlrs.methods.mnce_bnm import BNM_FORMS, MNCEBNM  # noqa: E402

#: paper defaults that differ from the shared ones in dmlrs/cli.py
DEFAULTS = {}
PAPER_BATCH_SIZE = 128  # labelled and unlabelled batches each


def add_arguments(group):
    cli.add_temperature_argument(group, 0.05, "temperature T of the normalized softmax")
    cli.add_margin_argument(group, 0.5, "additive angular margin m in radians (ArcFace cos(theta + m))")
    group.add_argument("--train_per", "--train-per", dest="train_per", type=cli.open_fraction, default=0.2,
                       help="labelled fraction per class, in (0, 1): of the train split, or of the whole dataset with "
                            "--transductive (see above)")
    group.add_argument("--bnm-weight", type=cli.non_negative_float, default=1.0,
                       help="weight of BNM (the original: 1, no flag)")
    group.add_argument("--bnm-form", default="original", choices=sorted(BNM_FORMS),
                       help="original: softmax of the plain cosines, -mean of the singular values (the "
                            "authors' code); paper: softmax(cos / T), nuclear norm / B (Cui et al.)")
    group.add_argument("--transductive", action="store_true",
                       help="the original protocol: test images are the unlabelled pool and select best.pt")


def check_args(args, given):
    """Before any work: the angular margin of the normalized softmax."""
    if not args.margin < math.pi / 2:
        raise DmlrsError(f"--margin {args.margin} must be below pi/2 = 1.5708 radians: cos(theta + m) stops being "
                         "a margin beyond it (the paper: 0.5)")


def _names(classes, labels) -> str:
    shown = ", ".join(repr(classes[c]) for c in labels[:3])
    return ("class " if len(labels) == 1 else "classes ") + shown + (
        f" and {len(labels) - 3} more" if len(labels) > 3 else "")


def check_labelled_split(args, data) -> None:
    """After the data scan, before training: every class has labelled images and the unlabelled pool
    is not empty. Default mode labels max(1, round(m * train_per)) of each class's m train images;
    --transductive labels int(train_per * n) of each whole class (0 for a small class)."""
    counts = Counter(int(label) for label in data.train_labels.tolist())
    unlabelled = [c for c in range(data.num_classes) if counts[c] == 0]
    if unlabelled:
        manifest = data.manifest
        if manifest.get("transductive"):
            sizes = Counter(label for _, label in manifest["train"] + manifest["test"])
            n = min(sizes[c] for c in unlabelled)
            need = math.ceil(100 / n) / 100 if n > 0 else None
            while need is not None and int(need * n) < 1:
                need = round(need + 0.01, 2)
            fix = (f"raise --train_per to at least {need:g}" if need is not None and need < 1
                   else "add images to the class or remove its folder")
            raise DmlrsError(f"--train_per {args.train_per:g} with --transductive labels no image of "
                             f"{_names(data.classes, unlabelled)} (int({args.train_per:g} x {n}) = 0 of its {n} "
                             f"images); {fix}")
        raise DmlrsError(f"{_names(data.classes, unlabelled)}: no image in the train split, so --train_per "
                         "cannot label any; add images to the class (the split keeps 70% of each class for "
                         "training) or remove its folder")
    if data.unlabelled is not None and len(data.unlabelled) == 0:
        raise DmlrsError(f"--train_per {args.train_per:g} labels every training image: the unlabelled pool for "
                         "BNM is empty; lower --train_per")


def build(args, data):
    check_labelled_split(args, data)
    model = cli.model_from_args(args, standardize=True)
    return MNCEBNM(model, data.num_classes, temperature=args.temperature, margin=args.margin,
                   bnm_weight=args.bnm_weight, bnm_form=args.bnm_form)


def main(argv=None) -> int:
    return cli.main("MNCE_BNM", __doc__, add_arguments, build, defaults=DEFAULTS, argv=argv,
                    paper_batch_size=PAPER_BATCH_SIZE, check_args=check_args)


if __name__ == "__main__":
    sys.exit(main())

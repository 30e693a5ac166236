"""SRL: similarity retention loss for remote-sensing image retrieval (Zhao, Yuan, Zhao, ISPRS
IJGI 2020). Batches hold C classes x K images (-b only sets the evaluation batch size); the paper's
best backbone is ResNet50.

No code of the authors is public. From the paper: the ranked-list structure of the loss (hard
positives beyond alpha - m, hard negatives inside alpha, negatives weighted by exp(T (alpha - d))),
alpha = 1.2, m = 0.4, T = 10, C x K batches of query lists, ResNet50 fine-tuned end to end.
Assumed by dmlrs (not given by the paper's text available to us): the "dynamic weights" of hard
positives read as omega_c = 1 + easy/hard pairs of the class (dmlrs/losses/srl.py), lambda = 1,
C = 8, K = 4, the FC(128) + L2 head, and the optimisation shared with the other scripts (SGD,
momentum 0.9, nesterov, wd 1e-4, StepLR(30, 0.5), 130 epochs) at lr 0.01: the Kang et al. scripts'
0.1 is for batches of 256, SRL's C x K = 32 is 8x smaller (linear scaling: 0.0125). Measured
from random init (AID, 96 px, ResNet50, 3 epochs): test kNN 25.2% at lr 0.01, 24.0% at 0.1,
16.9% at 0.001 (chance 3.3%).

    python train_SRL/main.py --dataset PatternNet --data /datasets
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dmlrs import cli, loss_option  # noqa: E402
from dmlrs.data.samplers import ClassBalancedBatchSampler  # noqa: E402
from dmlrs.errors import DmlrsError  # noqa: E402
from dmlrs.methods.srl import SRL  # noqa: E402

#: paper defaults that differ from the shared ones in dmlrs/cli.py
DEFAULTS = {"model": "resnet50"}
DEFAULT_CLASSES_PER_BATCH = 8
DEFAULT_LR = 0.01  # assumed: the papers' 0.1 at batch 256, scaled to C x K = 32
#: C >= 2 (a batch needs negatives) and K >= 2 (positives)
AT_LEAST_TWO = cli.interval(2, integer=True, why=" (SRL needs positive and negative pairs in every batch)")
#: what --loss replaces: the whole SRL loss (its flags --alpha/--margin/--temperature/--lambda_ configure it)
LOSS_TERM = loss_option.LossTerm("srl", ("alpha", "margin", "temperature", "lambda_"), SRL.LOSS_CONTEXT,
                                 "train_SRL/main.py", keeps="the C x K batches (--classes-per-batch, "
                                 "--images-per-class) and everything else")


def add_arguments(group):
    group.add_argument("--classes-per-batch", type=AT_LEAST_TWO, default=None,
                       help=f"C classes per batch, at least 2 (default: {DEFAULT_CLASSES_PER_BATCH}, or the number "
                            "of classes when the dataset has fewer)")
    group.add_argument("--images-per-class", type=AT_LEAST_TWO, default=4,
                       help="K images per class, at least 2; every class needs K training images")
    group.add_argument("--alpha", type=cli.interval(0.0, 2.0, low_open=True), default=1.2,
                       help="negative distance bound alpha, in (0, 2] for unit-norm embeddings (paper)")
    cli.add_margin_argument(group, 0.4, "margin m: positives are pulled inside alpha - m (paper)")
    cli.add_temperature_argument(group, 10.0, "T of the negative weights exp(T (alpha - d)) (paper)")
    group.add_argument("--lambda_", "--lambda", dest="lambda_", type=cli.non_negative_float, default=1.0,
                       help="weight of the negative part (assumed)")
    loss_option.add_loss_arguments(group, LOSS_TERM)


def resolve_classes_per_batch(args, num_classes: int) -> None:
    """C defaults to 8, or to the class count of a dataset with fewer classes (with a note)."""
    if args.classes_per_batch is None:
        args.classes_per_batch = min(DEFAULT_CLASSES_PER_BATCH, num_classes)
        if num_classes < DEFAULT_CLASSES_PER_BATCH:
            print(f"note: the dataset has {num_classes} classes, fewer than SRL's default "
                  f"C = {DEFAULT_CLASSES_PER_BATCH}: using --classes-per-batch {num_classes}", flush=True)


def check_args(args, given):
    """Before any work: the --loss flags; the margin fits inside alpha; -b does not size SRL's training
    batches (a note)."""
    loss_option.check_loss_arguments(args, given, LOSS_TERM)
    if not args.margin < args.alpha:
        raise DmlrsError(f"--margin {args.margin:g} must be smaller than --alpha {args.alpha:g}: positives are pulled "
                         "inside alpha - margin (the paper: alpha 1.2, margin 0.4)")
    if "batch_size" in given:
        c = args.classes_per_batch or DEFAULT_CLASSES_PER_BATCH
        if args.batch_size != c * args.images_per_class:
            print(f"note: SRL trains on batches of --classes-per-batch x --images-per-class = {c} x "
                  f"{args.images_per_class} images; -b {args.batch_size} only sets the evaluation batch size",
                  flush=True)


def check_batches(args, data) -> None:
    """After the data scan, before training: C x K batches can be drawn without repeating an image.
    (The sampler would fill a class with fewer than K images by drawing with replacement: identical
    images as 'positive' pairs at distance 0, so dmlrs refuses instead.)"""
    counts = data.train_labels[data.train_labels >= 0].bincount(minlength=data.num_classes).tolist()
    present = [c for c, n in enumerate(counts) if n > 0]
    if len(present) < 2:
        raise DmlrsError(f"SRL needs at least 2 classes with training images (negatives in every batch); the "
                         f"training split of {data.name} has {len(present)}")
    k = args.images_per_class
    short = sorted((c for c in present if counts[c] < k), key=lambda c: counts[c])
    if short:
        shown = ", ".join(f"{data.classes[c]!r} ({counts[c]} images)" for c in short[:3])
        more = f" and {len(short) - 3} more" if len(short) > 3 else ""
        smallest = counts[short[0]]
        fix = (f"use --images-per-class {smallest} or less" if smallest >= 2
               else "add images to the class or remove its folder (SRL needs 2 images of a class in a batch)")
        which = "class" if len(short) == 1 else "classes"
        raise DmlrsError(f"--images-per-class {k} is more than the training split holds of {which} {shown}{more}: "
                         f"their batches would repeat images; {fix}")
    ClassBalancedBatchSampler(data.train_labels, args.classes_per_batch, k)  # C > classes: its own error


def build(args, data):
    resolve_classes_per_batch(args, data.num_classes)
    check_batches(args, data)
    model = cli.model_from_args(args)
    return SRL(model, classes_per_batch=args.classes_per_batch, images_per_class=args.images_per_class,
               alpha=args.alpha, margin=args.margin, temperature=args.temperature, lambda_=args.lambda_,
               loss=loss_option.loss_choice(args, LOSS_TERM), num_classes=data.num_classes)


def main(argv=None) -> int:
    return cli.main("SRL", __doc__, add_arguments, build, defaults=DEFAULTS, argv=argv, paper_lr=DEFAULT_LR,
                    check_args=check_args)


if __name__ == "__main__":
    sys.exit(main())

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
import sys
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
    group.add_argument("--train_per", "--train-per", dest="train_per", type=cli.fraction, default=0.2,
                       help="labelled fraction per class: of the train split, or of the whole dataset with "
                            "--transductive (see above)")
    group.add_argument("--bnm-weight", type=cli.non_negative_float, default=1.0,
                       help="weight of BNM (the original: 1, no flag)")
    group.add_argument("--bnm-form", default="original", choices=sorted(BNM_FORMS),
                       help="original: softmax of the plain cosines, -mean of the singular values (the "
                            "authors' code); paper: softmax(cos / T), nuclear norm / B (Cui et al.)")
    group.add_argument("--transductive", action="store_true",
                       help="the original protocol: test images are the unlabelled pool and select best.pt")


def build(args, data):
    if data.unlabelled is not None and len(data.unlabelled) == 0:
        raise DmlrsError(f"--train_per {args.train_per} labels every training image: the unlabelled pool for "
                         "BNM is empty; lower --train_per")
    model = cli.model_from_args(args, standardize=True)
    return MNCEBNM(model, data.num_classes, temperature=args.temperature, margin=args.margin,
                   bnm_weight=args.bnm_weight, bnm_form=args.bnm_form)


def main(argv=None) -> int:
    return cli.main("MNCE_BNM", __doc__, add_arguments, build, defaults=DEFAULTS, argv=argv,
                    paper_batch_size=PAPER_BATCH_SIZE)


if __name__ == "__main__":
    sys.exit(main())

"""HR-S2DML: semi-supervised deep metric learning with a normalized softmax loss with angular
margin (MNCE) on labelled images and batch nuclear-norm maximisation (BNM) on unlabelled ones
(Kang et al., Remote Sensing 2020).

By default the unlabelled pool is the rest of the train split (clean protocol); --transductive
reproduces the paper's protocol (unlabelled pool = test split), which leaks the test set.

    python train_MNCE_BNM/main.py --dataset AID --data /datasets --train_per 0.2
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dmlrs import cli  # noqa: E402
from dmlrs.methods.mnce_bnm import MNCEBNM  # noqa: E402

#: paper defaults that differ from the shared ones in dmlrs/cli.py
DEFAULTS = {"margin": 0.5}


def add_arguments(group):
    group.add_argument("--train_per", "--train-per", dest="train_per", type=cli.fraction, default=0.2,
                       help="labelled fraction of the train split")
    group.add_argument("--bnm-weight", type=cli.non_negative_float, default=1.0, help="weight of BNM")
    group.add_argument("--transductive", action="store_true",
                       help="paper protocol: the test split is the unlabelled pool (leaks the test set)")


def build(args, data):
    model = cli.model_from_args(args)
    return MNCEBNM(model, data.num_classes, temperature=args.temperature, margin=args.margin,
                   bnm_weight=args.bnm_weight)


def main(argv=None) -> int:
    return cli.main("MNCE_BNM", __doc__, add_arguments, build, defaults=DEFAULTS, argv=argv)


if __name__ == "__main__":
    sys.exit(main())

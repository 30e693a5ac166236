"""SRL: similarity retention loss for remote-sensing image retrieval (Zhao et al., ISPRS IJGI
2020). Batches hold C classes x K images; the paper's best backbone is ResNet50.

    python train_SRL/main.py --dataset PatternNet --data /datasets
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dmlrs import cli  # noqa: E402
from dmlrs.methods.srl import SRL  # noqa: E402

#: paper defaults that differ from the shared ones in dmlrs/cli.py
DEFAULTS = {"model": "resnet50"}


def add_arguments(group):
    group.add_argument("--classes-per-batch", type=cli.positive_int, default=8, help="C classes per batch")
    group.add_argument("--images-per-class", type=cli.positive_int, default=4, help="K images per class")
    group.add_argument("--alpha", type=cli.positive_float, default=1.2, help="negative distance bound alpha")
    group.add_argument("--srl-margin", type=cli.non_negative_float, default=0.4, help="margin m (alpha - m bounds positives)")
    group.add_argument("--srl-T", type=cli.non_negative_float, default=10.0, help="negative weighting temperature T")
    group.add_argument("--srl-lambda", type=cli.non_negative_float, default=1.0, help="weight of the negative part")


def build(args, data):
    model = cli.model_from_args(args)
    return SRL(model, classes_per_batch=args.classes_per_batch, images_per_class=args.images_per_class,
               alpha=args.alpha, margin=args.srl_margin, temperature=args.srl_T, lambda_=args.srl_lambda)


def main(argv=None) -> int:
    return cli.main("SRL", __doc__, add_arguments, build, defaults=DEFAULTS, argv=argv)


if __name__ == "__main__":
    sys.exit(main())

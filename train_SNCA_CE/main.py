"""SNCA-CE (MB): scalable neighbourhood component analysis over a per-sample memory bank plus
cross-entropy, memory updated by momentum averaging (Kang et al., TGRS 2020).

    loss = lambda_ * SNCA(memory) + CE      (--lambda_ 0: the softmax baseline)

    python train_SNCA_CE/main.py --dataset AID --data /datasets
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dmlrs import cli  # noqa: E402
from dmlrs.methods.snca_ce import SNCACE  # noqa: E402

#: paper defaults that differ from the shared ones in dmlrs/cli.py
DEFAULTS = {}


def add_arguments(group):
    cli.add_snca_arguments(group)
    cli.add_memory_momentum_argument(group)


def build(args, data):
    model = cli.model_from_args(args, num_classes=data.num_classes)
    return SNCACE(model, data.train_labels, memory_mode="bank", temperature=args.temperature,
                  margin=args.margin, lambda_=args.lambda_, memory_momentum=args.memory_momentum)


def main(argv=None) -> int:
    return cli.main("SNCA_CE", __doc__, add_arguments, build, defaults=DEFAULTS, argv=argv)


if __name__ == "__main__":
    sys.exit(main())

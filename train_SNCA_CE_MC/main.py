"""SNCA-CE (MU): the SNCA + cross-entropy loss of SNCA-CE with memory slots filled by a momentum
(EMA, decay 0.999) encoder instead of momentum averaging (Kang et al., TGRS 2020).

    python train_SNCA_CE_MC/main.py --dataset AID --data /datasets
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dmlrs import cli  # noqa: E402
from dmlrs.methods.snca_ce import SNCACE  # noqa: E402

#: paper defaults that differ from the shared ones in dmlrs/cli.py
DEFAULTS = {}

add_arguments = cli.add_snca_ce_arguments


def build(args, data):
    model = cli.model_from_args(args, num_classes=data.num_classes)
    return SNCACE(model, data.train_labels, memory_mode="momentum", temperature=args.temperature,
                  margin=args.margin, lambda_=args.lambda_, ema_decay=args.ema)


def main(argv=None) -> int:
    return cli.main("SNCA_CE_MC", __doc__, add_arguments, build, defaults=DEFAULTS, argv=argv)


if __name__ == "__main__":
    sys.exit(main())

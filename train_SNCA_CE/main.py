"""SNCA-CE (MB): scalable neighbourhood component analysis over a per-sample memory bank plus
cross-entropy, memory updated by momentum averaging (Kang et al., TGRS 2020).

    loss = lambda_ * SNCA(memory) + CE      (--lambda_ 0: the softmax baseline)

    python train_SNCA_CE/main.py --dataset AID --data /datasets
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dmlrs import cli, loss_option  # noqa: E402
from dmlrs.methods.snca_ce import SNCACE  # noqa: E402

#: paper defaults that differ from the shared ones in dmlrs/cli.py
DEFAULTS = {}
#: what --loss replaces: the SNCA term (its flags --temperature/--margin configure it)
LOSS_TERM = loss_option.LossTerm("snca", ("temperature", "margin"), SNCACE.LOSS_CONTEXT, "train_SNCA_CE/main.py",
                                 keeps="the CE term, --lambda_ (weighting the new term) and the memory updates")


def add_arguments(group):
    cli.add_snca_arguments(group)
    cli.add_ce_weight_argument(group, alone="SNCA alone, the paper's SNCA (MB) baseline")
    cli.add_memory_momentum_argument(group)
    loss_option.add_loss_arguments(group, LOSS_TERM)


def check_args(args, given):
    cli.check_snca_ce_weights(args)
    loss_option.check_loss_arguments(args, given, LOSS_TERM)


def build(args, data):
    model = cli.model_from_args(args, num_classes=data.num_classes)
    return SNCACE(model, data.train_labels, memory_mode="bank", temperature=args.temperature,
                  margin=args.margin, lambda_=args.lambda_, ce_weight=args.ce_weight, memory_momentum=args.memory_momentum,
                  loss=loss_option.loss_choice(args, LOSS_TERM), num_classes=data.num_classes)


def main(argv=None) -> int:
    return cli.main("SNCA_CE", __doc__, add_arguments, build, defaults=DEFAULTS, argv=argv, check_args=check_args)


if __name__ == "__main__":
    sys.exit(main())

"""SNCA-CE (MU): the SNCA + cross-entropy loss of SNCA-CE with memory slots filled by a momentum
(EMA, decay 0.999) encoder instead of momentum averaging (Kang et al., TGRS 2020).

    loss = lambda_ * SNCA(memory) + CE      (the original MU script has no lambda: 1)

    python train_SNCA_CE_MC/main.py --dataset AID --data /datasets
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dmlrs import cli, loss_option  # noqa: E402
from dmlrs.methods.snca_ce import SNCACE  # noqa: E402

#: paper defaults that differ from the shared ones in dmlrs/cli.py
DEFAULTS = {}
#: what --loss replaces: the SNCA term (its flags --temperature/--margin configure it)
LOSS_TERM = loss_option.LossTerm("snca", ("temperature", "margin"), SNCACE.LOSS_CONTEXT, "train_SNCA_CE_MC/main.py",
                                 keeps="the CE term, --lambda_ (weighting the new term) and the memory updates")


def add_arguments(group):
    cli.add_snca_arguments(group)
    cli.add_ce_weight_argument(group, alone="SNCA alone, the paper's SNCA (MU) baseline")
    cli.add_ema_arguments(group)
    loss_option.add_loss_arguments(group, LOSS_TERM)


def check_args(args, given):
    cli.check_snca_ce_weights(args)
    loss_option.check_loss_arguments(args, given, LOSS_TERM)


def build(args, data):
    model = cli.model_from_args(args, num_classes=data.num_classes)
    return SNCACE(model, data.train_labels, memory_mode="momentum", temperature=args.temperature,
                  margin=args.margin, lambda_=args.lambda_, ce_weight=args.ce_weight, ema_decay=args.ema, ema_bn=args.ema_bn,
                  loss=loss_option.loss_choice(args, LOSS_TERM), num_classes=data.num_classes)


def main(argv=None) -> int:
    return cli.main("SNCA_CE_MC", __doc__, add_arguments, build, defaults=DEFAULTS, argv=argv, check_args=check_args)


if __name__ == "__main__":
    sys.exit(main())

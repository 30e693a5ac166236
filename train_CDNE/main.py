"""CDNE: deep hashing by class-discriminated neighbourhood embedding, SNCA on relaxed codes +
cross-entropy + quantization, memory filled by momentum averaging (MB) or a momentum encoder (MU)
(Kang, Fernandez-Beltran, Ye, Tong, Plaza, JSTARS 2020). ``--dim`` is the code length in bits
(the paper: 16/32/64/128; default 128 as the original).

    loss = lambda_ * SNCA(normalize(h)) + ce_weight * CE(V h) + quant_weight * mean((|h| - 1)^2)

h is the raw linear output of the hash layer (as the original; --code-activation tanh bounds it).
best.pt is chosen by Hamming precision@20 of the validation split against the train split, as
the original (--select-metric).

    python train_CDNE/main.py --dataset NWPU-RESISC45 --data /datasets --dim 64 --memory momentum
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dmlrs import cli  # noqa: E402
from dmlrs.errors import DmlrsError  # noqa: E402
from dmlrs.methods.cdne import CDNE  # noqa: E402
from dmlrs.methods.memory_writer import MEMORY_MODES  # noqa: E402

#: paper defaults that differ from the shared ones in dmlrs/cli.py
DEFAULTS = {"select_metric": "hamming_P@20"}
CODE_ACTIVATIONS = {"none": "embedding", "tanh": "hash"}  # --code-activation -> model head


def add_arguments(group):
    group.add_argument("--memory", default="bank", choices=MEMORY_MODES,
                       help="bank: CDNE (MB), momentum averaging; momentum: CDNE (MU), EMA encoder")
    cli.add_snca_arguments(group)
    cli.add_ce_weight_argument(group)
    group.add_argument("--quant-weight", type=cli.non_negative_float, default=1.0,
                       help="weight of the quantization term (the original: 1, no flag)")
    group.add_argument("--code-activation", default="none", choices=sorted(CODE_ACTIVATIONS),
                       help="none: raw linear codes (the original); tanh: codes in (-1, 1)")
    cli.add_memory_momentum_argument(group)
    cli.add_ema_arguments(group)


def check_args(args, given):
    """Before any work: the three loss weights may not all be 0."""
    if args.lambda_ == 0 and args.ce_weight == 0 and args.quant_weight == 0:
        raise DmlrsError("--lambda_ 0, --ce-weight 0 and --quant-weight 0 leave CDNE no loss to train; give at "
                         "least one of them a weight > 0 (the original: 1 each)")


def build(args, data):
    model = cli.model_from_args(args, num_classes=data.num_classes, head=CODE_ACTIVATIONS[args.code_activation])
    return CDNE(model, data.train_labels, memory_mode=args.memory, temperature=args.temperature,
                margin=args.margin, lambda_=args.lambda_, ce_weight=args.ce_weight,
                quant_weight=args.quant_weight, memory_momentum=args.memory_momentum,
                ema_decay=args.ema, ema_bn=args.ema_bn)


def main(argv=None) -> int:
    return cli.main("CDNE", __doc__, add_arguments, build, defaults=DEFAULTS, argv=argv, check_args=check_args)


if __name__ == "__main__":
    sys.exit(main())

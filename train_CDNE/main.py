"""CDNE: deep hashing by class-discriminated neighbourhood embedding, SNCA on relaxed codes +
cross-entropy + quantization, memory filled by momentum averaging (MB) or a momentum encoder (MU)
(Kang et al., JSTARS 2020). ``--dim`` is the code length in bits (16/32/64/128).

    python train_CDNE/main.py --dataset NWPU-RESISC45 --data /datasets --dim 64 --memory momentum
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dmlrs import cli  # noqa: E402
from dmlrs.methods.cdne import CDNE  # noqa: E402
from dmlrs.methods.memory_writer import MEMORY_MODES  # noqa: E402

#: paper defaults that differ from the shared ones in dmlrs/cli.py
DEFAULTS = {"dim": 64}


def add_arguments(group):
    group.add_argument("--memory", default="bank", choices=MEMORY_MODES,
                       help="bank: CDNE (MB), momentum averaging; momentum: CDNE (MU), EMA encoder")
    group.add_argument("--ce-weight", type=cli.non_negative_float, default=None,
                       help="weight of the cross-entropy term (default: the loss's)")
    group.add_argument("--quant-weight", type=cli.non_negative_float, default=None,
                       help="weight of the quantization term (default: the loss's)")
    cli.add_memory_arguments(group)


def build(args, data):
    model = cli.model_from_args(args, num_classes=data.num_classes, head="hash")
    return CDNE(model, data.train_labels, memory_mode=args.memory, temperature=args.temperature,
                margin=args.margin, ce_weight=args.ce_weight, quant_weight=args.quant_weight,
                memory_momentum=args.memory_momentum, ema_decay=args.ema)


def main(argv=None) -> int:
    return cli.main("CDNE", __doc__, add_arguments, build, defaults=DEFAULTS, argv=argv)


if __name__ == "__main__":
    sys.exit(main())

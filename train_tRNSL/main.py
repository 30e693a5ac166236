"""t-RNSL: truncated robust normalized softmax loss for training with noisy labels
(Kang et al., TGRS 2021). Noise is injected into the train split only (seeded); the report gives
kNN accuracy with the noisy training labels as gallery (what a user has) and with clean ones.

    python train_tRNSL/main.py --dataset AID --data /datasets --noiseType symmetric --noiseRate 0.3
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dmlrs import cli  # noqa: E402
from dmlrs.methods.trnsl import TRNSL  # noqa: E402

#: paper defaults that differ from the shared ones in dmlrs/cli.py
DEFAULTS = {}


def add_arguments(group):
    group.add_argument("--noiseType", "--noise-type", dest="noiseType", default=None,
                       choices=["symmetric", "pairflip", "dependent"], help="label noise on the train split")
    group.add_argument("--noiseRate", "--noise-rate", dest="noiseRate", type=cli.fraction, default=0.0)
    group.add_argument("--q", type=cli.positive_float, default=0.7, help="Box-Cox exponent q")
    group.add_argument("--k", type=cli.fraction, default=0.5, help="truncation threshold k")
    group.add_argument("--start_prune", "--start-prune", dest="start_prune", type=int, default=40,
                       help="first epoch (0-based) whose start refreshes the sample weights")
    group.add_argument("--prune-every", type=cli.positive_int, default=10, help="epochs between refreshes")
    group.add_argument("--no-truncation", dest="truncated", action="store_false", help="plain RNSL")


def build(args, data):
    model = cli.model_from_args(args)
    return TRNSL(model, data.num_classes, data.train_eval, temperature=args.temperature, q=args.q, k=args.k,
                 start_prune=args.start_prune, prune_every=args.prune_every, truncated=args.truncated)


def main(argv=None) -> int:
    return cli.main("tRNSL", __doc__, add_arguments, build, defaults=DEFAULTS, argv=argv)


if __name__ == "__main__":
    sys.exit(main())

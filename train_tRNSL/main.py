"""t-RNSL: truncated robust normalized softmax loss for training with noisy labels
(Kang, Fernandez-Beltran, Duan, Kang, Plaza, TGRS 2021).

    loss = mean_i w_i * (L_q(p_i) - L_q(k)),   L_q(p) = (1 - p^q) / q,   w_i = 1[p_i > k]

Label noise is injected into the train split only (seeded); validation and test labels stay
clean. As the original script, the default adds 50% symmetric noise; --noiseRate 0 trains on the
labels as they are (e.g. a dataset whose labels are noisy already). The report gives kNN accuracy
with the noisy training labels as gallery (what a user has) and with the clean ones.

    python train_tRNSL/main.py --dataset AID --data /datasets --noiseType symmetric --noiseRate 0.3
    python train_tRNSL/main.py --dataset AID --data /datasets --noiseType pairflip --noiseRate 0.3
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dmlrs import cli  # noqa: E402
from dmlrs.data.noise import NOISE_TYPES  # noqa: E402
from dmlrs.methods.trnsl import TRNSL  # noqa: E402

#: paper defaults that differ from the shared ones in dmlrs/cli.py
DEFAULTS = {}
REFRESH_IMAGES = ("augmented", "plain")


def add_arguments(group):
    cli.add_temperature_argument(group, 0.05, "temperature T of the normalized softmax")
    group.add_argument("--noiseType", "--noise-type", dest="noiseType", default="symmetric", choices=NOISE_TYPES,
                       help="label noise on the train split: symmetric (to any other class); pairflip (the "
                            "original's name for the published label-dependent tables of AID and NWPU-RESISC45, "
                            "= dependent); cyclic (class c -> c + 1)")
    group.add_argument("--noiseRate", "--noise-rate", dest="noiseRate", type=cli.fraction_below_one, default=0.5,
                       help="fraction of flipped training labels, in [0, 1) (0: no synthetic noise)")
    group.add_argument("--q", type=cli.decay_factor, default=0.7, help="Box-Cox exponent q, in (0, 1]")
    group.add_argument("--k", type=cli.open_fraction, default=0.5, help="truncation threshold k on p_y, in (0, 1)")
    group.add_argument("--start_prune", "--start-prune", dest="start_prune", type=cli.positive_int, default=40,
                       help="weights are refreshed before epoch n (counted from 1) when n >= start_prune and "
                            "n %% prune-every == 0: epochs 40, 50, ..., 130 with the defaults, as the original")
    group.add_argument("--prune-every", type=cli.positive_int, default=10, help="epochs between refreshes")
    group.add_argument("--refresh-images", default="augmented", choices=REFRESH_IMAGES,
                       help="images the refresh embeds (eval mode): augmented training images, as the "
                            "original, or plain (un-augmented) ones")
    group.add_argument("--no-truncation", dest="truncated", action="store_false", help="plain RNSL")


def build(args, data):
    model = cli.model_from_args(args)
    refresh_dataset = data.train if args.refresh_images == "augmented" else data.train_eval
    return TRNSL(model, data.num_classes, refresh_dataset, temperature=args.temperature, q=args.q, k=args.k,
                 start_prune=args.start_prune, prune_every=args.prune_every, truncated=args.truncated)


def main(argv=None) -> int:
    return cli.main("tRNSL", __doc__, add_arguments, build, defaults=DEFAULTS, argv=argv)


if __name__ == "__main__":
    sys.exit(main())

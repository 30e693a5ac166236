"""``--loss NAME``, ``--loss-args``, ``--miner``, ``--miner-args``: swap a script's metric-learning term.

The scripts whose metric-learning term is a plain ``loss(embeddings, labels, *, indices=None)``
accept them: train_SNCA_CE and train_SNCA_CE_MC (the SNCA term; CE, lambda, the memory and its
updates stay) and train_SRL (the whole loss; the C x K batches stay). The named loss is a
registered dmlrs loss (``dmlrs/losses/__init__.py``) or ``pml:ClassName``, any
pytorch-metric-learning loss, optionally with a PML miner. ``--loss-args key=value,...`` sets
its constructor options, typed from the constructor's signature (``dmlrs/losses/choice.py``).

The other scripts do not take ``--loss``: their loss is woven into more than (embeddings,
labels) -- HR-S2DML (train_MNCE_BNM) is a margin softmax over a class head plus BNM on the
unlabelled images' logits, CDNE is SNCA on relaxed hash codes with quantisation and CE on the
codes' class head, t-RNSL prunes samples from its per-sample weights at epoch hooks.

Every check here runs before the dataset is scanned (a script's ``check_args``), so an unknown
loss, a bad ``--loss-args`` key, a loss the script cannot feed or a missing optional extra ends
as one ``error:`` line, exit status 2.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from dmlrs.errors import DmlrsError
from dmlrs.losses.choice import LossChoice, check_usable, parse_options, resolve_loss, resolve_miner

SCRIPTS = "train_SNCA_CE, train_SNCA_CE_MC and train_SRL"
WHY_NOT_OTHERS = ("not train_MNCE_BNM (margin softmax over a class head + BNM on unlabelled logits), train_CDNE "
                  "(SNCA on relaxed hash codes + quantisation) or train_tRNSL (sample pruning at epoch hooks): "
                  "their loss is woven into more than (embeddings, labels)")


@dataclass(frozen=True)
class LossTerm:
    """The metric-learning term a script lets ``--loss`` replace."""

    own: str  # the paper's term, a registered loss name ("snca", "srl")
    flags: tuple[str, ...]  # the method flags (argparse dests) that are the paper term's constructor options
    context: tuple[str, ...]  # what the method gives a loss constructor (``Method.LOSS_CONTEXT``)
    script: str  # "train_SNCA_CE/main.py"
    keeps: str  # what stays when the term is replaced, for --help


def add_loss_arguments(group, term: LossTerm) -> None:
    """The four flags, in the script's "method" group."""
    flags = "/".join(f"--{flag}" for flag in term.flags)
    group.add_argument("--loss", default=None, metavar="NAME|pml:ClassName",
                       help=f"the metric-learning term (default: {term.own}, the paper's, set by {flags}): a loss "
                            "registered in dmlrs/losses/__init__.py (add yours: docs/adding_a_loss.md) or "
                            "pml:ClassName, any pytorch-metric-learning loss (e.g. pml:TripletMarginLoss, "
                            "pml:ProxyNCALoss; optional extra: pip install -e \".[pml]\"). It replaces the "
                            f"{term.own} term; {term.keeps} stay. Accepted by {SCRIPTS}, whose term is a plain "
                            f"loss(embeddings, labels); {WHY_NOT_OTHERS}")
    group.add_argument("--loss-args", "--loss_args", dest="loss_args", default=None, metavar="KEY=VALUE,...",
                       help="constructor options of --loss, typed from its signature (e.g. margin=0.1,swap=true); "
                            "memory, num_classes, dim/embedding_size, ... are filled in by the script (default: "
                            "none: the loss's own defaults)")
    group.add_argument("--miner", default=None, metavar="pml:ClassName",
                       help="a pytorch-metric-learning miner for a pml: loss (e.g. pml:TripletMarginMiner); "
                            "default: none, the loss sees every tuple of the batch")
    group.add_argument("--miner-args", "--miner_args", dest="miner_args", default=None, metavar="KEY=VALUE,...",
                       help="constructor options of --miner (e.g. margin=0.2,type_of_triplets=semihard; "
                            "default: none)")


def _flag(flag: str, function, *args):
    """``function(*args)``, its DmlrsError prefixed with the flag it concerns."""
    try:
        return function(*args)
    except DmlrsError as exc:
        raise DmlrsError(f"{flag}: {exc}") from None


def loss_choice(args: argparse.Namespace, term: LossTerm) -> LossChoice:
    """The loss the flags ask for. The paper's own term takes its method flags as options,
    overridden by ``--loss-args``."""
    name = args.loss or term.own
    spec = _flag("--loss", resolve_loss, name)
    options = _flag("--loss-args", parse_options, spec, args.loss_args)
    if name == term.own:
        options = {**{flag: getattr(args, flag) for flag in term.flags}, **options}
    miner, miner_options = args.miner, {}
    if miner is not None:
        miner_spec = _flag("--miner", resolve_miner, miner)
        miner_options = _flag("--miner-args", parse_options, miner_spec, args.miner_args)
    return LossChoice(name, options, miner, miner_options)


def check_loss_arguments(args: argparse.Namespace, given: set, term: LossTerm) -> None:
    """Before any work: the loss exists (and its extra is installed), its options are valid, the
    script can give what it needs, and no flag is set twice or set for a term that is replaced."""
    if args.miner_args is not None and args.miner is None:
        raise DmlrsError("--miner-args without --miner: name the miner too (e.g. --miner pml:TripletMarginMiner)")
    choice = loss_choice(args, term)
    spec = resolve_loss(choice.name)
    _flag("--loss", check_usable, spec, term.context, term.script)
    if choice.miner is not None and not spec.is_pml:
        raise DmlrsError(f"--miner {choice.miner}: miners work with pytorch-metric-learning losses (--loss "
                         f"pml:ClassName) only; {choice.name} takes no mined tuples")
    set_flags = [flag for flag in term.flags if flag in given]
    if choice.name != term.own and set_flags:
        flags = ", ".join(f"--{flag}" for flag in set_flags)
        raise DmlrsError(f"{flags} set{'s' if len(set_flags) == 1 else ''} the {term.own} term, which --loss "
                         f"{choice.name} replaces; give {choice.name}'s options with --loss-args (it takes: "
                         f"{spec.describe_options()})")
    twice = [flag for flag in set_flags if flag in parse_options(spec, args.loss_args)]
    if twice:
        raise DmlrsError(f"--{twice[0]} and --loss-args {twice[0]}=... both set the {term.own} term's "
                         f"{twice[0]}; give one of them")

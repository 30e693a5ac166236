"""Which loss fills a method's metric-learning term: a registered dmlrs loss or ``pml:ClassName``.

A method whose metric-learning term is a plain ``loss(embeddings, labels, *, indices=None)``
(SNCA-CE MB/MU, SRL) takes a :class:`LossChoice` and builds it once it has what the loss may need.

What a loss needs, it declares by NAMING it in its constructor; the method passes it in:

    memory, memory_labels   the per-sample memory bank and the class of each slot (SNCA-CE only)
    num_samples             training images (= memory slots)
    num_classes             classes of the dataset
    dim, embedding_size     embedding size (--dim; PML's proxy losses call it embedding_size)

Every other constructor parameter whose annotation or default is a bool, int, float or str is an
OPTION, settable as text (``--loss-args margin=0.1,swap=true``), typed from the signature. A
parameter annotated ``int`` takes integers only; one whose default is an int and that has no
annotation (PML's ``softmax_scale=1``) takes any number. Keyword arguments forwarded to base
classes (``**kwargs``) are followed up the class hierarchy (PML's ``NCALoss(softmax_scale=1)``
below ``ProxyNCALoss``). A required parameter that is neither context nor a simple value makes
the loss unusable here (PML's ``CrossBatchMemory(loss, ...)``).

The loss's ``forward`` must follow the dmlrs signature ``forward(embeddings, labels, *,
indices=None)`` and take nothing else (``bnm`` takes logits, ``cdne`` also needs the class
logits: neither can replace a term). PML losses are wrapped to it by :class:`~dmlrs.losses.pml.PMLLoss`.
"""
from __future__ import annotations

import difflib
import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Mapping

from torch import nn

from dmlrs.errors import DmlrsError
from dmlrs.losses import pml

#: what a method can hand to a loss constructor, by parameter name
CONTEXT = {
    "memory": "the memory bank",
    "memory_labels": "the memory bank's slot labels",
    "num_samples": "the number of training images",
    "num_classes": "the number of classes",
    "dim": "the embedding size (--dim)",
    "embedding_size": "the embedding size (--dim)",
}
_REQUIRED = inspect.Parameter.empty
_SIMPLE = (bool, int, float, str)
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class Option:
    """One constructor option settable as text: ``kind`` is bool, int, float, str or "number"
    (an unannotated int default: int or float accepted)."""

    name: str
    kind: object
    default: object = _REQUIRED
    optional: bool = False  # annotated ``X | None``: the text "none" gives None

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def describe(self) -> str:
        kind = self.kind if isinstance(self.kind, str) else self.kind.__name__
        return f"{self.name} ({kind}, required)" if self.required else f"{self.name}={self.default!r} ({kind})"

    def parse(self, text: str):
        """The value of ``text`` for this option; ``ValueError`` saying what was expected."""
        if self.optional and text.lower() == "none":
            return None
        if self.kind is bool:
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
            raise ValueError(f"{self.name} takes true or false, got {text!r}")
        if self.kind is str:
            return text
        try:
            value = int(text) if self.kind is int else float(text)
        except ValueError:
            wanted = "an integer" if self.kind is int else "a number"
            raise ValueError(f"{self.name} takes {wanted}, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{self.name} takes a finite number, got {text!r}")
        if self.kind == "number" and value == int(value) and "." not in text and "e" not in text.lower():
            return int(value)
        return value


@dataclass(frozen=True)
class LossSpec:
    """What a loss name resolves to: its class, the context it takes, its options."""

    name: str
    cls: type
    context: tuple[str, ...]  # context parameters the constructor names
    required_context: tuple[str, ...]  # ... of which it cannot do without
    options: Mapping[str, Option]
    unusable: tuple[str, ...] = ()  # required parameters nobody can give
    is_pml: bool = False

    def describe_options(self) -> str:
        return ", ".join(option.describe() for option in self.options.values()) or "none"


def _annotation_kind(annotation) -> tuple[object, bool]:
    """(simple type or None, optional) of an annotation; string annotations by their plain names."""
    if isinstance(annotation, str):
        text = annotation.replace(" ", "")
        optional = text.endswith("|None") or text.startswith("Optional[")
        text = text.removesuffix("|None").removeprefix("Optional[").removesuffix("]")
        return {t.__name__: t for t in _SIMPLE}.get(text), optional
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0] if len(args) == 1 else None
    return (annotation if annotation in _SIMPLE else None), optional


def _option(param: inspect.Parameter) -> Option | None:
    if param.annotation is not inspect.Parameter.empty:
        kind, optional = _annotation_kind(param.annotation)
    else:
        default = param.default
        kind = type(default) if type(default) in _SIMPLE else None
        kind, optional = ("number" if kind is int else kind), False
    return None if kind is None else Option(param.name, kind, param.default, optional)


def _signature(function) -> inspect.Signature:
    try:
        return inspect.signature(function, eval_str=True)
    except Exception:  # an annotation that cannot be evaluated: read it as text
        return inspect.signature(function)


def constructor_parameters(cls: type) -> list[inspect.Parameter]:
    """Named constructor parameters of ``cls``, following ``**kwargs`` up the class hierarchy.

    A base class's parameter without a default is left out: the subclass passes it itself
    (PML's ``GenericPairLoss(mat_based_loss)``)."""
    found: dict[str, inspect.Parameter] = {}
    first = True
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            break
        if "__init__" not in vars(klass):
            continue
        parameters = list(_signature(vars(klass)["__init__"]).parameters.values())[1:]
        for param in parameters:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or param.name in found:
                continue
            if first or param.default is not _REQUIRED:
                found[param.name] = param
        first = False
        if not any(param.kind is param.VAR_KEYWORD for param in parameters):
            break
    return list(found.values())


def _check_forward(name: str, cls: type) -> None:
    """The dmlrs loss signature: forward(embeddings, labels, *, indices=None), nothing else."""
    params = list(_signature(cls.forward).parameters.values())[1:]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    others = [p.name for p in params[2:] if p.name != "indices" and p.kind is not p.VAR_KEYWORD]
    if len(positional) < 2 or "indices" not in {p.name for p in params} or others:
        shown = ", ".join(p.name for p in params)
        raise DmlrsError(f"loss {name!r} cannot replace a metric-learning term: its forward takes ({shown}), "
                         "a replacement takes (embeddings, labels, *, indices=None) and nothing else")


def spec_of(name: str, cls: type, *, is_pml: bool = False) -> LossSpec:
    """The :class:`LossSpec` of ``cls`` (a loss or a PML miner) known as ``name``."""
    context, required_context, options, unusable = [], [], {}, []
    for param in constructor_parameters(cls):
        if param.name in CONTEXT:
            context.append(param.name)
            if param.default is _REQUIRED:
                required_context.append(param.name)
            continue
        option = _option(param)
        if option is not None:
            options[param.name] = option
        elif param.default is _REQUIRED:
            unusable.append(param.name)
    return LossSpec(name, cls, tuple(context), tuple(required_context), options, tuple(unusable), is_pml)


def resolve_loss(name: str) -> LossSpec:
    """The spec of a registered loss name or ``pml:ClassName``; one error for anything else."""
    from dmlrs.losses import LOSSES  # read at call time: a registry entry added later counts

    if pml.is_pml_name(name):
        return spec_of(name, pml.pml_class("losses", name), is_pml=True)
    if name not in LOSSES:
        close = difflib.get_close_matches(name, list(LOSSES), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise DmlrsError(f"unknown loss {name!r}; {hint}registered (dmlrs/losses/__init__.py): "
                         f"{', '.join(sorted(LOSSES))}; or pml:ClassName for a pytorch-metric-learning loss "
                         "(e.g. pml:TripletMarginLoss)")
    _check_forward(name, LOSSES[name])
    return spec_of(name, LOSSES[name])


def resolve_miner(name: str) -> LossSpec:
    """The spec of ``pml:MinerName``."""
    if not pml.is_pml_name(name):
        raise DmlrsError(f"unknown miner {name!r}: miners come from pytorch-metric-learning, name them "
                         f"pml:ClassName (e.g. pml:TripletMarginMiner)")
    return spec_of(name, pml.pml_class("miners", name), is_pml=True)


def parse_options(spec: LossSpec, text: str | None) -> dict[str, object]:
    """``"key=value,key=value"`` -> typed options of ``spec``; one error naming the bad item and
    listing the valid keys. Required options that are missing are an error too."""
    values: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise DmlrsError(f"{item!r} is not key=value; {spec.name} takes: {spec.describe_options()}")
        if key not in spec.options:
            filled = " (filled in by the script)" if key in CONTEXT else ""
            raise DmlrsError(f"{spec.name} has no option {key!r}{filled}; it takes: {spec.describe_options()}")
        if key in values:
            raise DmlrsError(f"{key!r} is given twice")
        try:
            values[key] = spec.options[key].parse(value.strip())
        except ValueError as exc:
            raise DmlrsError(f"{exc}; {spec.name} takes: {spec.describe_options()}") from None
    missing = [o.name for o in spec.options.values() if o.required and o.name not in values]
    if missing:
        raise DmlrsError(f"{spec.name} needs {', '.join(missing)}=...; it takes: {spec.describe_options()}")
    return values


def check_usable(spec: LossSpec, provided: typing.Iterable[str], where: str) -> None:
    """Refuse a loss whose required constructor arguments ``where`` (a script or method) cannot give."""
    if spec.unusable:
        raise DmlrsError(f"{spec.name} needs {', '.join(spec.unusable)}, which cannot be given as text: it "
                         "cannot replace a metric-learning term")
    missing = [key for key in spec.required_context if key not in set(provided)]
    if missing:
        needs = ", ".join(f"{key} ({CONTEXT[key]})" for key in missing)
        raise DmlrsError(f"{spec.name} needs {needs}, which {where} does not have")


@dataclass(frozen=True)
class LossChoice:
    """A loss by name with typed options (and, for a PML loss, an optional PML miner)."""

    name: str
    options: Mapping[str, object] = field(default_factory=dict)
    miner: str | None = None
    miner_options: Mapping[str, object] = field(default_factory=dict)

    @property
    def part_name(self) -> str:
        """Key of the term among the logged loss parts (``pml:X`` -> ``pml_X``)."""
        return self.name.replace(":", "_")

    def build(self, context: Mapping[str, object], where: str = "this method") -> nn.Module:
        """The loss module, given the ``context`` values its constructor names."""
        spec = resolve_loss(self.name)
        check_usable(spec, context, where)
        if self.miner is not None and not spec.is_pml:
            raise DmlrsError(f"a miner ({self.miner}) works with a pytorch-metric-learning loss (pml:...) only; "
                             f"{self.name} takes no mined tuples")
        loss = _construct(spec, {**{key: context[key] for key in spec.context if key in context}, **self.options})
        if not spec.is_pml:
            return loss
        miner = None
        if self.miner is not None:
            miner_spec = resolve_miner(self.miner)
            check_usable(miner_spec, context, where)
            miner = _construct(miner_spec, {**{k: context[k] for k in miner_spec.context if k in context},
                                            **self.miner_options})
        return pml.PMLLoss(loss, miner)


def _construct(spec: LossSpec, kwargs: dict) -> nn.Module:
    """``spec.cls(**kwargs)``; a constructor that refuses its options is one error naming them."""
    try:
        return spec.cls(**kwargs)
    except DmlrsError:
        raise
    except (TypeError, ValueError, AssertionError) as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k not in CONTEXT) or "no options"
        raise DmlrsError(f"{spec.name} refused {given}: {exc}") from None

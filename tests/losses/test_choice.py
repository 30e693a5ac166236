"""LossChoice: options typed from constructor signatures, context filled in by name, clear refusals."""
import pytest
import torch
from torch import nn

from dmlrs.errors import DmlrsError
from dmlrs.losses import LOSSES, LossChoice, resolve_loss
from dmlrs.losses.choice import constructor_parameters, parse_options, spec_of
from dmlrs.losses.snca import SNCALoss
from dmlrs.memory import MemoryBank


class Base(nn.Module):
    def __init__(self, mandatory, scale=1, name="base", **kwargs):
        super().__init__()


class Typed(Base):
    """Every kind of option, a context parameter and a **kwargs chain into Base."""

    def __init__(self, num_classes: int, steps: int = 3, rate: float = 0.5, flag: bool = False, mode: str = "a",
                 cap: "float | None" = None, loose=2, thing=None, **kwargs):
        super().__init__(mandatory=1, **kwargs)
        self.values = dict(num_classes=num_classes, steps=steps, rate=rate, flag=flag, mode=mode, cap=cap,
                           loose=loose, **kwargs)

    def forward(self, embeddings, labels, *, indices=None):
        return embeddings.sum() * 0


def test_options_are_typed_from_annotations_and_defaults_and_follow_kwargs_to_the_base():
    spec = spec_of("typed", Typed)
    assert spec.context == ("num_classes",) and spec.required_context == ("num_classes",)
    # thing=None has no type: not an option; Base's mandatory has no default: the subclass passes it
    assert list(spec.options) == ["steps", "rate", "flag", "mode", "cap", "loose", "scale", "name"]
    values = parse_options(spec, "steps=4, rate=1e-3,flag=yes,mode=b,cap=none,loose=2.5,scale=7,name=x")
    assert values == {"steps": 4, "rate": 0.001, "flag": True, "mode": "b", "cap": None, "loose": 2.5,
                      "scale": 7, "name": "x"}
    assert type(values["scale"]) is int and type(values["rate"]) is float
    assert parse_options(spec, "flag=0,cap=0.5,loose=3") == {"flag": False, "cap": 0.5, "loose": 3}
    assert parse_options(spec, None) == {} == parse_options(spec, "")


@pytest.mark.parametrize("text,message", [
    ("steps=2.5", "steps takes an integer, got '2.5'"),
    ("rate=fast", "rate takes a number, got 'fast'"),
    ("rate=nan", "rate takes a finite number"),
    ("flag=maybe", "flag takes true or false"),
    ("stepz=2", "typed has no option 'stepz'; it takes: steps=3 (int), rate=0.5 (float)"),
    ("num_classes=3", "no option 'num_classes' (filled in by the script)"),
    ("steps", "'steps' is not key=value"),
    ("steps=1,steps=2", "'steps' is given twice"),
])
def test_bad_options_are_one_line_naming_the_problem_and_the_valid_keys(text, message):
    with pytest.raises(DmlrsError) as info:
        parse_options(spec_of("typed", Typed), text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_required_simple_option_must_be_given():
    class Needs(nn.Module):
        def __init__(self, margin: float):
            super().__init__()

    with pytest.raises(DmlrsError, match=r"needs margin=\.\.\."):
        parse_options(spec_of("needs", Needs), "")


def test_registered_loss_gets_its_context(monkeypatch):
    monkeypatch.setitem(LOSSES, "typed", Typed)
    loss = LossChoice("typed", {"rate": 0.25}).build({"num_classes": 5, "dim": 8, "memory": object()})
    assert loss.values == {"num_classes": 5, "steps": 3, "rate": 0.25, "flag": False, "mode": "a", "cap": None,
                           "loose": 2}
    with pytest.raises(DmlrsError, match=r"typed needs num_classes \(the number of classes\), which SRL does not"):
        LossChoice("typed").build({"dim": 8}, where="SRL")
    monkeypatch.delitem(LOSSES, "typed")
    with pytest.raises(DmlrsError, match="unknown loss 'typed'"):
        LossChoice("typed").build({})


def test_snca_built_by_choice_is_the_snca_of_the_method():
    labels = torch.arange(10) % 2
    memory = MemoryBank(10, 4)
    loss = LossChoice("snca", {"temperature": 0.1}).build({"memory": memory, "memory_labels": labels})
    assert isinstance(loss, SNCALoss) and loss.memory is memory and loss.temperature == 0.1


@pytest.mark.parametrize("name,forward", [("bnm", "(logits)"), ("cdne", "(codes, labels, indices, logits)")])
def test_losses_that_take_more_than_embeddings_and_labels_cannot_replace_a_term(name, forward):
    with pytest.raises(DmlrsError, match=rf"'{name}' cannot replace a metric-learning term: its forward takes "
                                         rf"\({forward[1:-1]}\)"):
        resolve_loss(name)


def test_unknown_loss_suggests_close_names_and_pml():
    with pytest.raises(DmlrsError) as info:
        resolve_loss("norm_sofmax")
    text = str(info.value)
    assert "did you mean norm_softmax?" in text and "pml:ClassName" in text and "snca" in text


def test_a_required_parameter_that_cannot_be_text_makes_the_loss_unusable(monkeypatch):
    class Wraps(nn.Module):
        def __init__(self, inner, weight: float = 1.0):
            super().__init__()

        def forward(self, embeddings, labels, *, indices=None):
            return embeddings.sum()

    monkeypatch.setitem(LOSSES, "wraps", Wraps)
    with pytest.raises(DmlrsError, match="wraps needs inner, which cannot be given as text"):
        LossChoice("wraps").build({})


def test_part_name_is_a_plain_key():
    assert LossChoice("pml:TripletMarginLoss").part_name == "pml_TripletMarginLoss"
    assert LossChoice("snca").part_name == "snca"


def test_pml_proxy_loss_options_come_from_its_base_classes():
    spec = resolve_loss("pml:ProxyNCALoss")
    assert spec.required_context == ("num_classes", "embedding_size") and "softmax_scale" in spec.options
    assert [p.name for p in constructor_parameters(spec.cls)][:2] == ["num_classes", "embedding_size"]

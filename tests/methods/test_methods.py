"""Method modules combine their parts as the original code does: loss weights, forward passes,
BNM form, t-RNSL refresh schedule, CDNE codes. Each check recomputes the expected value itself."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmlrs.memory import MemoryBank
from dmlrs.methods.base import EpochContext
from dmlrs.methods.cdne import CDNE
from dmlrs.methods.mnce_bnm import MNCEBNM
from dmlrs.methods.snca_ce import SNCACE
from dmlrs.methods.trnsl import TRNSL
from dmlrs.models import build_model

NUM_CLASSES = 3


def tiny_model(dim=8, **kwargs):
    torch.manual_seed(0)
    return build_model("resnet18", dim, **kwargs)


def batch(n=6, seed=1, size=32):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, size, size, generator=g), "label": torch.arange(n) % NUM_CLASSES,
            "index": torch.arange(n)}


@pytest.mark.parametrize("lambda_", [0.0, 1.0, 2.5])
def test_snca_ce_lambda_weights_the_snca_term(lambda_):
    labels = torch.arange(12) % NUM_CLASSES
    method = SNCACE(tiny_model(num_classes=NUM_CLASSES), labels, lambda_=lambda_)
    out = method.training_step(batch())
    assert out["loss"].item() == pytest.approx(lambda_ * out["snca"].item() + out["ce"].item(), rel=1e-6)


@pytest.mark.parametrize("ce_weight", [0.0, 0.5])
def test_snca_ce_ce_weight_weights_the_cross_entropy_and_zero_is_snca_alone(ce_weight):
    labels = torch.arange(12) % NUM_CLASSES
    method = SNCACE(tiny_model(num_classes=NUM_CLASSES), labels, lambda_=1.5, ce_weight=ce_weight)
    out = method.training_step(batch())
    assert out["loss"].item() == pytest.approx(1.5 * out["snca"].item() + ce_weight * out["ce"].item(), rel=1e-6)
    out["loss"].backward()
    head_grad = method.model.classifier.fc.weight.grad
    assert (head_grad is None or not head_grad.any()) == (ce_weight == 0)  # SNCA alone: no gradient to the class head


def test_snca_ce_lambda_zero_is_the_plain_softmax_baseline():
    labels = torch.arange(12) % NUM_CLASSES
    method = SNCACE(tiny_model(num_classes=NUM_CLASSES), labels, lambda_=0.0)
    method.eval()  # fixed batch-norm statistics: the same logits twice
    b = batch()
    loss = method.training_step(b)["loss"]
    logits = method.model(b["image"])["logits"]
    assert loss.item() == pytest.approx(F.cross_entropy(logits, b["label"]).item(), rel=1e-6)


def test_cdne_codes_are_the_raw_linear_output_and_weights_default_to_one():
    labels = torch.arange(12) % NUM_CLASSES
    model = tiny_model(dim=16, num_classes=NUM_CLASSES)
    method = CDNE(model, labels)
    method.eval()
    b = batch()
    features = model.backbone(b["image"])
    raw = features @ model.projection.fc.weight.t() + model.projection.fc.bias
    codes = method.codes(b["image"])
    torch.testing.assert_close(codes, raw)
    assert codes.abs().max() > 1  # unbounded: no tanh
    out = method.training_step(b)
    expected = out["snca"] + out["ce"] + out["quant"]
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert out["quant"] == pytest.approx(((raw.abs() - 1) ** 2).mean().item(), rel=1e-5)


def test_cdne_lambda_weights_snca_only():
    labels = torch.arange(12) % NUM_CLASSES
    method = CDNE(tiny_model(dim=16, num_classes=NUM_CLASSES), labels, lambda_=3.0, quant_weight=0.5)
    out = method.training_step(batch())
    assert out["loss"].item() == pytest.approx(3 * out["snca"] + out["ce"] + 0.5 * out["quant"], rel=1e-6)


def original_bnm(cosines: np.ndarray) -> float:
    """-mean(svd(softmax(cos))) written out: softmax by loops, float64."""
    probs = np.zeros_like(cosines)
    for i, row in enumerate(cosines):
        exps = [math.exp(v) for v in row]
        probs[i] = [e / sum(exps) for e in exps]
    return -float(np.linalg.svd(probs, compute_uv=False).mean())


@pytest.mark.parametrize("form", ["original", "paper"])
def test_mnce_bnm_uses_the_label_free_bnm_form(form):
    model = tiny_model(standardize=True).double()
    method = MNCEBNM(model, NUM_CLASSES, bnm_form=form).double().eval()
    unlabelled = batch(n=5, seed=2)["image"].double()
    embeddings = model(unlabelled)["embedding"].double()
    prototypes = F.normalize(method.mnce.prototypes.detach(), dim=1)
    cosines = (embeddings @ prototypes.t()).detach().numpy()
    value = method.bnm(method.bnm_logits(embeddings)).item()
    if form == "original":
        assert value == pytest.approx(original_bnm(cosines), rel=1e-6)
    else:
        singular = np.linalg.svd(torch.softmax(torch.tensor(cosines) / 0.05, dim=1).numpy(), compute_uv=False)
        assert value == pytest.approx(-singular.sum() / 5, rel=1e-6)


def test_mnce_bnm_forwards_labelled_and_unlabelled_batches_separately():
    """Batch norm in train mode normalises each batch with its own statistics, as the original."""
    model = tiny_model(standardize=True)
    method = MNCEBNM(model, NUM_CLASSES)
    method.train()
    labelled, unlabelled = batch(n=6, seed=3), batch(n=4, seed=4)["image"] * 3 + 1
    seen = []
    hook = model.backbone.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    out = method.training_step({**labelled, "unlabelled": unlabelled})
    hook.remove()
    assert seen == [6, 4]
    torch.manual_seed(0)
    alone = MNCEBNM(tiny_model(standardize=True), NUM_CLASSES)
    alone.load_state_dict(method.state_dict())
    assert out["mnce"].item() == pytest.approx(alone.training_step(labelled)["mnce"].item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(out["mnce"].item() + out["bnm"].item(), rel=1e-6)


def test_trnsl_refreshes_before_epochs_40_50_to_130_counted_from_1():
    method = TRNSL(tiny_model(), NUM_CLASSES, list(range(6)))
    refreshed = [epoch for epoch in range(130) if method.is_prune_epoch(epoch)]
    assert refreshed == [39, 49, 59, 69, 79, 89, 99, 109, 119, 129]  # 0-based: ten refreshes
    method = TRNSL(tiny_model(), NUM_CLASSES, list(range(6)), start_prune=45, prune_every=10)
    assert [e + 1 for e in range(130) if method.is_prune_epoch(e)] == [50, 60, 70, 80, 90, 100, 110, 120, 130]


def test_trnsl_refresh_embeds_the_given_dataset_and_sets_weights_from_p_y():
    dataset = object()
    method = TRNSL(tiny_model(), NUM_CLASSES, [0] * 6, k=0.5)
    calls = []
    embeddings = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(5)), dim=1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])

    def extract(ds):
        calls.append(ds)
        return embeddings, labels, torch.arange(6)

    method.refresh_dataset = dataset
    method.on_epoch_start(EpochContext(38, extract))
    assert calls == []  # epoch 39 (1-based) is not a refresh epoch
    method.on_epoch_start(EpochContext(39, extract))
    assert calls == [dataset]
    probs = torch.softmax(method.rnsl.logits(embeddings), dim=1)[torch.arange(6), labels]
    assert torch.equal(method.rnsl.weights, (probs > 0.5).float())


# ------------------------------------------------------------------ what each step writes, and when
def test_snca_ce_mb_writes_the_memory_after_the_optimizer_step_by_momentum_averaging():
    labels = torch.arange(12) % NUM_CLASSES
    method = SNCACE(tiny_model(num_classes=NUM_CLASSES), labels, memory_momentum=0.5).eval()
    b = batch()
    before = method.writer.memory.slots.clone()
    out = method.training_step(b)
    assert set(out) == {"loss", "snca", "ce"}
    assert torch.equal(method.writer.memory.slots, before)  # nothing written during the step
    embeddings = method.model(b["image"])["embedding"].detach()
    method.after_optimizer_step()
    slots = method.writer.memory.slots
    expected = F.normalize(0.5 * before[b["index"]] + 0.5 * embeddings, dim=1)
    torch.testing.assert_close(slots[b["index"]], expected, atol=1e-5, rtol=1e-5)
    untouched = torch.ones(12, dtype=torch.bool)
    untouched[b["index"]] = False
    assert torch.equal(slots[untouched], before[untouched])
    method.after_optimizer_step()  # written once per step: a second call changes nothing
    assert torch.equal(method.writer.memory.slots, slots)


def test_snca_ce_mu_advances_the_ema_before_encoding_and_replaces_slots_with_its_keys():
    labels = torch.arange(12) % NUM_CLASSES
    method = SNCACE(tiny_model(num_classes=NUM_CLASSES), labels, memory_mode="momentum", ema_decay=0.5)
    ema = method.writer.ema
    with torch.no_grad():
        for p in method.model.parameters():
            p.add_(0.01)  # the online model moved since the copy was made
    old = [q.clone() for q in ema.module.parameters()]
    b = batch()
    out = method.training_step(b)
    assert set(out) == {"loss", "snca", "ce"}
    for q, q_old, p in zip(ema.module.parameters(), old, method.model.parameters()):
        torch.testing.assert_close(q, 0.5 * q_old + 0.5 * p.detach())  # EMA step first ...
    keys = F.normalize(ema(b["image"])["embedding"], dim=1)  # ... then the keys of this batch
    method.after_optimizer_step()
    torch.testing.assert_close(method.writer.memory.slots[b["index"]], keys, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("memory_mode", ["bank", "momentum"])
def test_cdne_memory_holds_normalised_codes(memory_mode):
    labels = torch.arange(12) % NUM_CLASSES
    method = CDNE(tiny_model(dim=16, num_classes=NUM_CLASSES), labels, memory_mode=memory_mode,
                  memory_momentum=0.0).eval()
    b = batch()
    out = method.training_step(b)
    assert set(out) == {"loss", "snca", "ce", "quant", "cdne"}
    source = method.writer.ema if memory_mode == "momentum" else method.model
    codes = source(b["image"])["features"].detach()
    method.after_optimizer_step()
    torch.testing.assert_close(method.writer.memory.slots[b["index"]], F.normalize(codes, dim=1),
                               atol=1e-5, rtol=1e-5)


def test_mnce_bnm_and_trnsl_and_srl_steps_name_their_losses_and_write_no_state():
    method = MNCEBNM(tiny_model(standardize=True), NUM_CLASSES)
    state = {k: v.clone() for k, v in method.state_dict().items()}
    out = method.training_step({**batch(), "unlabelled": batch(seed=6)["image"]})
    assert set(out) == {"loss", "mnce", "bnm"}
    method.after_optimizer_step()
    assert all(torch.equal(v, method.state_dict()[k]) for k, v in state.items() if "running" not in k
               and "num_batches" not in k)

    trnsl = TRNSL(tiny_model(), NUM_CLASSES, [0] * 12)
    weights = trnsl.rnsl.weights.clone()
    assert set(trnsl.training_step(batch())) == {"loss", "rnsl"}
    assert torch.equal(trnsl.rnsl.weights, weights)  # only the refresh changes them

    from dmlrs.data.samplers import ClassBalancedBatchSampler
    from dmlrs.methods.srl import SRL

    srl = SRL(tiny_model(), classes_per_batch=2, images_per_class=3)
    assert set(srl.training_step(batch())) == {"loss", "srl_pos", "srl_neg", "hard_pos_frac", "hard_neg_frac"}
    sampler = srl.batch_sampler(torch.arange(12) % NUM_CLASSES, 64, seed=0)
    assert isinstance(sampler, ClassBalancedBatchSampler)
    assert all(len(b) == 6 for b in sampler)


def test_training_steps_return_detached_tensors_and_input_checks_can_be_switched(monkeypatch):
    """Loss parts stay on the device (the engine reads them once per log interval); the losses'
    host-side input checks follow ``Method.set_input_checks``."""
    from dmlrs.methods.srl import SRL

    labels = torch.arange(12) % NUM_CLASSES
    methods = [SNCACE(tiny_model(num_classes=NUM_CLASSES), labels), CDNE(tiny_model(dim=16, num_classes=NUM_CLASSES),
               labels), MNCEBNM(tiny_model(), NUM_CLASSES), TRNSL(tiny_model(), NUM_CLASSES, [0] * 12),
               SRL(tiny_model(), classes_per_batch=2, images_per_class=3)]
    for method in methods:
        out = method.training_step({**batch(), "unlabelled": batch(seed=6)["image"]})
        assert out["loss"].requires_grad, method.name
        for key, value in out.items():
            assert torch.is_tensor(value) and value.dim() == 0, (method.name, key)
            assert key == "loss" or not value.requires_grad, (method.name, key)
    def switches(method):
        return [m.validate for m in method.modules() if isinstance(getattr(m, "validate", None), bool)]

    trnsl, mnce = methods[3], methods[2]
    for method in (trnsl, mnce):
        assert switches(method) == [True]
        method.set_input_checks(False)
        assert switches(method) == [False]
    reads = []
    real_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(1) or real_tolist(self))
    trnsl.training_step(batch())
    assert reads == []
    trnsl.set_input_checks(True)
    trnsl.training_step(batch())
    assert reads == [1]

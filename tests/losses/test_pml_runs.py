"""pytorch-metric-learning losses through the scripts: train, checkpoint, resume exactly; proxies
are optimised, checkpointed and restored."""
import json

import pytest
import torch

from tests.engine.scripts import only_run_dir, read_json, run_script, tiny_folder
from tests.engine.test_resume import argv_for, sigint_after_first_epoch

SHORT = ["--epochs", "2"]  # after argv_for's --epochs 3: stop after epoch 1, resume epoch 2
TRIPLET = [*SHORT, "--loss", "pml:TripletMarginLoss", "--loss-args", "margin=0.2", "--miner", "pml:TripletMarginMiner",
           "--miner-args", "margin=0.5,type_of_triplets=all"]
PROXIES = [*SHORT, "--loss", "pml:ProxyNCALoss", "--classes-per-batch", "2", "--images-per-class", "4"]
PROXY_KEY = "metric_loss.loss.proxies"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("data"))


def straight_and_resumed(name, scenes, tmp_path, monkeypatch, extra):
    """(run folder of an uninterrupted run, of a run stopped after epoch 1 and resumed, last.pt of
    the stopped run before it resumed)."""
    straight = tmp_path / "straight"
    assert run_script(name, argv_for(scenes, straight, *extra)) == 0
    resumed = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        sigint_after_first_epoch(patch)
        assert run_script(name, argv_for(scenes, resumed, *extra)) == 130
    run_dir = only_run_dir(resumed)
    stopped = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert stopped["epoch"] == 1
    assert run_script(name, argv_for(scenes, resumed, *extra, "--resume", "auto")) == 0
    assert only_run_dir(resumed) == run_dir
    return only_run_dir(straight), run_dir, stopped


def epochs(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "images_per_second"} for row in rows]


def test_triplet_with_miner_trains_checkpoints_and_resumes_exactly(scenes, tmp_path, monkeypatch):
    straight, resumed, _ = straight_and_resumed("SNCA_CE", scenes, tmp_path, monkeypatch, TRIPLET)
    assert read_json(resumed / "test_metrics.json") == read_json(straight / "test_metrics.json")
    assert epochs(resumed) == epochs(straight)
    train = epochs(straight)[0]["train"]
    assert set(train) == {"loss", "pml_TripletMarginLoss", "ce", "mined_tuples"} and train["mined_tuples"] > 0
    assert train["loss"] == pytest.approx(train["pml_TripletMarginLoss"] + train["ce"], rel=1e-5)
    config = read_json(resumed / "config.json")["args"]
    assert (config["loss"], config["miner"]) == ("pml:TripletMarginLoss", "pml:TripletMarginMiner")


def test_proxy_nca_proxies_are_optimised_checkpointed_and_restored(scenes, tmp_path, monkeypatch):
    straight, resumed, stopped = straight_and_resumed("SRL", scenes, tmp_path, monkeypatch, PROXIES)
    final = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)["method"][PROXY_KEY]
    reference = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)["method"][PROXY_KEY]
    assert final.shape == (4, 16)  # 4 classes (from the data) x --dim 16, filled in automatically
    assert torch.equal(final, reference)  # the resumed run continued from the saved proxies, bit for bit
    after_epoch_1 = stopped["method"][PROXY_KEY]
    assert not torch.equal(after_epoch_1, final)  # epoch 2 moved them: they are optimised
    assert read_json(resumed / "test_metrics.json") == read_json(straight / "test_metrics.json")
    assert "pml_ProxyNCALoss" in epochs(straight)[0]["train"]

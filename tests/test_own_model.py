"""A user's own model, data pipeline, loss, trained weights and device."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, TensorDataset

import miracle
from miracle.batches import evaluate
from miracle.compress import build_trainer
from miracle.config import CompressConfig
from miracle.data import Split
from miracle.errors import InvalidInput, MiracleError
from miracle.models import load_weights
from miracle.training import load_checkpoint
from miracle.variational import select_parameters

from conftest import run_cli
from own_models import Regressor, SmallCNN, TinyGRU, TinyTransformer, regression_data, token_data

SMALL = dict(index_budget="0.2KB", bits_per_block=10, steps=40, batch_size=50, blocks_per_group=80, retrain_steps=2)


def _seeded(cls, seed=0, **kwargs):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**kwargs)


@pytest.fixture(scope="module")
def small_split(mnist_train):
    return Split(mnist_train.images[:2000], mnist_train.labels[:2000])


def test_a_dataset_trains_exactly_as_the_same_examples_in_a_split(tmp_path, small_split):
    as_split = miracle.compress(_seeded(SmallCNN), small_split, out=tmp_path / "split.mrc", progress=False, **SMALL)
    dataset = TensorDataset(small_split.images, small_split.labels)
    as_dataset = miracle.compress(_seeded(SmallCNN), dataset, out=tmp_path / "dataset.mrc", progress=False, **SMALL)
    assert as_dataset.size_bytes == as_split.size_bytes
    assert (tmp_path / "dataset.mrc").read_bytes() == (tmp_path / "split.mrc").read_bytes()


def _loader(data, seed=5):
    # One process: a DistributedSampler of one replica is a seeded shuffle with set_epoch.
    return DataLoader(data, batch_size=25, sampler=DistributedSampler(data, num_replicas=1, rank=0, seed=seed))


def test_a_dataloader_run_resumes_exactly_like_an_uninterrupted_one(tmp_path):
    data = regression_data(300, seed=0)  # 12 batches a pass: the run crosses passes
    config = CompressConfig(index_budget="0.2KB", bits_per_block=10, steps=30, checkpoint_every=10, seed=2)

    def trainer(folder):
        return build_trainer(_seeded(Regressor), _loader(data), config, tmp_path / folder,
                             loss_fn=nn.functional.mse_loss)

    whole = trainer("whole")
    whole.run(progress=False)
    (tmp_path / "cut").mkdir()
    trainer("cut").train_until(25, progress=False)  # dies at step 25: the checkpoint of step 20 survives
    resumed = trainer("cut")
    resumed.run(progress=False)
    assert resumed.step == 30 and resumed.num_examples == 300
    for (name, a), (_, b) in zip(whole.vmodel.state_dict().items(), resumed.vmodel.state_dict().items()):
        assert torch.equal(a, b), name


class _Stream(IterableDataset):
    def __iter__(self):
        data = regression_data(100, seed=1)
        return iter(zip(data.tensors[0], data.tensors[1]))


def test_an_iterable_without_a_length_needs_num_examples(tmp_path):
    config = CompressConfig(index_budget="0.2KB", bits_per_block=10, steps=3, batch_size=10)
    loader = DataLoader(_Stream(), batch_size=10)
    with pytest.raises(InvalidInput, match="pass num_examples=N"):
        build_trainer(_seeded(Regressor), loader, config, None, loss_fn=nn.functional.mse_loss)
    with pytest.raises(InvalidInput, match="map-style Dataset"):
        build_trainer(_seeded(Regressor), _Stream(), config, None, loss_fn=nn.functional.mse_loss)
    trainer = build_trainer(_seeded(Regressor), loader, config, None, loss_fn=nn.functional.mse_loss,
                            num_examples=100)
    trainer.run(progress=False)
    assert trainer.step == 3 and trainer.num_examples == 100


def test_a_loss_that_is_not_a_scalar_is_refused(tmp_path):
    config = CompressConfig(index_budget="0.2KB", bits_per_block=10, steps=2, batch_size=10)
    trainer = build_trainer(_seeded(Regressor), regression_data(100, 0), config, None,
                            loss_fn=lambda outputs, targets: (outputs - targets) ** 2)
    with pytest.raises(InvalidInput, match="mean loss of the batch"):
        trainer.run(progress=False)


def test_a_regression_model_is_compressed_with_its_loss_and_restored(tmp_path):
    train, test = regression_data(2000, seed=0), regression_data(500, seed=1)
    mse = nn.functional.mse_loss
    result = miracle.compress(_seeded(Regressor), train, "0.4KB", tmp_path / "reg.mrc", loss_fn=mse, test_data=None,
                              device="cpu", steps=600, batch_size=100, lr=1e-2, blocks_per_group=50, retrain_steps=20,
                              progress=False)
    assert result.size_bytes == (tmp_path / "reg.mrc").stat().st_size <= 400
    restored = miracle.decompress(tmp_path / "reg.mrc", _seeded(Regressor, seed=9))
    decoded = result.decoded_model()
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), decoded.state_dict().values()))
    baseline = float(test.tensors[1].var())  # predicting the mean
    error = evaluate(restored, test, mse)
    assert error < 0.3 * baseline, (error, baseline)
    with pytest.raises(InvalidInput, match="user-defined model"):
        miracle.decompress(tmp_path / "reg.mrc")  # nothing in the file says which code to run


def test_the_default_codes_attention_embeddings_and_recurrent_weights_not_normalisation():
    transformer = select_parameters(TinyTransformer())
    assert {"embedding.weight", "encoder.self_attn.in_proj_weight", "encoder.self_attn.in_proj_bias",
            "encoder.self_attn.out_proj.weight", "encoder.linear1.weight", "encoder.linear2.weight",
            "head.weight"} <= set(transformer)
    assert not any(".norm" in name for name in transformer)
    gru = select_parameters(TinyGRU())
    assert {"gru.weight_ih_l0", "gru.weight_hh_l0", "gru.bias_ih_l0", "gru.bias_hh_l0", "head.weight"} <= set(gru)
    assert "temperature" not in gru


def test_a_transformer_asked_for_1kb_writes_at_most_1kb(tmp_path):
    model = _seeded(TinyTransformer)
    result = miracle.compress(model, token_data(500, seed=0), "1KB", tmp_path / "t.mrc", steps=5, batch_size=50,
                              blocks_per_group=200, retrain_steps=1, progress=False)
    assert result.size_bytes <= 1000
    # What travels uncoded is the normalisation layers' few parameters, and the file says so.
    assert set(result.uncoded_bytes) == {f"encoder.norm{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}
    assert sum(result.uncoded_bytes.values()) == 4 * 16 * 4


@pytest.mark.parametrize("device, message", [("tpu", "unknown device"), ("cuda:7", "not available|does not exist")])
def test_an_unusable_device_is_refused_before_any_work(tmp_path, device, message):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(InvalidInput, match=message):
        miracle.compress(Regressor(), regression_data(200, 0), "0.4KB", tmp_path / "x.mrc", device=device,
                         loss_fn=nn.functional.mse_loss, progress=False)
    assert not (tmp_path / "x.mrc").exists()


@pytest.mark.parametrize("param", ["mean-var", "mean-kl"])
def test_trained_weights_are_where_the_posterior_starts(tmp_path, param):
    trained = _seeded(SmallCNN, seed=7)
    torch.save(trained.state_dict(), tmp_path / "weights.pt")
    model = load_weights(_seeded(SmallCNN, seed=0), tmp_path / "weights.pt")
    config = CompressConfig(index_budget="0.2KB", bits_per_block=10, group_sizes={}, param=param)
    trainer = build_trainer(model, Split(torch.zeros(200, 1, 28, 28), torch.zeros(200, dtype=torch.long)),
                            config, None)
    start = trainer.vmodel.export(use_mean=True)
    coded = set(trainer.vmodel.layout.names)
    for (name, a), (_, b) in zip(start.state_dict().items(), trained.state_dict().items()):
        if param == "mean-var" or name not in coded:
            assert torch.allclose(a, b, atol=1e-6), name
        else:  # Mean-KL's mean is shrunk towards the prior as far as the block's KL requires
            assert nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), 0) > 0.9, name


class _Marker:
    """Unpickling this would create a file: what a checkpoint or weights file must never do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_files_that_would_run_code_are_refused(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"identity": _Marker(marker), "vmodel": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(MiracleError, match="not a miracle checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    torch.save({"fc1.weight": _Marker(marker)}, tmp_path / "weights.pt")
    with pytest.raises(InvalidInput, match="not a state_dict"):
        load_weights(SmallCNN(), tmp_path / "weights.pt")
    assert not marker.exists()


def test_weights_of_another_model_name_what_does_not_fit(tmp_path):
    torch.save(SmallCNN(hidden=12).state_dict(), tmp_path / "weights.pt")
    with pytest.raises(InvalidInput, match="other shapes: fc1.bias"):
        load_weights(SmallCNN(), tmp_path / "weights.pt")
    torch.save({"w": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(InvalidInput, match="missing: conv.bias.*unexpected: w"):
        load_weights(SmallCNN(), tmp_path / "other.pt")


TESTS = str(__import__("pathlib").Path(__file__).resolve().parent)
OWN = ["--model", "own_models:SmallCNN", "--model-args", '{"hidden": 12}']
TINY_RUN = ["--dataset", "mnist", "--index-budget", "100B", "--bits-per-block", "8", "--steps", "3",
            "--retrain-steps", "1", "--blocks-per-group", "50", "--quiet", "--threads", "1"]


def test_the_command_line_compresses_a_users_class_from_its_trained_weights(tmp_path, mnist_root):
    env = {"MIRACLE_DATA": str(mnist_root), "PYTHONPATH": TESTS}
    torch.save(_seeded(SmallCNN, seed=3, hidden=12).state_dict(), tmp_path / "weights.pt")
    out = str(tmp_path / "own.mrc")
    result = run_cli("compress", *OWN, "--init-from", str(tmp_path / "weights.pt"), "--device", "cpu", *TINY_RUN,
                     "-o", out, "--json", env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["model"] == "own_models:SmallCNN" and summary["size_bytes"] == (tmp_path / "own.mrc").stat().st_size
    assert set(summary["uncoded_bytes"]) == {"norm.weight", "norm.bias", "norm.running_mean", "norm.running_var"}

    refused = run_cli("evaluate", out, "--dataset", "mnist", env=env)
    assert refused.returncode == 2 and "--model package.module:ClassName" in refused.stderr
    assert "own_models:SmallCNN" in refused.stderr and "Traceback" not in refused.stderr
    evaluated = run_cli("evaluate", out, *OWN, "--dataset", "mnist", "--json", env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test_error"] == summary["test_error"]
    other = run_cli("evaluate", out, "--model", "own_models:SmallCNN", "--dataset", "mnist", env=env)
    assert other.returncode == 2 and "another architecture" in other.stderr


@pytest.mark.parametrize("arguments, message", [
    (["--model", "no_such_package:Net"], "cannot import no_such_package"),
    (["--model", ".relative:Net"], "names no importable module"),
    (["--model", ":Net"], "names no importable module"),
    (["--model", "own_models:NoSuchNet"], "own_models has no class NoSuchNet"),
    (["--model", "own_models:SmallCNN", "--model-args", "{hidden: 3}"], "--model-args is not valid JSON"),
    (["--model", "own_models:SmallCNN", "--model-args", '{"depth": 3}'], "check --model-args"),
    (["--model", "lenet5", "--model-args", '{"depth": 3}'], "registered model lenet5 takes none"),
    (["--model", "own_models:SmallCNN", "--init-from", "{weights}"], "does not fit the model"),
    (["--model", "own_models:SmallCNN", "--init-from", "{module}"], "not a state_dict"),
    (["--model", "own_models:SmallCNN", "--device", "tpu"], "unknown device"),
])
def test_bad_model_options_are_one_line(tmp_path, mnist_root, arguments, message):
    torch.save(SmallCNN(hidden=12).state_dict(), tmp_path / "weights.pt")
    torch.save(SmallCNN(), tmp_path / "module.pt")  # a whole pickled module, not a state_dict
    paths = {"{weights}": str(tmp_path / "weights.pt"), "{module}": str(tmp_path / "module.pt")}
    arguments = [paths.get(a, a) for a in arguments]
    result = run_cli("compress", *arguments, *TINY_RUN, "-o", str(tmp_path / "x.mrc"),
                     env={"MIRACLE_DATA": str(mnist_root), "PYTHONPATH": TESTS})
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.mrc").exists()

import json

import pytest
import torch
from torch import nn

from miracle.data import Split
from miracle.errors import InvalidInput
from miracle.models import create_model, get_model_spec
from miracle.training import TrainConfig, Trainer, TrainingDiverged
from miracle.variational import VariationalConfig, VariationalModel


def _vmodel(param, budget_bits=12000, seed=0, **options):
    torch.manual_seed(0)  # only the model's own default init; every run choice takes a seed
    config = VariationalConfig(budget_bits=budget_bits, param=param, group_sizes=get_model_spec("lenet5").group_sizes,
                               hash_seed=seed, partition_seed=seed, **options)
    return VariationalModel(create_model("lenet5"), config)


@pytest.mark.parametrize("param", ["mean-kl", "mean-var"])
def test_short_run_on_real_mnist_lowers_the_loss(param, mnist_train, tmp_path):
    trainer = Trainer(_vmodel(param), mnist_train, TrainConfig(steps=200, batch_size=32, block_kl_every=20, lr_schedule="constant"), tmp_path)
    trainer.run(progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 200
    first, last = records[:20], records[-20:]
    assert sum(r["nll"] for r in last) < 0.8 * sum(r["nll"] for r in first)
    if param == "mean-kl":
        # every block costs exactly its budget at every step
        for r in records:
            assert abs(r["kl_bits_per_block_min"] - 16) < 1e-3 and abs(r["kl_bits_per_block_max"] - 16) < 1e-3
        assert all(abs(v - 16) < 1e-3 for v in records[19]["kl_bits_per_block"])


@pytest.mark.parametrize("random_shift_px", [0, 2])
def test_resume_continues_exactly_like_an_uninterrupted_run(mnist_train, tmp_path, random_shift_px):
    small = Split(mnist_train.images[:600], mnist_train.labels[:600])
    config = dict(batch_size=20, checkpoint_every=10, seed=3, random_shift_px=random_shift_px)
    whole = Trainer(_vmodel("mean-var"), small, TrainConfig(steps=30, **config), tmp_path / "a")
    whole.run(progress=False)
    interrupted = Trainer(_vmodel("mean-var"), small, TrainConfig(steps=30, **config), tmp_path / "b")
    (tmp_path / "b").mkdir()
    interrupted.train_until(25, progress=False)  # dies at step 25: the checkpoint of step 20 survives
    resumed = Trainer(_vmodel("mean-var"), small, TrainConfig(steps=30, **config), tmp_path / "b")
    resumed.run(progress=False)
    assert resumed.step == 30
    for (name, a), (_, b) in zip(whole.vmodel.state_dict().items(), resumed.vmodel.state_dict().items()):
        assert torch.equal(a, b), name
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 31))


def test_a_run_folder_of_other_settings_is_refused(mnist_train, tmp_path):
    small = Split(mnist_train.images[:500], mnist_train.labels[:500])
    Trainer(_vmodel("mean-kl"), small, TrainConfig(steps=2, batch_size=50), tmp_path).run(progress=False)
    with pytest.raises(Exception, match="other settings"):
        Trainer(_vmodel("mean-kl", budget_bits=4000), small, TrainConfig(steps=4, batch_size=50), tmp_path).run(progress=False)


class _Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) * float("nan")


def test_nan_stops_training_with_a_clear_error():
    data = Split(torch.rand(100, 1, 28, 28), torch.randint(0, 10, (100,), generator=torch.Generator().manual_seed(0)))
    vmodel = VariationalModel(_Exploding(), VariationalConfig(budget_bits=500))
    with pytest.raises(TrainingDiverged, match="diverged at step 0.*learning rate"):
        Trainer(vmodel, data, TrainConfig(steps=3, batch_size=10)).run(progress=False)


def test_kl_annealing_narrows_the_budget_geometrically_to_the_real_one(mnist_train):
    config = TrainConfig(steps=30, kl_anneal_from=8.0, kl_anneal_steps=20)
    assert config.budget_scale(0) == 8.0
    assert config.budget_scale(10) == pytest.approx(8.0 ** 0.5)
    assert config.budget_scale(20) == config.budget_scale(29) == 1.0
    small = Split(mnist_train.images[:600], mnist_train.labels[:600])
    trainer = Trainer(_vmodel("mean-kl"), small, TrainConfig(steps=30, batch_size=20, kl_anneal_from=8.0, kl_anneal_steps=20))
    records = [trainer.train_step() for _ in range(30)]
    assert records[0]["kl_bits_total"] == pytest.approx(8 * 12000, rel=1e-6)
    assert records[25]["kl_bits_total"] == pytest.approx(12000, rel=1e-6)  # coding sees the real budget
    assert trainer.vmodel.kl_summary()["kl_bits_per_block_max"] == pytest.approx(16, abs=1e-3)
    for bad in (dict(kl_anneal_from=0.5), dict(kl_anneal_steps=30), dict(weight_samples=0), dict(weight_samples=129)):
        with pytest.raises(Exception, match="annealing|weight samples"):
            TrainConfig(steps=30, **bad)


def test_each_part_of_the_batch_sees_its_own_weight_sample(mnist_train):
    """With two weight samples, the loss is the mean of the two half-batches' losses, each
    under its own seeded weight sample."""
    from miracle.randomness import derived_generator as _derived_generator

    small = Split(mnist_train.images[:200], mnist_train.labels[:200])
    trainer = Trainer(_vmodel("mean-kl"), small, TrainConfig(steps=5, batch_size=20, weight_samples=2, seed=4))
    by_hand = _vmodel("mean-kl")
    index = torch.randperm(200, generator=_derived_generator(4, 1, 0))[:20]
    images, labels = small.images[index], small.labels[index]
    nll = sum(
        nn.functional.cross_entropy(by_hand(images[part], generator=_derived_generator(4, 2, 0, *extra)), labels[part])
        for part, extra in ((slice(0, 10), ()), (slice(10, 20), (1,)))
    ) / 2
    nll.backward()
    record = trainer.train_step()
    assert record["nll"] == pytest.approx(nll.item(), rel=1e-5)
    one_sample = Trainer(_vmodel("mean-kl"), small, TrainConfig(steps=5, batch_size=20, seed=4)).train_step()
    assert one_sample["nll"] != pytest.approx(record["nll"], rel=1e-5)


def test_a_checkpoint_from_before_a_new_training_setting_still_resumes(mnist_train, tmp_path):
    small = Split(mnist_train.images[:500], mnist_train.labels[:500])
    # Checkpoints stopped omitting the means' share before its default changed from 0.95.
    Trainer(_vmodel("mean-kl", mean_share=0.95), small, TrainConfig(steps=2, batch_size=50), tmp_path).run(progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    for added_later in ("weight_samples", "kl_anneal_from", "kl_anneal_steps", "precision"):
        del state["identity"]["train"][added_later]
    del state["identity"]["variational"]["mean_share"]
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(Exception, match="other settings"):  # trained at 0.95, not today's default
        Trainer(_vmodel("mean-kl"), small, TrainConfig(steps=4, batch_size=50), tmp_path).run(progress=False)
    resumed = Trainer(_vmodel("mean-kl", mean_share=0.95), small, TrainConfig(steps=4, batch_size=50), tmp_path)
    resumed.run(progress=False)
    assert resumed.step == 4
    with pytest.raises(Exception, match="other settings"):  # a setting that differs is still refused
        Trainer(_vmodel("mean-kl", mean_share=0.95), small, TrainConfig(steps=6, batch_size=50, weight_samples=2),
                tmp_path).run(progress=False)


def test_bfloat16_runs_the_network_in_bfloat16_and_keeps_the_rest_in_float32(mnist_train):
    small = Split(mnist_train.images[:200], mnist_train.labels[:200])
    steps = {}
    for precision in ("float32", "bfloat16"):
        trainer = Trainer(_vmodel("mean-kl"), small, TrainConfig(steps=5, batch_size=20, precision=precision))
        dtypes = []
        trainer.vmodel.model.conv2.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
        steps[precision] = trainer.train_step()
        assert dtypes == [getattr(torch, precision)]
        assert {p.dtype for p in trainer.vmodel.parameters()} == {torch.float32}
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in trainer.vmodel.parameters())
    # The same batch and weight sample, rounded differently: close, not equal.
    assert steps["bfloat16"]["nll"] == pytest.approx(steps["float32"]["nll"], rel=0.02)
    assert steps["bfloat16"]["nll"] != steps["float32"]["nll"]
    assert steps["bfloat16"]["kl_bits_total"] == pytest.approx(steps["float32"]["kl_bits_total"], rel=1e-6)
    with pytest.raises(InvalidInput, match="unknown precision 'float16'; choose float32 or bfloat16"):
        TrainConfig(precision="float16")


def test_random_shifts_change_the_batches_training_sees(mnist_train):
    small = Split(mnist_train.images[:200], mnist_train.labels[:200])
    weights = {}
    for px in (0, 2):
        trainer = Trainer(_vmodel("mean-kl"), small, TrainConfig(steps=3, batch_size=20, random_shift_px=px))
        trainer.run(progress=False)
        weights[px] = torch.cat([p.detach().flatten() for p in trainer.vmodel.parameters()])
    assert not torch.equal(weights[0], weights[2])

"""One data-parallel compression of a small regression model, for ``torchrun`` (the tests'
two-process run): ``torchrun --standalone --nproc-per-node 2 distributed_run.py OUT [STOP]``.

Every rank saves the network it holds after coding; with STOP the run trains to that step
and exits, as a crash would."""

import sys
from pathlib import Path

import torch
from torch import nn

import miracle
from miracle import distributed
from miracle.compress import build_trainer, work_dir_for
from miracle.config import CompressConfig

from own_models import Regressor, regression_data

OPTIONS = dict(budget="0.4KB", steps=40, batch_size=50, checkpoint_every=10, blocks_per_group=50, retrain_steps=5,
               seed=1)


def main() -> None:
    out, stop = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Regressor()
    data, mse = regression_data(400, seed=0), nn.functional.mse_loss
    out.mkdir(parents=True, exist_ok=True)
    file = out / "run.mrc"
    try:
        if stop is not None:
            work_dir_for(file).mkdir(parents=True, exist_ok=True)
            build_trainer(model, data, CompressConfig(**OPTIONS), work_dir_for(file), loss_fn=mse).train_until(
                stop, progress=False)
            return
        result = miracle.compress(model, data, out=file, loss_fn=mse, progress=False, **OPTIONS)
        rank = distributed.rank()
        torch.save(result.decoded_model().state_dict(), out / f"decoded-rank{rank}.pt")
        torch.save(result.vmodel.state_dict(), out / f"posterior-rank{rank}.pt")
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()

"""What the ranks share after a batch's backward passes: the negative memory and the gradients;
then the SGD step (``trainWeakly``'s update, averaged over violating triplets)."""

from __future__ import annotations

import numpy as np
import torch

from netvlad.train import dist as D
from netvlad.train.state import RunState


def share_memory(run: RunState, batch_rows: np.ndarray, mined: dict) -> None:
    """Update the negative memory of the batch's queries; each rank owns its queries' rows and the
    ranks share them (a sum of rows shifted by +1, so that an absent entry is 0)."""
    n_cache = run.cfg.n_neg_cache
    mem_rows = torch.zeros((len(batch_rows), n_cache), dtype=torch.int64)
    for j, r in enumerate(batch_rows):
        if j % run.world == run.rank:
            row = mined.get(int(r), run.memory.row(int(run.train_q[r])))
            mem_rows[j, : len(row)] = torch.as_tensor(row[:n_cache]) + 1
    mem_rows = D.all_reduce_sum(mem_rows) - 1
    run.memory.update(
        {int(run.train_q[r]): mem_rows[j][mem_rows[j] >= 0].numpy() for j, r in enumerate(batch_rows)}
    )


def sgd_step(run: RunState, n_trip: float) -> None:
    """Gradients summed over ranks and divided by the batch's triplet count; no step without one."""
    D.all_reduce_grads(run.params)
    if n_trip > 0:
        with torch.no_grad():
            for p in run.params:
                if p.grad is not None:
                    p.grad.div_(n_trip)
        run.opt.step()
    run.opt.zero_grad(set_to_none=True)

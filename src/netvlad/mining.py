"""Hard-negative mining on cached descriptors (``trainWeakly``'s per-query steps 1–6).

Pure functions: descriptors and index arrays in, index tuples out. The dataset is only asked
for geometry (non-trivial positives, random negatives) by the caller, so mining can be tested
against a naive loop and reused on any feature cache (float16, PCA-reduced, on GPU).

Per query, faithful to the MATLAB code:

1. no non-trivial positive (1 m < d ≤ 10 m) → skipped (counted, no images loaded);
2. best positive = the non-trivial positive nearest in cached feature space (first on ties);
3. negative pool = sorted ``unique(memory ∪ nNegChoice random negatives beyond 25 m)``;
4. the ``min(10·nNegCap, |pool|)`` nearest pool members, ascending (stable: lower id first);
5. the memory becomes the first ``nNegCache`` of those, violators or not;
6. violators ``d²neg < d²pos + margin`` (and ``d²neg ≥ d²pos`` with ``exclude_very_hard``);
   the first ``nNegCap`` (hardest) enter the tuple; none → a zero-loss query, no forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class MiningConfig:
    """``trainWeakly`` mining options (names in comments), defaults as in the paper's code."""

    n_neg_choice: int = 1000  # nNegChoice: random negatives drawn per query visit
    n_neg_cap: int = 10  # nNegCap: most negatives in a tuple
    n_neg_cache: int = 10  # nNegCache: hardest negatives remembered per query
    margin: float = 0.1  # margin on squared distances
    exclude_very_hard: bool = False  # excludeVeryHard: keep only d²neg ≥ d²pos
    rank_factor: int = 10  # the 10·nNegCap nearest pool members are ranked

    def __post_init__(self):
        for name in ("n_neg_choice", "n_neg_cap", "n_neg_cache", "rank_factor"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"MiningConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class TrainTuple:
    """One query's training tuple (indices into the query list and the database list)."""

    query: int
    positive: int
    negatives: np.ndarray  # (M,) int64 db indices, hardest first, 1 ≤ M ≤ nNegCap
    d_pos: float  # cached squared distance to the positive
    d_neg: np.ndarray  # (M,) cached squared distances

    @property
    def db_ids(self) -> np.ndarray:
        """[positive, negatives...]: the database images of the tuple, in tuple order."""
        return np.concatenate([[self.positive], self.negatives]).astype(np.int64)


@dataclass
class MiningResult:
    """Outcome of mining one batch of queries."""

    tuples: list[TrainTuple] = field(default_factory=list)  # queries with ≥ 1 violator
    no_violation: list[int] = field(default_factory=list)  # mined, nothing violates: loss 0
    skipped: list[int] = field(default_factory=list)  # no non-trivial positive
    memory: dict[int, np.ndarray] = field(default_factory=dict)  # new memory row per mined query
    violators: dict[int, int] = field(default_factory=dict)  # violators entering each tuple

    @property
    def n_mined(self) -> int:
        return len(self.tuples) + len(self.no_violation)


class NegativeMemory:
    """``negCache``: the ``n_neg_cache`` hardest negatives remembered per query (−1 = empty)."""

    def __init__(self, num_queries: int, size: int = 10):
        self.ids = np.full((int(num_queries), int(size)), -1, dtype=np.int64)

    @property
    def size(self) -> int:
        return int(self.ids.shape[1])

    def row(self, q: int) -> np.ndarray:
        r = self.ids[q]
        return r[r >= 0]

    def update(self, rows: dict[int, np.ndarray]) -> None:
        for q, r in rows.items():
            self.ids[q] = -1
            self.ids[q, : len(r)] = r[: self.size]

    def state(self) -> torch.Tensor:
        """Checkpoint form: an int64 tensor (weights_only-loadable)."""
        return torch.from_numpy(self.ids.copy())

    @classmethod
    def from_state(cls, t: torch.Tensor) -> NegativeMemory:
        m = cls(t.shape[0], t.shape[1])
        m.ids = t.cpu().numpy().astype(np.int64).copy()
        return m


def query_rng(seed: int, epoch: int, query: int, stream: int = 0) -> np.random.Generator:
    """A generator owned by one (epoch, query) visit: sampling then doesn't depend on the batch
    order, the process (DDP rank) or a resume point, which makes runs reproducible bit for bit.
    `stream` separates uses (0 = negatives, 1 = jitter)."""
    return np.random.default_rng([int(seed), int(epoch), int(query), int(stream)])


def squared_distances(
    queries: torch.Tensor, database: torch.Tensor, ids: np.ndarray, block: int = 4096
) -> torch.Tensor:
    """Squared L2 distances between queries and a subset of database rows, blockwise.

    Args:
        queries: (B, d) tensor (any float dtype).
        database: (N, d) tensor (float16 / float32 / float64; stays where it is).
        ids: (U,) int64 db indices.
        block: rows gathered and up-cast at once (bounds memory for d = 32768).

    Returns:
        (B, U) float32 tensor (float64 if the inputs are float64), ``‖q‖² + ‖x‖² − 2q·x``.
    """
    dt = torch.promote_types(torch.promote_types(queries.dtype, database.dtype), torch.float32)
    q = queries.to(dt)
    qn = (q * q).sum(1, keepdim=True)
    ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=database.device)
    out = torch.empty((q.shape[0], len(ids_t)), dtype=dt, device=q.device)
    for s in range(0, len(ids_t), block):
        x = database.index_select(0, ids_t[s : s + block]).to(device=q.device, dtype=dt)
        out[:, s : s + block] = qn + (x * x).sum(1)[None, :] - 2.0 * (q @ x.T)
    return out.clamp_(min=0.0)


def mine(
    query_ids: Sequence[int],
    q_cache: torch.Tensor | np.ndarray,
    db_cache: torch.Tensor | np.ndarray,
    positives: Sequence[np.ndarray],
    random_negatives: Sequence[np.ndarray],
    memory: Sequence[np.ndarray],
    config: MiningConfig | None = None,
) -> MiningResult:
    """Mine a batch of queries on cached descriptors.

    Args:
        query_ids: B query indices (rows of `q_cache`).
        q_cache: (Q, d) cached query descriptors.
        db_cache: (N, d) cached database descriptors.
        positives: per batch query, its non-trivial positives (db indices, ``nontrivial_positives``).
        random_negatives: per batch query, the ``n_neg_choice`` random db indices beyond 25 m
            drawn for this visit (``sample_negatives``).
        memory: per batch query, its remembered hard negatives (db indices, may be empty).
        config: `MiningConfig`.

    Returns:
        `MiningResult` (the caller applies ``result.memory`` to its `NegativeMemory`).
    """
    cfg = config or MiningConfig()
    qids = [int(q) for q in query_ids]
    if not (len(positives) == len(random_negatives) == len(memory) == len(qids)):
        raise ValueError("mine: query_ids, positives, random_negatives and memory must have equal length")
    q_cache = torch.as_tensor(q_cache)
    db_cache = torch.as_tensor(db_cache)
    res = MiningResult()
    pools: list[np.ndarray | None] = []
    for i, q in enumerate(qids):
        pos = np.asarray(positives[i], dtype=np.int64)
        if pos.size == 0:
            res.skipped.append(q)
            pools.append(None)
            continue
        mem = np.asarray(memory[i], dtype=np.int64)
        pools.append(np.unique(np.concatenate([mem[mem >= 0], np.asarray(random_negatives[i], np.int64)])))
    active = [i for i, p in enumerate(pools) if p is not None]
    if not active:
        return res
    # One gather + one product for the whole batch over the union of candidates.
    cand = np.unique(
        np.concatenate([np.asarray(positives[i], np.int64) for i in active] + [pools[i] for i in active])
    )
    qsel = torch.as_tensor([qids[i] for i in active], dtype=torch.long, device=q_cache.device)
    dist = squared_distances(q_cache.index_select(0, qsel), db_cache, cand).cpu().double().numpy()
    n_rank = cfg.rank_factor * cfg.n_neg_cap
    for row, i in enumerate(active):
        q = qids[i]
        pos = np.asarray(positives[i], dtype=np.int64)
        dpos_all = dist[row, np.searchsorted(cand, pos)]
        j = int(np.argmin(dpos_all))  # first minimum, as MATLAB's min
        pos_id, d_pos = int(pos[j]), float(dpos_all[j])
        pool = pools[i]
        dneg = dist[row, np.searchsorted(cand, pool)]
        order = np.argsort(dneg, kind="stable")[: min(n_rank, len(pool))]
        res.memory[q] = pool[order[: cfg.n_neg_cache]].copy()
        dn = dneg[order]
        viol = dn < d_pos + cfg.margin
        if cfg.exclude_very_hard:
            viol &= dn >= d_pos
        sel = order[viol][: cfg.n_neg_cap]
        res.violators[q] = int(len(sel))
        if len(sel) == 0:
            res.no_violation.append(q)
        else:
            res.tuples.append(TrainTuple(q, pos_id, pool[sel].copy(), d_pos, dneg[sel].copy()))
    return res

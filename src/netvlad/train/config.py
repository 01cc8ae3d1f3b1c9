"""`TrainConfig`: every ``trainWeakly`` option that matters, with the paper code's defaults."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from netvlad._matlab import matlab_round
from netvlad.mining import MiningConfig

#: ``recallNs = [1:5, 10:5:100]`` (24 values).
RECALL_NS: tuple[int, ...] = (1, 2, 3, 4, 5, *range(10, 101, 5))

#: ``backPropToLayer`` used by the paper / demo.m per backbone (lower layers are frozen).
PAPER_BACKPROP_FROM = {"vgg16": "conv5_1", "vgg19": "conv5_1", "alexnet": "conv2"}


def _opt(default, help: str, **cli):
    """A TrainConfig field whose ``help`` (and CLI hints: ``choices``, ``type``) travel in its metadata."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """Options of `netvlad.train.fit` (``trainWeakly`` names in the help texts).

    Frequencies are in *queries* as in MATLAB and converted to batches with ceil(x / batch_size).
    Each field's ``metadata["help"]`` is its one description; ``netvlad train --help`` shows it.
    """

    epochs: int = _opt(30, "nEpoch")
    batch_size: int = _opt(4, "query tuples per SGD step (batchSize)")
    lr: float = _opt(1e-4, "base learning rate (learningRate; demo.m: 1e-3 for Pitts30k)")
    lr_down_freq: int = _opt(5, "halve the LR every this many epochs (lrDownFreq)")
    lr_down_factor: float = _opt(2.0, "LR divisor (lrDownFactor)")
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(1e-3, "weight decay (weightDecay)")
    margin: float = _opt(0.1, "triplet margin on squared distances")
    n_neg_choice: int = _opt(1000, "random negatives per query visit (nNegChoice)")
    n_neg_cap: int = _opt(10, "max negatives per tuple (nNegCap)")
    n_neg_cache: int = _opt(10, "hard negatives remembered per query (nNegCache)")
    exclude_very_hard: bool = _opt(False, "drop negatives closer than the positive (excludeVeryHard)")
    comp_feats_frequency: int = _opt(
        1000, "refresh the feature cache every N queries; doubles at each LR drop (compFeatsFrequency)"
    )
    save_frequency: int = _opt(2000, "write ckpt_latest.pt every N queries (saveFrequency)")
    backprop_from: str | int | None = _opt(
        "auto",
        "lowest trained layer (backPropToLayer), a name or MATLAB's 1-based layer index; "
        "'auto' = conv5_1 (VGG) / conv2 (AlexNet); 'all' = everything",
    )
    fix_layers: tuple[str, ...] = _opt((), "layers never updated, by name (fixLayers)")
    jitter_flip: bool = _opt(False, "flip the whole tuple with p = 0.5 (jitterFlip)")
    jitter_scale: tuple[float, ...] = _opt((), "scale factors, one drawn per tuple (jitterScale)", type=float)
    cache_dtype: str = _opt(
        "float16",
        "feature cache storage: float16 halves memory; float32 as MATLAB",
        choices=("float16", "bfloat16", "float32"),
    )
    mining_pca_dim: int | None = _opt(None, "PCA-reduce the cache to this dimension for mining", type=int)
    save_cache: bool = _opt(True, "keep the current cache on disk so that a resume is bit-exact")
    compute_batch_size: int = _opt(10, "batch size for cache/val extraction (computeBatchSize)")
    num_workers: int = _opt(2, "image decoding processes for cache/val extraction (0 = in the main process)")
    test0: bool = _opt(True, "evaluate the off-the-shelf network on val and train before training (test0)")
    n_test_sample: int = _opt(1000, "queries for recall, val and train (nTestSample, seed 43)")
    n_test_rank_sample: int = _opt(
        5000, "queries for the rank loss, val and train (nTestRankSample, seed 43); 0 = skip"
    )
    recall_ns: tuple[int, ...] = _opt(RECALL_NS, "Ns of recall@N (recallNs)", type=int)
    cluster_images: int = _opt(500, "images for NetVLAD cluster initialisation")
    limit_batches: int | None = _opt(None, "at most N batches per epoch (smoke runs)", type=int)
    limit_queries: int | None = _opt(None, "train on a fixed random subset of N queries", type=int)
    amp: bool = _opt(
        False,
        "bfloat16 autocast for the tuple forward/backward and the mining-cache refreshes "
        "(CUDA; on CPU fast only with native bf16: AVX512_BF16/AMX)",
    )
    seed: int = _opt(42, "query-order seed (MATLAB rng(42 + epoch))")
    query_sampling: str = _opt(
        "auto",
        "queries per epoch: uniform (each once), msls (drawn with MSLS's night/sideways weights), "
        "auto (msls on an MSLS dataset)",
        choices=("auto", "uniform", "msls"),
    )

    def __post_init__(self):
        self.jitter_scale = tuple(float(s) for s in self.jitter_scale)
        self.fix_layers = (self.fix_layers,) if isinstance(self.fix_layers, str) else tuple(self.fix_layers)
        if isinstance(self.backprop_from, str) and self.backprop_from.isdigit():
            self.backprop_from = int(self.backprop_from)
        if isinstance(self.backprop_from, int) and self.backprop_from < 1:
            raise ValueError(f"TrainConfig.backprop_from: layer indices start at 1, got {self.backprop_from}")
        self.recall_ns = tuple(int(n) for n in self.recall_ns)
        if self.cache_dtype not in ("float16", "float32", "bfloat16"):
            raise ValueError(
                f"TrainConfig.cache_dtype must be float16, bfloat16 or float32, got {self.cache_dtype!r}"
            )
        for name in ("epochs", "batch_size", "lr_down_freq", "comp_feats_frequency", "save_frequency"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if int(self.num_workers) < 0:
            raise ValueError(
                f"TrainConfig.num_workers must be >= 0 (0 = in the main process), got {self.num_workers}"
            )
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.query_sampling not in ("auto", "uniform", "msls"):
            raise ValueError(
                f"TrainConfig.query_sampling must be auto, uniform or msls, got {self.query_sampling!r}"
            )
        if any(s <= 0 for s in self.jitter_scale):
            raise ValueError(f"TrainConfig.jitter_scale factors must be > 0, got {self.jitter_scale}")

    def mining(self) -> MiningConfig:
        return MiningConfig(
            n_neg_choice=self.n_neg_choice,
            n_neg_cap=self.n_neg_cap,
            n_neg_cache=self.n_neg_cache,
            margin=self.margin,
            exclude_very_hard=self.exclude_very_hard,
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["jitter_scale"] = list(self.jitter_scale)
        d["fix_layers"] = list(self.fix_layers)
        d["recall_ns"] = list(self.recall_ns)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"TrainConfig: unknown option(s) {sorted(unknown)}")
        return cls(**d)

    def schedule(self, epoch: int) -> tuple[float, int]:
        """(learning rate, cache refresh period in batches) for 1-based `epoch`.

        MATLAB: at epochs 6, 11, ... (``mod(iEpoch, lrDownFreq) == 1``) ``lr /= lrDownFactor`` and
        ``batchCompFeatsFrequency = round(batchCompFeatsFrequency * lrDownFactor)`` (MATLAB's
        round: halves away from zero), counted from epoch 1 even when resuming.
        """
        lr = self.lr
        freq = math.ceil(self.comp_feats_frequency / self.batch_size)
        for e in range(2, epoch + 1):
            if e % self.lr_down_freq == 1:  # as MATLAB: lrDownFreq = 1 never decays
                lr /= self.lr_down_factor
                freq = matlab_round(freq * self.lr_down_factor)
        return lr, max(1, freq)

    @property
    def save_every_batches(self) -> int:
        return max(1, math.ceil(self.save_frequency / self.batch_size))


def resolve_backprop_from(config: TrainConfig, backbone_name: str | None) -> str | int | None:
    """The layer to train from: ``backprop_from`` unless "auto" (paper's choice per backbone).

    Returns a layer name, MATLAB's 1-based layer index (`netvlad.train.layers.freeze_for_training`
    maps it to a name), or None (everything is trained)."""
    if config.backprop_from != "auto":
        return config.backprop_from
    return PAPER_BACKPROP_FROM.get(backbone_name or "")

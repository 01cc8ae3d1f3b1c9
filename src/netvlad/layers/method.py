"""The aggregation method string of the original (``opts.method``, e.g. ``vlad_preL2_intra``)."""

from __future__ import annotations

from dataclasses import dataclass

POOLS = ("max", "avg", "vlad", "vladv2")
FLAGS = ("preL2", "intra")


@dataclass(frozen=True)
class Method:
    """A parsed aggregation method string (``opts.method`` of the original).

    Attributes:
        pool: "vlad" | "vladv2" | "max" | "avg".
        pre_l2: L2-normalise each local descriptor before pooling.
        intra: intra-normalise each cluster's residual sum (VLAD only).
    """

    pool: str = "vlad"
    pre_l2: bool = True
    intra: bool = True

    @property
    def is_vlad(self) -> bool:
        return self.pool in ("vlad", "vladv2")

    @property
    def name(self) -> str:
        """Canonical string, e.g. ``vlad_preL2_intra``; ``parse_method(m.name) == m``."""
        return "_".join([self.pool] + ["preL2"] * self.pre_l2 + ["intra"] * self.intra)

    def __str__(self) -> str:
        return self.name


def parse_method(s: str) -> Method:
    """Parse a method string such as ``vlad_preL2_intra`` (tokens split on ``_``, any order).

    Exactly one of max|avg|vlad|vladv2; optional ``preL2``; optional ``intra`` (VLAD only).
    Like the original's "Unsupported options", any unknown, repeated or unused token is an error.

    Raises:
        ValueError: naming the offending tokens and the allowed ones.
    """
    if isinstance(s, Method):
        return s
    tokens = str(s).split("_")
    allowed = f"allowed tokens: one of {'|'.join(POOLS)}, plus optional {' and '.join(FLAGS)}"
    allowed += " (intra: vlad/vladv2 only)"
    pools = [t for t in tokens if t in POOLS]
    if len(pools) != 1:
        what = "no pooling token" if not pools else f"several pooling tokens {pools}"
        raise ValueError(f"bad method {s!r}: {what}; {allowed}")
    pool = pools[0]
    rest = list(tokens)
    rest.remove(pool)
    pre_l2 = intra = False
    if "preL2" in rest:
        rest.remove("preL2")
        pre_l2 = True
    if pool in ("vlad", "vladv2") and "intra" in rest:
        rest.remove("intra")
        intra = True
    if rest:
        raise ValueError(f"bad method {s!r}: unsupported token(s) {rest}; {allowed}")
    return Method(pool, pre_l2, intra)

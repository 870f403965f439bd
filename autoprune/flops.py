"""Analytic FLOPs (multiply-accumulates) and parameter counts of any keep-mask.

Every counted module's cost is `a * i * o + b * o + c`, where `i` and `o` are its kept input and output channels
(for modules with one channel axis, like BN or ReLU, `o` is that axis). The kept counts are sums of the keep-mask
over the decisions that own the module's channels, so a mask costs two `bincount`s and a dot product. The
coefficients are read off torch-pruning's own counter (`count_ops_and_params`) on the unpruned model, so the
totals agree with that counter on the physically pruned model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BilinearCost:
    """Cost of a mask as a sum of per-module bilinear terms.

    Attributes:
        in_const: per module, input channels no decision controls (always kept).
        out_const: per module, output channels no decision controls.
        in_slot: module index of each (module, decision) input incidence.
        in_decision: decision index of each input incidence.
        out_slot: module index of each output incidence.
        out_decision: decision index of each output incidence.
        a: coefficient of `i * o` per module.
        b: coefficient of `o` per module.
        constant: cost no mask changes (unprunable modules, the parts of the model outside any module).
    """

    in_const: np.ndarray
    out_const: np.ndarray
    in_slot: np.ndarray
    in_decision: np.ndarray
    out_slot: np.ndarray
    out_decision: np.ndarray
    a: np.ndarray
    b: np.ndarray
    constant: float

    def kept(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Kept input and output channels of every module under `keep` (one 0/1 entry per decision)."""
        keep = np.asarray(keep, dtype=np.float64)
        m = len(self.a)
        i = self.in_const + np.bincount(self.in_slot, weights=keep[self.in_decision], minlength=m)
        o = self.out_const + np.bincount(self.out_slot, weights=keep[self.out_decision], minlength=m)
        return i, o

    def __call__(self, keep: np.ndarray) -> float:
        i, o = self.kept(keep)
        return float(self.a @ (i * o) + self.b @ o + self.constant)

    def marginal(self, keep: np.ndarray) -> np.ndarray:
        """Cost removed by dropping each decision alone from `keep` (the gradient of the bilinear form)."""
        i, o = self.kept(keep)
        n = len(keep)
        via_out = (self.a * i + self.b)[self.out_slot]
        via_in = (self.a * o)[self.in_slot]
        return np.bincount(self.out_decision, weights=via_out, minlength=n) + np.bincount(
            self.in_decision, weights=via_in, minlength=n
        )

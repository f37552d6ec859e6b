"""Calibrated confidence: P(the top-1 gallery item is right) from its score and margin.

Features of a query's ranking: the top-1 cosine similarity ``s1`` and its margin to the
runner-up ``s1 - s2``.  Two fits on a validation split (labels: top-1 correct or not):

- ``platt`` (Platt 1999): logistic regression ``p = sigmoid(w1 * s1 + w2 * (s1 - s2) + b)``,
  fitted by Newton's method with a small L2 penalty (``l2``) on the weights;
- ``isotonic`` (Zadrozny & Elkan 2002): the Platt score followed by a monotone step function
  fitted by pool-adjacent-violators, so it keeps the ordering of the Platt fit but can bend.

``expected_calibration_error``: ECE of Guo et al. (ICML 2017), ``bins`` equal-width confidence
bins, ``sum_b |B_b| / N * |accuracy(B_b) - mean confidence(B_b)|``, in percent.  The
*uncalibrated* confidence it is compared with is the raw top-1 similarity clipped to [0, 1].
``Calibrator.to_json`` is what an index stores (``calibration.json``) and serving applies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["Calibrator", "expected_calibration_error", "fit_calibrator", "raw_confidence", "reliability_bins",
           "save_reliability_plot"]

FILE = "calibration.json"


def features(top1: Any, top2: Any) -> np.ndarray:
    top1, top2 = np.asarray(top1, np.float64), np.asarray(top2, np.float64)
    return np.stack([top1, top1 - top2], axis=1)


def raw_confidence(top1: Any) -> np.ndarray:
    """The uncalibrated confidence: the top-1 cosine similarity clipped to [0, 1]."""
    return np.clip(np.asarray(top1, np.float64), 0.0, 1.0)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def platt_fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iterations: int = 100) -> np.ndarray:
    """Weights [w1, w2, b] of logistic regression by Newton-Raphson (penalty on w only)."""
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    weights = np.zeros(design.shape[1])
    penalty = np.diag([l2] * x.shape[1] + [0.0])
    for _ in range(iterations):
        p = _sigmoid(design @ weights)
        gradient = design.T @ (p - y) + penalty @ weights
        hessian = (design * (p * (1 - p))[:, None]).T @ design + penalty + 1e-9 * np.eye(len(weights))
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return weights


def pav(values: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic (non-decreasing) fit of ``targets`` against ``values``: (thresholds, levels),
    the level of block i applying from thresholds[i] on (pool-adjacent-violators)."""
    order = np.argsort(values, kind="stable")
    x, y = values[order], targets[order].astype(np.float64)
    levels: list[float] = []
    weights: list[float] = []
    starts: list[float] = []
    for xi, yi in zip(x, y):
        levels.append(yi)
        weights.append(1.0)
        starts.append(xi)
        while len(levels) > 1 and levels[-2] >= levels[-1]:
            total = weights[-2] + weights[-1]
            levels[-2] = (levels[-2] * weights[-2] + levels[-1] * weights[-1]) / total
            weights[-2] = total
            levels.pop()
            weights.pop()
            starts.pop()
    return np.asarray(starts), np.asarray(levels)


@dataclass
class Calibrator:
    """A fitted map (s1, s1 - s2) -> P(top-1 correct)."""

    method: Literal["platt", "isotonic"] = "platt"
    weights: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # w1, w2, b of the Platt score
    thresholds: list[float] = field(default_factory=list)  # isotonic: block starts on the Platt score
    levels: list[float] = field(default_factory=list)
    fitted_on: dict[str, Any] = field(default_factory=dict)  # queries, accuracy, ECE before/after

    def score(self, top1: Any, top2: Any) -> np.ndarray:
        return features(top1, top2) @ np.asarray(self.weights[:2]) + self.weights[2]

    def predict(self, top1: Any, top2: Any) -> np.ndarray:
        """P(top-1 correct) for each query, in [0, 1]."""
        z = self.score(top1, top2)
        if self.method == "platt":
            return _sigmoid(z)
        positions = np.searchsorted(np.asarray(self.thresholds), z, side="right") - 1
        return np.asarray(self.levels)[np.clip(positions, 0, len(self.levels) - 1)]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Calibrator":
        calibrator = cls(**data)
        if calibrator.method not in ("platt", "isotonic") or len(calibrator.weights) != 3:
            raise ValueError(f"calibration: method {calibrator.method!r} / weights {calibrator.weights} invalid")
        return calibrator


def fit_calibrator(top1: Any, top2: Any, correct: Any, method: str = "platt", l2: float = 1e-3) -> Calibrator:
    """Fit on a validation split: top-1 and top-2 similarities [N] and top-1 correctness [N] (bool)."""
    y = np.asarray(correct, dtype=np.float64)
    if y.ndim != 1 or len(y) < 2:
        raise ValueError(f"calibration needs at least 2 validation queries, got {len(y)}")
    if method not in ("platt", "isotonic"):
        raise ValueError(f"calibration method {method!r}: choose platt or isotonic")
    x = features(top1, top2)
    calibrator = Calibrator(method=method, weights=[float(w) for w in platt_fit(x, y, l2)])
    if method == "isotonic":
        thresholds, levels = pav(calibrator.score(top1, top2), y)
        calibrator.thresholds, calibrator.levels = thresholds.tolist(), levels.tolist()
    calibrator.fitted_on = {"queries": int(len(y)), "top1_accuracy": float(100 * y.mean()),
                            "ece_raw": expected_calibration_error(raw_confidence(top1), y),
                            "ece_fitted": expected_calibration_error(calibrator.predict(top1, top2), y)}
    return calibrator


def reliability_bins(confidence: Any, correct: Any, bins: int = 15) -> list[dict[str, Any]]:
    """Per equal-width bin: [lo, hi), count, mean confidence and accuracy (0-1)."""
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=False), 0, bins - 1)
    out = []
    for b in range(bins):
        members = which == b
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": int(members.sum()),
                    "confidence": float(confidence[members].mean()) if members.any() else None,
                    "accuracy": float(correct[members].mean()) if members.any() else None})
    return out


def expected_calibration_error(confidence: Any, correct: Any, bins: int = 15) -> float | None:
    """ECE in percent (Guo et al. 2017); ``None`` for no queries."""
    confidence = np.asarray(confidence, np.float64)
    if confidence.size == 0:
        return None
    total = 0.0
    for b in reliability_bins(confidence, correct, bins):
        if b["count"]:
            total += b["count"] * abs(b["accuracy"] - b["confidence"])
    return float(100.0 * total / confidence.size)


def save_reliability_plot(url: str, curves: dict[str, tuple[Any, Any]], bins: int = 15) -> str:
    """A reliability diagram (accuracy against confidence per bin, one line per curve) as PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gleam import storage

    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for name, (confidence, correct) in curves.items():
        points = [(b["confidence"], b["accuracy"]) for b in reliability_bins(confidence, correct, bins) if b["count"]]
        if points:
            xs, ys = zip(*points)
            ece = expected_calibration_error(confidence, correct, bins)
            axis.plot(xs, ys, marker="o", label=f"{name} (ECE {ece:.1f}%)")
    axis.set_xlabel("confidence")
    axis.set_ylabel("top-1 accuracy")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.legend(loc="upper left", fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    storage.write_bytes(url, buffer.getvalue())
    return url

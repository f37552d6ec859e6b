"""Per-view photometric jitter: exposure, white balance, hue, saturation, contrast, gamma
and sensor noise.

Query views are jittered strongly and independently per view, so that the colours of a query
never match its satellite tile closely enough to be a shortcut; the satellite gets a mild
jitter of its own. The parameters are returned so that a sample can record them.
"""

from __future__ import annotations

import numpy as np


def _clipped_normal(rng: np.random.Generator, sigma: float, limit: float = 2.0) -> float:
    return float(np.clip(rng.normal(0.0, sigma), -limit * sigma, limit * sigma))


def draw_jitter(rng: np.random.Generator, strength: float) -> dict[str, float | list[float]]:
    """Random photometric parameters; strength 0 gives the identity.

    White balance varies like a camera's: mostly along the warm-cool (red-blue) axis, a
    little along the green-magenta tint axis; every parameter is clipped at two sigma.
    """
    s = float(strength)
    temperature = _clipped_normal(rng, 0.11 * s)
    tint = _clipped_normal(rng, 0.04 * s)
    gains = np.exp(np.array([temperature, tint, -temperature]))
    return {
        "exposure": float(np.exp(_clipped_normal(rng, 0.22 * s))),
        "white_balance": [float(g) for g in gains / gains.mean()],
        "hue_deg": _clipped_normal(rng, 4.0 * s),
        "saturation": 1.0 + _clipped_normal(rng, 0.16 * s),
        "contrast": 1.0 + _clipped_normal(rng, 0.12 * s),
        "gamma": float(np.exp(_clipped_normal(rng, 0.12 * s))),
        "noise_sigma": float(rng.uniform(0.5, 3.0) * s),
    }


def _rotate_hue(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate colours about the grey axis by degrees (Rodrigues rotation in RGB space)."""
    angle = np.radians(degrees)
    axis = np.ones(3) / np.sqrt(3.0)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) * np.cos(angle) + np.sin(angle) * cross + (1 - np.cos(angle)) * np.outer(axis, axis)
    return image @ rotation.T.astype(np.float32)


def apply_jitter(image: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
    """Apply parameters from ``draw_jitter`` to a float image in [0, 1]; returns uint8."""
    out = image.astype(np.float32) * np.asarray(params["white_balance"], dtype=np.float32)
    out *= params["exposure"]
    if params["hue_deg"]:
        out = _rotate_hue(out, params["hue_deg"])
    grey = out.mean(axis=-1, keepdims=True)
    out = grey + (out - grey) * params["saturation"]
    out = 0.5 + (out - 0.5) * params["contrast"]
    out = np.clip(out, 0.0, 1.0) ** params["gamma"]
    out = out * 255.0
    if params["noise_sigma"] > 0:
        out += rng.normal(0.0, params["noise_sigma"], size=out.shape).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)

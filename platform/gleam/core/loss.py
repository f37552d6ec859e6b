"""Symmetric InfoNCE over query/satellite pairs, with features gathered across workers.

Each rank holds a local batch of B query and B satellite embeddings (L2-normalised).  With
``gather=True`` under torch.distributed, the embeddings of every rank are all-gathered *with
gradients* (``torch.distributed._functional_collectives.all_gather_single_autograd``) and each rank scores its local
queries against the global satellites and its local satellites against the global queries
(open_clip's "local vs global" layout: memory linear in the global batch).  The positive of
local row i is global column ``rank * B + i``.  The rank's loss is the mean over its rows, so
the average over ranks (what DDP's gradient averaging optimises) equals the 1-process loss of
the global batch; ``tests/test_loss.py`` checks loss and gradients are equal.

The logit scale is a learnable parameter of the model (so DDP keeps it in sync), clamped to
``[0, max_logit_scale]`` when used; the paper's lineage starts it at ln(1/0.07).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

DEFAULT_LOGIT_SCALE = math.log(1 / 0.07)
DEFAULT_MAX_LOGIT_SCALE = math.log(100.0)


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """Concatenate ``features`` of every rank (rank order); gradients flow back to each rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    from torch.distributed._functional_collectives import all_gather_single_autograd, wait_tensor

    # The functional collective (torch.distributed.nn.functional.all_gather is deprecated): its
    # backward reduce-scatters (sums) the gradient of every rank's copy back to the owning rank.
    return wait_tensor(all_gather_single_autograd(features.contiguous(), 0, dist.group.WORLD))


def symmetric_infonce(query: torch.Tensor, satellite: torch.Tensor, logit_scale: torch.Tensor,
                      *, label_smoothing: float = 0.1, max_logit_scale: float = DEFAULT_MAX_LOGIT_SCALE,
                      gather: bool = True) -> torch.Tensor:
    """Mean of query->satellite and satellite->query cross-entropy over the (global) batch."""
    if query.shape != satellite.shape or query.ndim != 2:
        raise ValueError(f"query {tuple(query.shape)} and satellite {tuple(satellite.shape)} "
                         "embeddings must both be [batch, dim]")
    all_query = gather_with_grad(query) if gather else query
    all_satellite = gather_with_grad(satellite) if gather else satellite
    rank = dist.get_rank() if gather and dist.is_available() and dist.is_initialized() else 0
    scale = logit_scale.clamp(0.0, max_logit_scale).exp()
    labels = torch.arange(query.shape[0], device=query.device) + rank * query.shape[0]
    query_to_satellite = scale * query @ all_satellite.T
    satellite_to_query = scale * satellite @ all_query.T
    return 0.5 * (F.cross_entropy(query_to_satellite, labels, label_smoothing=label_smoothing)
                  + F.cross_entropy(satellite_to_query, labels, label_smoothing=label_smoothing))

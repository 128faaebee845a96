"""The one emotion scorer: cosine of (centred) residuals with unit reading directions.

``read``, the live monitor, the API server, the experiments and extraction's held-out check
all score through this module, so "live scores equal ``read()``" holds by construction rather
than by keeping copies in step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from emovec.vectors import EmotionVectors


def cosine_scores(hidden: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Cosine of every row of ``hidden`` [..., d] with every direction [E, d] -> [..., E].

    At least float32 (half-precision residuals are scored in float32; float64 stays float64);
    ``directions`` are used as given (reading directions are unit length).
    """
    dtype = torch.promote_types(torch.promote_types(hidden.dtype, directions.dtype), torch.float32)
    return torch.nn.functional.normalize(hidden.to(dtype), dim=-1) @ directions.to(dtype).T


class CosineScorer:
    """Centred cosine scores of chosen emotions at one layer, built once and cheap per call.

    The same numbers as :func:`cosine_scores` of ``hidden - mean``; the per-token path is kept
    lean because it runs on every decode step, where each small op costs tens of microseconds.
    """

    def __init__(
        self,
        vectors: EmotionVectors,
        emotions: Sequence[str] | None = None,
        layer: int | None = None,
        center: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        layer = vectors.default_layer if layer is None else layer
        row = vectors.layer_index(layer)
        names = vectors.emotions if emotions is None else list(emotions)
        index = [vectors.emotions.index(e) for e in names]
        self.emotions, self.layer = names, layer
        device = torch.device(device)
        self._directions_t = vectors.reading_directions(layer)[index].T.contiguous().float()
        self._directions_t = self._directions_t.to(device)
        d = vectors.vectors.shape[-1]
        mean = vectors.mean_activation[row] if center else torch.zeros(d)
        self._mean = mean.float().to(device)
        # On CPU, numpy's small-matrix path costs about half of torch's per-op dispatch.
        on_cpu = device.type == "cpu"
        self._numpy = (self._mean.numpy(), self._directions_t.numpy()) if on_cpu else None

    def __call__(self, hidden: torch.Tensor) -> np.ndarray:
        """Scores of residuals [..., d] -> float32 array [..., emotions] on the host."""
        if self._numpy is not None and hidden.device.type == "cpu":
            mean, directions_t = self._numpy
            x = hidden.detach().float().numpy().reshape(-1, hidden.shape[-1]) - mean
            scores = x @ directions_t
            scores /= np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x))[:, None], 1e-12)
            return scores.reshape(*hidden.shape[:-1], -1)
        return self.on_device(hidden).cpu().numpy()

    def on_device(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of residuals [..., d] -> float32 tensor [..., emotions], left on the device.

        Nothing is read back, so a GPU's queue keeps running: live monitoring scores inside
        the forward pass and reads each step's scores once, after it.
        """
        # .to() is a no-op on one device; with a device map the layer may sit elsewhere.
        y = hidden.detach().to(self._mean.device, torch.float32) - self._mean
        scores = torch.matmul(y, self._directions_t)
        return scores / y.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def top_k_hits(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Whether each row's true label (``labels`` [N]) is among its ``k`` best scores [N, E]."""
    ranks = scores.argsort(dim=1, descending=True)[:, :k]
    return (ranks == labels.unsqueeze(1)).any(dim=1)

"""Conditional CT-SGAN (not in the paper: its future work, "extend CT-SGAN to conditional CT-SGAN to avoid external
algorithms for the inclusion or exclusion of nodules"; issue 26, ``docs/ctsgan.md``).

The condition of a volume is its nodule content: whether it has nodules, how many, and one target diameter (voxels).
It is encoded as a short feature vector (:func:`condition_vector`) and enters every network:

- generator: an embedding e(c) (:class:`ConditionEncoding`) is concatenated to the patient noise (so Gslice sees it
  in every code) and fed to Rv beside ε_i at every position (so the BiLSTM carries it along the slices);
- Dslice and Dslab: by projection (Miyato & Koyama 2018), exactly as Dslice is already conditioned on the slice
  position: logit + ⟨embed(c), φ(x)⟩, so they judge "real given this condition".

The networks are the unconditional ones (:mod:`ctsgan_lib.models.ctsgan`) with wider inputs and one extra projection
term; nothing here changes the unconditional model.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .ctsgan import (CTSGANGenerator, SlabDiscriminator, SliceDiscriminator, SliceGenerator, SliceRNN,
                     config_getter)

#: length of the condition vector: [presence, count / COUNT_SCALE, diameter_vox / DIAMETER_SCALE_VOX]
N_CONDITION = 3
#: input scales of the condition features (they only keep the inputs O(1); the encoders learn the rest)
COUNT_SCALE = 4.0
DIAMETER_SCALE_VOX = 8.0


def condition_vector(n_nodules: int, diameter_vox: float) -> torch.Tensor:
    """The condition of one volume: ``n_nodules`` nodules of (mean) diameter ``diameter_vox`` → (N_CONDITION,).

    A volume without nodules is the zero vector whatever ``diameter_vox`` says.
    """
    n = int(n_nodules)
    if n < 0 or (n > 0 and not diameter_vox > 0):
        raise ValueError(f"condition needs n_nodules >= 0 and a positive diameter, got {n_nodules}, {diameter_vox}")
    if n == 0:
        return torch.zeros(N_CONDITION)
    return torch.tensor([1.0, n / COUNT_SCALE, float(diameter_vox) / DIAMETER_SCALE_VOX])


def condition_of_nodules(nodules: Sequence[dict]) -> tuple[int, float]:
    """(count, mean ``diameter_vox``) of a manifest row's ``nodules`` list (``(0, 0.0)`` without nodules)."""
    if not nodules:
        return 0, 0.0
    return len(nodules), float(sum(float(n["diameter_vox"]) for n in nodules) / len(nodules))


def condition_table(rows: Sequence[Sequence[dict]]) -> torch.Tensor:
    """Condition vectors (N, N_CONDITION) of N volumes from their manifest ``nodules`` lists."""
    return torch.stack([condition_vector(*condition_of_nodules(r)) for r in rows]) if rows else \
        torch.zeros(0, N_CONDITION)


class ConditionEncoding(nn.Module):
    """A small MLP from the condition vector to ``dim`` features (the generator's e(c), the critics' projection)."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(N_CONDITION, dim), nn.LeakyReLU(0.2), nn.Linear(dim, dim))

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        """``cond`` (M, N_CONDITION) → (M, dim)."""
        return self.net(cond.to(self.net[0].weight.dtype))


class CondCTSGANGenerator(CTSGANGenerator):
    """Rv + Gslice with the condition embedding in the patient code and in Rv's per-slice input.

    Parameters
    ----------
    cond_dim : int
        Size of e(c) (``ctsgan.cond_dim``); other parameters as :class:`~ctsgan_lib.models.ctsgan.CTSGANGenerator`.
    """

    def __init__(self, size: int, patient_dim: int, slice_noise_dim: int, slice_code_dim: int, ngf: int,
                 cond_dim: int, position_input: bool = False, rv_init: str = "learned"):
        super().__init__(size, patient_dim, slice_noise_dim, slice_code_dim, ngf, position_input, rv_init)
        self.cond_dim = int(cond_dim)
        self.gcond = ConditionEncoding(self.cond_dim)
        # the same Rv and Gslice, with inputs widened by e(c)
        self.rv = SliceRNN(slice_noise_dim + int(self.position_input) + self.cond_dim, slice_code_dim, rv_init,
                           patient_dim)
        self.gslice = SliceGenerator(patient_dim + self.cond_dim + slice_code_dim, size, ngf)

    def codes(self, patient_noise: torch.Tensor, slice_noise: torch.Tensor,
              cond: torch.Tensor | None = None) -> torch.Tensor:
        """Codes (B, L, patient_dim + cond_dim + slice_code_dim) for conditions ``cond`` (B, N_CONDITION)."""
        if cond is None:
            raise ValueError("a conditional CT-SGAN generator needs the condition (B, N_CONDITION)")
        e = self.gcond(cond.to(slice_noise.device))
        n_pos = slice_noise.shape[1]
        rv_in = torch.cat([self.rv_input(slice_noise), e[:, None, :].expand(-1, n_pos, -1)], dim=2)
        slice_codes = self.rv(rv_in, patient_noise)
        head = torch.cat([patient_noise, e], dim=1)[:, None, :].expand(-1, n_pos, -1)
        return torch.cat([head, slice_codes], dim=2)

    def forward(self, patient_noise: torch.Tensor, slice_noise: torch.Tensor, positions: torch.Tensor | None = None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """3D slices at ``positions`` for conditions ``cond`` (see the unconditional ``forward``)."""
        return self.slices_at(self.codes(patient_noise, slice_noise, cond), positions)


class CondSliceDiscriminator(SliceDiscriminator):
    """Dslice with a second projection term, on the condition: ψ(φ) + ⟨pos(j), φ⟩ + ⟨c-embed(c), φ⟩."""

    def __init__(self, size: int, n_positions: int, ndf: int = 64, channels: int = 3,
                 position_encoding: str = "table"):
        super().__init__(size, n_positions, ndf, channels, position_encoding)
        self.condition = ConditionEncoding(self.linear.in_features)

    def forward(self, x: torch.Tensor, position: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (M, 3, S, S), ``position`` (M,), ``cond`` (M, N_CONDITION) → logits (M,)."""
        if cond is None:
            raise ValueError("this Dslice is conditional: pass the condition (M, N_CONDITION)")
        h = self.features(x)
        return self.head(h, position) + (self.condition(cond) * h).sum(1)


class CondSlabDiscriminator(SlabDiscriminator):
    """Dslab with a projection term on the condition (and, as the unconditional one, optionally on the slab start)."""

    def __init__(self, size: int, slab_len: int, ndf: int = 64, n_positions: int | None = None):
        super().__init__(size, slab_len, ndf, n_positions)
        self.condition = ConditionEncoding(self.linear.in_features)

    def forward(self, slab: torch.Tensor, start: torch.Tensor | None = None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """``slab`` (B, 1, T, S, S), ``start`` (B,) or None, ``cond`` (B, N_CONDITION) → (B,)."""
        if cond is None:
            raise ValueError("this Dslab is conditional: pass the condition (B, N_CONDITION)")
        h = self.features(slab)
        return self.head(h, start) + (self.condition(cond) * h).sum(1)


def build_ctsgan_cond(size: int, ct) -> dict[str, nn.Module]:
    """The conditional networks from a CTSGANConfig (or its dict) at side ``size``; keys as
    :func:`~ctsgan_lib.models.ctsgan.build_ctsgan`."""
    g = config_getter(ct)
    gen = CondCTSGANGenerator(size, g("patient_dim"), g("slice_noise_dim"), g("slice_code_dim"), g("ngf"),
                              g("cond_dim", 8), position_input=bool(g("position_input", False)),
                              rv_init=g("rv_init", "random"))
    return {
        "generator": gen,
        "dslice": CondSliceDiscriminator(size, size - 2, g("ndf"), position_encoding=g("dslice_position", "table")),
        "dslab": CondSlabDiscriminator(size, g("slab_len"), g("ndf"),
                                       n_positions=(size - 2) if g("dslab_position", False) else None),
    }


__all__ = ["N_CONDITION", "COUNT_SCALE", "DIAMETER_SCALE_VOX", "condition_vector", "condition_of_nodules",
           "condition_table", "ConditionEncoding", "CondCTSGANGenerator", "CondSliceDiscriminator",
           "CondSlabDiscriminator", "build_ctsgan_cond"]

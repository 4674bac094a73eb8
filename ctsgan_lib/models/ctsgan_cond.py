"""Conditional CT-SGAN (not in the paper: its future work, "extend CT-SGAN to conditional CT-SGAN to avoid external
algorithms for the inclusion or exclusion of nodules"; issue 26, ``docs/ctsgan.md``).

The condition of a volume is its nodule content: whether it has nodules, how many, and one target diameter (voxels).
It is encoded as a short feature vector (:func:`condition_vector`) and enters every network:

- generator: an embedding e(c) (:class:`ConditionEncoding`) is concatenated to the patient noise (so Gslice sees it
  in every code) and fed to Rv beside ε_i at every position (so the BiLSTM carries it along the slices);
- Dslice and Dslab: by projection (Miyato & Koyama 2018), exactly as Dslice is already conditioned on the slice
  position: logit + ⟨embed(c), φ(x)⟩, so they judge "real given this condition".

With ``ctsgan.cond_z`` the condition also says *where* along z the nodules are: a per-position nodule profile
(:func:`z_profile`, 1 at a nodule's centre slice, falling off over its radius) joins the condition vector at every
position, so the condition becomes (B, L, N_CONDITION + 1); Rv carries it along the slices, Dslice sees the value at
its slice and Dslab the mean over its slab.

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


def z_profile(n_positions: int, z_vox: Sequence[float], diameters_vox: Sequence[float]) -> torch.Tensor:
    """Per-position nodule profile (n_positions,): position j (a 3D slice centred on volume slice j + 1) gets
    max_k exp(−½((j + 1 − z_k) / σ_k)²), σ_k = max(d_k / 2, 1 voxel); all zero without nodules."""
    out = torch.zeros(n_positions)
    centre = torch.arange(1, n_positions + 1, dtype=torch.float32)
    for z, d in zip(z_vox, diameters_vox):
        sigma = max(float(d) / 2.0, 1.0)
        out = torch.maximum(out, torch.exp(-0.5 * ((centre - float(z)) / sigma) ** 2))
    return out


def condition_with_z(n_nodules: int, diameter_vox: float, z_vox: Sequence[float], n_positions: int) -> torch.Tensor:
    """The per-position condition (n_positions, N_CONDITION + 1) of a ``ctsgan.cond_z`` model: the volume's
    :func:`condition_vector` at every position plus the :func:`z_profile` of nodules at ``z_vox`` (one per nodule)."""
    if len(z_vox) != int(n_nodules):
        raise ValueError(f"one z position per nodule: {n_nodules} nodules, {len(z_vox)} positions")
    base = condition_vector(n_nodules, diameter_vox)[None].expand(n_positions, -1)
    prof = z_profile(n_positions, z_vox, [diameter_vox] * len(z_vox))[:, None]
    return torch.cat([base, prof], dim=1)


def condition_table(rows: Sequence[Sequence[dict]], n_positions: int | None = None) -> torch.Tensor:
    """Conditions of N volumes from their manifest ``nodules`` lists: (N, N_CONDITION), or with ``n_positions`` (a
    ``ctsgan.cond_z`` model) (N, n_positions, N_CONDITION + 1) from each nodule's ``center_vox`` z and diameter."""
    if n_positions is None:
        return torch.stack([condition_vector(*condition_of_nodules(r)) for r in rows]) if rows else \
            torch.zeros(0, N_CONDITION)
    out = []
    for r in rows:
        n, d = condition_of_nodules(r)
        base = condition_vector(n, d)[None].expand(n_positions, -1)
        prof = z_profile(n_positions, [float(x["center_vox"][0]) for x in r], [float(x["diameter_vox"]) for x in r])
        out.append(torch.cat([base, prof[:, None]], dim=1))
    return torch.stack(out) if out else torch.zeros(0, n_positions, N_CONDITION + 1)


class ConditionEncoding(nn.Module):
    """A small MLP from the condition vector to ``dim`` features (the generator's e(c), the critics' projection)."""

    def __init__(self, dim: int, n_features: int = N_CONDITION):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, dim), nn.LeakyReLU(0.2), nn.Linear(dim, dim))

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        """``cond`` (..., n_features) → (..., dim)."""
        return self.net(cond.to(self.net[0].weight.dtype))


class CondCTSGANGenerator(CTSGANGenerator):
    """Rv + Gslice with the condition embedding in the patient code and in Rv's per-slice input.

    Parameters
    ----------
    cond_dim : int
        Size of e(c) (``ctsgan.cond_dim``); other parameters as :class:`~ctsgan_lib.models.ctsgan.CTSGANGenerator`.
    cond_z : bool
        Per-position conditions with the z profile (``ctsgan.cond_z``).
    """

    def __init__(self, size: int, patient_dim: int, slice_noise_dim: int, slice_code_dim: int, ngf: int,
                 cond_dim: int, position_input: bool = False, rv_init: str = "learned", cond_z: bool = False):
        super().__init__(size, patient_dim, slice_noise_dim, slice_code_dim, ngf, position_input, rv_init)
        self.cond_dim, self.cond_z = int(cond_dim), bool(cond_z)
        self.gcond = ConditionEncoding(self.cond_dim, N_CONDITION + int(self.cond_z))
        # the same Rv and Gslice, with inputs widened by e(c)
        self.rv = SliceRNN(slice_noise_dim + int(self.position_input) + self.cond_dim, slice_code_dim, rv_init,
                           patient_dim)
        self.gslice = SliceGenerator(patient_dim + self.cond_dim + slice_code_dim, size, ngf)

    def codes(self, patient_noise: torch.Tensor, slice_noise: torch.Tensor,
              cond: torch.Tensor | None = None) -> torch.Tensor:
        """Codes (B, L, patient_dim + cond_dim + slice_code_dim) for conditions ``cond``: (B, N_CONDITION), or
        (B, L, N_CONDITION + 1) with ``cond_z``."""
        if cond is None or cond.dim() != (3 if self.cond_z else 2):
            raise ValueError("a conditional CT-SGAN generator needs the condition "
                             + ("(B, L, N_CONDITION + 1)" if self.cond_z else "(B, N_CONDITION)"))
        n_pos = slice_noise.shape[1]
        e = self.gcond(cond.to(slice_noise.device))
        e = e if self.cond_z else e[:, None, :].expand(-1, n_pos, -1)          # (B, L, cond_dim)
        slice_codes = self.rv(torch.cat([self.rv_input(slice_noise), e], dim=2), patient_noise)
        head = torch.cat([patient_noise[:, None, :].expand(-1, n_pos, -1), e], dim=2)
        return torch.cat([head, slice_codes], dim=2)

    def forward(self, patient_noise: torch.Tensor, slice_noise: torch.Tensor, positions: torch.Tensor | None = None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """3D slices at ``positions`` for conditions ``cond`` (see the unconditional ``forward``)."""
        return self.slices_at(self.codes(patient_noise, slice_noise, cond), positions)


class CondSliceDiscriminator(SliceDiscriminator):
    """Dslice with a second projection term, on the condition: ψ(φ) + ⟨pos(j), φ⟩ + ⟨c-embed(c), φ⟩."""

    def __init__(self, size: int, n_positions: int, ndf: int = 64, channels: int = 3,
                 position_encoding: str = "table", n_features: int = N_CONDITION):
        super().__init__(size, n_positions, ndf, channels, position_encoding)
        self.condition = ConditionEncoding(self.linear.in_features, n_features)

    def forward(self, x: torch.Tensor, position: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (M, 3, S, S), ``position`` (M,), ``cond`` (M, N_CONDITION) → logits (M,)."""
        if cond is None:
            raise ValueError("this Dslice is conditional: pass the condition (M, N_CONDITION)")
        h = self.features(x)
        return self.head(h, position) + (self.condition(cond) * h).sum(1)


class CondSlabDiscriminator(SlabDiscriminator):
    """Dslab with a projection term on the condition (and, as the unconditional one, optionally on the slab start)."""

    def __init__(self, size: int, slab_len: int, ndf: int = 64, n_positions: int | None = None,
                 n_features: int = N_CONDITION):
        super().__init__(size, slab_len, ndf, n_positions)
        self.condition = ConditionEncoding(self.linear.in_features, n_features)

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
    cond_z = bool(g("cond_z", False))
    n_feat = N_CONDITION + int(cond_z)
    gen = CondCTSGANGenerator(size, g("patient_dim"), g("slice_noise_dim"), g("slice_code_dim"), g("ngf"),
                              g("cond_dim", 8), position_input=bool(g("position_input", False)),
                              rv_init=g("rv_init", "random"), cond_z=cond_z)
    return {
        "generator": gen,
        "dslice": CondSliceDiscriminator(size, size - 2, g("ndf"), position_encoding=g("dslice_position", "table"),
                                         n_features=n_feat),
        "dslab": CondSlabDiscriminator(size, g("slab_len"), g("ndf"),
                                       n_positions=(size - 2) if g("dslab_position", False) else None,
                                       n_features=n_feat),
    }


__all__ = ["N_CONDITION", "COUNT_SCALE", "DIAMETER_SCALE_VOX", "condition_vector", "condition_of_nodules",
           "condition_table", "z_profile", "condition_with_z", "ConditionEncoding", "CondCTSGANGenerator",
           "CondSliceDiscriminator", "CondSlabDiscriminator", "build_ctsgan_cond"]

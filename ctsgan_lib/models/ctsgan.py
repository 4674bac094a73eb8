"""CT-SGAN networks (paper §2, Fig. 2), adapted from MoCoGAN (Tulyakov et al. 2018).

Four sub-networks, named as in the paper:

- :class:`SliceRNN` (Rv): a BiLSTM fed with per-slice noise ε_i and a random initial state (h0, c0) per volume, as in
  MoCoGAN (``ctsgan.rv_init="random"``, the default); learned constant h0, c0 are the option ``"learned"`` (what
  checkpoints from before issue 21 hold). It outputs a slice-specific code for every position of a volume.
- :class:`SliceGenerator` (Gslice): maps [patient noise, slice code] to one "3D slice" = 3 consecutive axial slices as
  channels, S×S. Patient noise is constant over a volume (patient/scanner-specific content).
- :class:`SliceDiscriminator` (Dslice): judges single 3D slices "with respect to the slice position" (a projection
  discriminator term with a learned position embedding, Miyato & Koyama 2018).
- :class:`SlabDiscriminator` (Dslab): a 3D-conv critic over a slab of T consecutive centre slices.

Volume assembly (:func:`assemble_volume`): S−2 three-channel slices; their centre channels give slices 1..S−2, the
first slice's first channel and the last slice's last channel give the end slices, so S slices in total.

Discriminators use no normalisation. Not BatchNorm: the WGAN-GP penalty is defined per sample and batch statistics
would couple samples (REFERENCES.md, MoCoGAN notes). Not InstanceNorm/LayerNorm either: with bias-free-ish
positively homogeneous layers they make the critic nearly blind to intensity scale (contrast), and the generator
then never learns the HU range (we saw exactly that: grey, low-contrast volumes).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..utils.precision import autocast
from .dcgan import downsampling_layers, start_size, upsampling_layers

#: Generator metadata used when a module carries no ``.meta`` (one built in memory, not loaded from a checkpoint).
DEFAULT_META = {"spacing_mm": (1.0, 1.0, 1.0), "hu_min": -1000.0, "hu_max": 400.0, "chunk": 32}


class SliceRNN(nn.Module):
    """Rv: a BiLSTM over per-slice noise from a random (per volume, MoCoGAN) or learned initial state; outputs one
    slice code per position.

    Parameters
    ----------
    slice_noise_dim : int
        Size of ε_i, the noise fed at each position.
    slice_code_dim : int
        Output size per position (both directions together, so it must be even).
    """

    INITS = ("random", "learned")
    #: seed of the fixed projection patient noise → (h0, c0) in the random mode (a constant, never trained)
    INIT_PROJ_SEED = 20211

    def __init__(self, slice_noise_dim: int, slice_code_dim: int, init: str = "learned", patient_dim: int = 0):
        super().__init__()
        if slice_code_dim % 2:
            raise ValueError(f"slice_code_dim must be even (two LSTM directions), got {slice_code_dim}")
        if init not in self.INITS:
            raise ValueError(f"ctsgan.rv_init must be one of {self.INITS}, got {init!r}")
        hidden = slice_code_dim // 2
        self.slice_noise_dim = slice_noise_dim
        self.init = init
        self.lstm = nn.LSTM(slice_noise_dim, hidden, batch_first=True, bidirectional=True)
        if init == "learned":
            # learned constants h0 and c0 (our first reading of "fed with random inputs (εi and h0)")
            self.h0 = nn.Parameter(torch.zeros(2, 1, hidden))
            self.c0 = nn.Parameter(torch.zeros(2, 1, hidden))
        else:
            # MoCoGAN: h0 ~ N(0, I) per volume. Drawn from the volume's own patient noise through a fixed orthogonal-ish
            # Gaussian projection (std 1/sqrt(patient_dim), so h0, c0 ~ N(0, I)): the volume stays a function of
            # volume_seed alone and the noise API is unchanged. Not a parameter; rebuilt identically at load.
            g = torch.Generator().manual_seed(self.INIT_PROJ_SEED)
            proj = torch.randn(max(1, patient_dim), 4 * hidden, generator=g) / max(1, patient_dim) ** 0.5
            self.register_buffer("init_proj", proj, persistent=False)

    def initial_state(self, batch: int, patient_noise: torch.Tensor | None, like: torch.Tensor):
        """(h0, c0), each (2, B, hidden): learned constants, or random per volume from ``patient_noise``."""
        hidden = self.lstm.hidden_size
        if self.init == "learned":
            return self.h0.expand(-1, batch, -1).contiguous(), self.c0.expand(-1, batch, -1).contiguous()
        if patient_noise is None:  # e.g. FLOP counting of Rv alone: a zero state has the same cost
            z = torch.zeros(4, batch, hidden, dtype=like.dtype, device=like.device)
        else:
            z = (patient_noise.to(like.dtype) @ self.init_proj.to(like.device)).view(batch, 4, hidden)
            z = z.permute(1, 0, 2)
        return z[:2].contiguous(), z[2:].contiguous()

    def forward(self, slice_noise: torch.Tensor, patient_noise: torch.Tensor | None = None) -> torch.Tensor:
        """``slice_noise`` (B, L, slice_noise_dim) → slice codes (B, L, slice_code_dim); ``patient_noise``
        (B, patient_dim) gives the random initial state (``init="random"``)."""
        b = slice_noise.shape[0]
        out, _ = self.lstm(slice_noise, self.initial_state(b, patient_noise, slice_noise))
        return out


class SliceGenerator(nn.Module):
    """Gslice: a DCGAN/MoCoGAN image generator from a code to one 3D slice (3 channels, S×S) in [-1, 1].

    ConvTranspose k=start s1 from 1×1 to start×start, then k4 s2 p1 upsampling stages; BatchNorm + ReLU after every
    layer but the last (Tanh); no biases before BatchNorm.

    Parameters
    ----------
    code_dim : int
        patient_dim + slice_code_dim.
    size : int
        S, the output side.
    ngf : int
        Width of the last hidden map (MoCoGAN: 64); earlier maps are up to 8× wider.
    channels : int
        3 (a "3D slice").
    """

    def __init__(self, code_dim: int, size: int, ngf: int = 64, channels: int = 3):
        super().__init__()
        self.net = nn.Sequential(*upsampling_layers(2, code_dim, channels, size, ngf))
        self.code_dim, self.size, self.channels = code_dim, size, channels

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        """``code`` (M, code_dim) → 3D slices (M, channels, S, S)."""
        return self.net(code[:, :, None, None])


class CTSGANGenerator(nn.Module):
    """Rv and Gslice together (the two networks Eq. 1 maximises over), with the noise layout.

    Parameters
    ----------
    size : int
        S.
    patient_dim, slice_noise_dim, slice_code_dim, ngf : int
        See :class:`~ctsgan_lib.config.CTSGANConfig`.
    position_input : bool
        Feed Rv the normalised slice position j / (S − 3) beside ε_j. Not in the paper (its Rv sees noise only and
        must infer absolute z from its learned initial state); an option because CT anatomy depends on absolute z.
    """

    def __init__(self, size: int, patient_dim: int, slice_noise_dim: int, slice_code_dim: int, ngf: int,
                 position_input: bool = False, rv_init: str = "learned"):
        super().__init__()
        self.size = size
        self.patient_dim = patient_dim
        self.slice_noise_dim = slice_noise_dim
        self.position_input = bool(position_input)
        self.rv = SliceRNN(slice_noise_dim + int(self.position_input), slice_code_dim, rv_init, patient_dim)
        self.gslice = SliceGenerator(patient_dim + slice_code_dim, size, ngf)

    @property
    def n_positions(self) -> int:
        """Number of 3D slices in an S-slice volume: S − 2."""
        return self.size - 2

    def sample_noise(self, batch: int, n_positions: int | None = None, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``patient_noise`` (B, patient_dim), constant over a volume, and ``slice_noise`` (B, L, dim)."""
        n = self.n_positions if n_positions is None else n_positions
        patient_noise = torch.randn(batch, self.patient_dim, generator=generator)
        slice_noise = torch.randn(batch, n, self.slice_noise_dim, generator=generator)
        return patient_noise.to(device), slice_noise.to(device)

    def rv_input(self, slice_noise: torch.Tensor) -> torch.Tensor:
        """Rv's per-position input: ε_j, with the normalised position beside it when ``position_input``."""
        if not self.position_input:
            return slice_noise
        # positions past S − 3 (volumes deeper than S) continue the same scale beyond 1
        z = torch.arange(slice_noise.shape[1], device=slice_noise.device, dtype=slice_noise.dtype)
        z = (z / max(1, self.n_positions - 1))[None, :, None].expand(slice_noise.shape[0], -1, 1)
        return torch.cat([slice_noise, z], dim=2)

    def codes(self, patient_noise: torch.Tensor, slice_noise: torch.Tensor) -> torch.Tensor:
        """Full codes (B, L, patient_dim + slice_code_dim): Rv's slice codes with the patient noise repeated."""
        slice_codes = self.rv(self.rv_input(slice_noise), patient_noise)
        pn = patient_noise[:, None, :].expand(-1, slice_codes.shape[1], -1)
        return torch.cat([pn, slice_codes], dim=2)

    def slices(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, K, D) → 3D slices (B, K, 3, S, S)."""
        b, k, d = codes.shape
        return self.gslice(codes.reshape(b * k, d)).view(b, k, self.gslice.channels, self.size, self.size)

    def forward(self, patient_noise: torch.Tensor, slice_noise: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """3D slices at ``positions`` (B, K) (all positions if None): Rv runs over the whole length, Gslice only on
        the requested positions, so Gslice memory does not grow with S."""
        return self.slices_at(self.codes(patient_noise, slice_noise), positions)

    def slices_at(self, codes: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """3D slices (B, K, 3, S, S) of ``codes`` at ``positions`` (B, K) (all positions if None)."""
        if positions is not None:
            codes = torch.gather(codes, 1, positions[:, :, None].expand(-1, -1, codes.shape[2]))
        return self.slices(codes)


def assemble_volume(slices3: torch.Tensor) -> torch.Tensor:
    """Assemble a volume from consecutive 3D slices (paper §2: "222 3D slices in total" for 224 slices).

    Parameters
    ----------
    slices3 : Tensor (..., L, 3, H, W)
        L consecutive 3D slices; channel c of slice j stands for volume slice j + c.

    Returns
    -------
    Tensor (..., L + 2, H, W)
        Centre channels give slices 1..L; slice 0 is the first 3D slice's channel 0 and slice L+1 the last 3D slice's
        channel 2.
    """
    first = slices3[..., :1, 0, :, :]
    centre = slices3[..., :, 1, :, :]
    last = slices3[..., -1:, 2, :, :]
    return torch.cat([first, centre, last], dim=-3)


class PositionEncoding(nn.Module):
    """A learned embedding of slice positions for the projection critics.

    ``"table"``: one free vector per position (``nn.Embedding``, Miyato & Koyama's class embedding). Each row learns
    only when its position is sampled, i.e. about B·N / (S − 2) times per step.
    ``"fourier"``: a linear map of smooth features of the normalised position z = j / (n − 1) ∈ [0, 1]
    (z, sin πkz, cos πkz for k = 1..K). Neighbouring positions share their statistics, so the critic learns where in
    the body a slice belongs from every sample, not from the few that hit one row.

    Parameters
    ----------
    kind : {"table", "fourier"}
    n_positions : int
        Positions 0 .. n − 1 (the table's rows; the fourier scale).
    dim : int
        Output size (the critic's feature width).
    n_freq : int
        K, the number of frequencies of the fourier features.
    """

    KINDS = ("table", "fourier")

    def __init__(self, kind: str, n_positions: int, dim: int, n_freq: int = 8):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"position encoding must be one of {self.KINDS}, got {kind!r}")
        self.kind, self.n_positions, self.n_freq = kind, n_positions, n_freq
        if kind == "table":
            self.embed = nn.Embedding(n_positions, dim)
            nn.init.normal_(self.embed.weight, std=0.02)
        else:
            self.proj = nn.Linear(1 + 2 * n_freq, dim)
            self.register_buffer("freqs", math.pi * torch.arange(1, n_freq + 1, dtype=torch.float32),
                                 persistent=False)

    def forward(self, position: torch.Tensor) -> torch.Tensor:
        """``position`` (M,) long → (M, dim)."""
        if self.kind == "table":
            return self.embed(position)
        z = (position.float() / max(1, self.n_positions - 1))[:, None]
        ang = z * self.freqs[None, :]
        return self.proj(torch.cat([z, torch.sin(ang), torch.cos(ang)], dim=1))


class SliceDiscriminator(nn.Module):
    """Dslice: a 2D conv critic over 3D slices, conditioned on the slice position by projection.

    Output = ψ(φ(x)) + ⟨embed(position), φ(x)⟩, where φ is the conv trunk with global mean pooling (mean, not
    sum: logits stay O(1) at any S, which keeps the gradient penalty well scaled). ``embed`` is a
    :class:`PositionEncoding` (``"table"``, the default and the paper-era projection critic, or ``"fourier"``).

    Parameters
    ----------
    size : int
        S.
    n_positions : int
        Number of positions the embedding knows (S − 2).
    ndf : int
        Width of the first conv (MoCoGAN: 64), doubling per stage up to 8×.
    channels : int
        3.
    position_encoding : {"table", "fourier"}
        See :class:`PositionEncoding`.
    """

    def __init__(self, size: int, n_positions: int, ndf: int = 64, channels: int = 3,
                 position_encoding: str = "table"):
        super().__init__()
        layers, width = downsampling_layers(2, channels, size, ndf)
        self.trunk = nn.Sequential(*layers)
        self.linear = nn.Linear(width, 1)
        self.position = PositionEncoding(position_encoding, n_positions, width)
        self.n_positions = n_positions
        self._register_load_state_dict_pre_hook(self._rename_old_embedding)

    @staticmethod
    def _rename_old_embedding(state_dict, prefix, *args):
        """Checkpoints written before :class:`PositionEncoding` existed kept the table at ``embed.weight``."""
        old = prefix + "embed.weight"
        if old in state_dict:
            state_dict[prefix + "position.embed.weight"] = state_dict.pop(old)

    def forward(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """``x`` (M, 3, S, S), ``position`` (M,) long in [0, S−2) → logits (M,)."""
        return self.head(self.features(x), position)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x): the pooled trunk features (M, width)."""
        return self.trunk(x).mean(dim=(2, 3))

    def head(self, h: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """ψ(h) + ⟨embed(position), h⟩ → (M,)."""
        return self.linear(h).squeeze(1) + (self.position(position) * h).sum(1)


class SlabDiscriminator(nn.Module):
    """Dslab: a 3D conv critic over a slab of T consecutive centre slices (B, 1, T, S, S).

    In-plane stride 2 at every stage (as MoCoGAN's video discriminator); along z stride 2 while the slab is still at
    least 8 slices deep, so any T >= 2 works. Global mean pooling then a linear head.

    With ``n_positions`` set (not in the paper), Dslab is also told where its slab starts, by the same projection as
    Dslice with a ``"fourier"`` :class:`PositionEncoding`: a slab of mid-chest slices then scores low at the apex.
    """

    def __init__(self, size: int, slab_len: int, ndf: int = 64, n_positions: int | None = None):
        super().__init__()
        s0 = start_size(size)
        n_down = int(round(math.log2(size // s0)))
        widths = [ndf * min(8, 2 ** k) for k in range(n_down)]
        layers: list[nn.Module] = []
        depth, cin = slab_len, 1
        for k, cout in enumerate(widths):
            sz = 2 if depth >= 8 else 1
            layers.append(nn.Conv3d(cin, cout, (3, 4, 4), (sz, 2, 2), (1, 1, 1)))
            layers.append(nn.LeakyReLU(0.2, True))
            depth = (depth - 1) // sz + 1
            cin = cout
        self.trunk = nn.Sequential(*layers)
        self.linear = nn.Linear(widths[-1], 1)
        self.slab_len = slab_len
        self.position = None if n_positions is None else PositionEncoding("fourier", n_positions, widths[-1])

    def forward(self, slab: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
        """``slab`` (B, 1, T, S, S), ``start`` (B,) long first position (used when position-conditioned) → (B,)."""
        return self.head(self.features(slab), start)

    def features(self, slab: torch.Tensor) -> torch.Tensor:
        """The pooled trunk features (B, width)."""
        return self.trunk(slab).mean(dim=(2, 3, 4))

    def head(self, h: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
        """The linear head plus, when position-conditioned, the slab-start projection → (B,)."""
        out = self.linear(h).squeeze(1)
        if self.position is not None:
            if start is None:
                raise ValueError("this Dslab is position-conditioned: pass the slab start positions")
            out = out + (self.position(start) * h).sum(1)
        return out


def config_getter(ct):
    """``get(key, default)`` over a :class:`~ctsgan_lib.config.CTSGANConfig` or the plain dict a checkpoint holds."""
    return (lambda k, d=None: ct.get(k, d)) if isinstance(ct, dict) else (lambda k, d=None: getattr(ct, k, d))


def build_ctsgan(size: int, ct) -> dict[str, nn.Module]:
    """The four networks from a :class:`~ctsgan_lib.config.CTSGANConfig` (or a dict with its fields) at side ``size``.

    Returns
    -------
    dict
        ``{"generator": CTSGANGenerator (rv + gslice), "dslice": SliceDiscriminator, "dslab": SlabDiscriminator}``.
    """
    g = config_getter(ct)
    gen = CTSGANGenerator(size, g("patient_dim"), g("slice_noise_dim"), g("slice_code_dim"), g("ngf"),
                          position_input=bool(g("position_input", False)),
                          rv_init=g("rv_init", "learned"))  # absent in pre-issue-21 checkpoints: learned h0, c0
    return {
        "generator": gen,
        "dslice": SliceDiscriminator(size, size - 2, g("ndf"), position_encoding=g("dslice_position", "table")),
        "dslab": SlabDiscriminator(size, g("slab_len"), g("ndf"),
                                   n_positions=(size - 2) if g("dslab_position", False) else None),
    }


def generator_meta(module: nn.Module) -> dict:
    """The generator's ``.meta`` (set by :func:`ctsgan_lib.synthesis.load_generator`) over :data:`DEFAULT_META`."""
    return {**DEFAULT_META, **getattr(module, "meta", {})}


@torch.no_grad()
def synthesize(generator: CTSGANGenerator, patient_noise: torch.Tensor, slice_noise: torch.Tensor,
               chunk: int | None = None, to_cpu: bool = True, cond: torch.Tensor | None = None) -> torch.Tensor:
    """Model-space volumes from explicit noise, streaming Gslice over chunks of positions.

    Parameters
    ----------
    generator : CTSGANGenerator
        Used as is (call ``.eval()`` first for batch-independent BatchNorm).
    patient_noise : Tensor (B, patient_dim)
    slice_noise : Tensor (B, L, slice_noise_dim)
        L = depth − 2 positions; L may exceed the training S − 2.
    chunk : int, optional
        Positions per Gslice call (default: the checkpoint's ``ctsgan.chunk``).
    to_cpu : bool
        Return the volumes on the CPU (default) or leave them on the generator's device.
    cond : Tensor (B, N_CONDITION), optional
        Conditions, for a conditional generator (:mod:`ctsgan_lib.models.ctsgan_cond`) only.

    Returns
    -------
    Tensor (B, L + 2, S, S) float32, in [-1, 1].
    """
    dev = next(generator.parameters()).device
    meta = generator_meta(generator)
    chunk = int(chunk or meta["chunk"])
    cond_args = () if cond is None else (cond.to(dev),)
    codes = generator.codes(patient_noise.to(dev), slice_noise.to(dev), *cond_args)   # (B, L, D): small
    b, n_pos, _ = codes.shape
    s = generator.size
    # assembled where it is generated: only the slices kept cross to the host, once (a third of Gslice's output)
    out = torch.empty(b, n_pos + 2, s, s, dtype=torch.float32, device=dev)
    for p0 in range(0, n_pos, chunk):
        with autocast(str(dev), bool(meta.get("bf16", False))):      # bf16 on CUDA only; CPU stays float32
            sl = generator.slices(codes[:, p0:p0 + chunk])                   # (B, k, 3, S, S)
        k = sl.shape[1]
        out[:, p0 + 1:p0 + 1 + k] = sl[:, :, 1]                         # centre channels: slices 1..L
        if p0 == 0:
            out[:, 0] = sl[:, 0, 0]                                     # first end slice
        if p0 + k == n_pos:
            out[:, n_pos + 1] = sl[:, -1, 2]                            # last end slice
    return out.cpu() if to_cpu else out



__all__ = ["PositionEncoding", "SliceRNN", "SliceGenerator", "CTSGANGenerator", "SliceDiscriminator", "SlabDiscriminator",
           "assemble_volume", "build_ctsgan", "config_getter", "DEFAULT_META", "generator_meta", "synthesize"]

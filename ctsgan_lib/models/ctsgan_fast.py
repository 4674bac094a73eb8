"""Opt-in fast generation path for CT-SGAN (issue 25, ours, not the paper's): same volumes to float/bf16 rounding.

:func:`~ctsgan_lib.models.ctsgan.synthesize` (the default, bit-reproducible path) runs Rv once per batch of volumes
and then Gslice on ``batch × chunk`` (volume, position) pairs at a time with Gslice's own BatchNorm layers. The fast
path, :func:`synthesize_fast`, changes only *how* the same arithmetic is scheduled:

- **BatchNorm folded** into the transposed convolution before it (eval mode: BN is a per-channel affine map, so
  ``BN(W ⋆ x) = (s·W) ⋆ x + (β − s·μ)`` with ``s = γ / sqrt(σ² + ε)``). One memory pass per layer fewer.
- **Flat slice batches**: all (volume, position) pairs of a call are flattened and Gslice runs on fixed-size batches
  of ``slice_batch`` of them (the last one zero-padded, so every call has one shape: what ``torch.compile`` and
  CUDA graphs need), written into the volume by an on-device index copy (no host synchronisation).
- **channels-last** Gslice (as :func:`~ctsgan_lib.synthesis.sampling.inference_layout`).
- optional **bf16 autocast** (on CUDA; also on the CPU so that tests can check its rounding there).
- optional **torch.compile** of the folded Gslice; when compiling fails (no compiler, unsupported platform) the eager
  module is used and a warning says so.

Volumes equal the default path's within float32 rounding (fp32; ``tests/test_ctsgan_fast.py`` bounds the difference
at 1e-5 in model units, i.e. 0.007 HU on a 1400 HU window) or within bf16 rounding (bf16: no further from the
float32 volume than the default code run under bf16 autocast is).
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .ctsgan import CTSGANGenerator


@dataclass(frozen=True)
class FastOptions:
    """Settings of :func:`synthesize_fast`.

    Attributes
    ----------
    slice_batch : int
        (volume, position) pairs per Gslice call; all calls get this shape (the last is padded).
    bf16 : bool
        bf16 autocast around Gslice (Rv stays float32; the volume is written as float32).
    compile : bool
        ``torch.compile`` the folded Gslice (off by default; skipped with a warning when it cannot compile).
    compile_mode : str or None
        Passed to ``torch.compile`` (e.g. ``"max-autotune"``, ``"reduce-overhead"`` for CUDA graphs).
    fold_bn : bool
        Fold eval-mode BatchNorm into the preceding transposed convolution.
    channels_last : bool
        Run the folded Gslice in channels-last memory format.
    """

    slice_batch: int = 1024
    bf16: bool = False
    compile: bool = False
    compile_mode: str | None = None
    fold_bn: bool = True
    channels_last: bool = True


def fold_batchnorm(net: nn.Sequential) -> nn.Sequential:
    """An inference copy of a ``ConvTranspose → BatchNorm → ReLU …`` stack with every BatchNorm folded into the
    transposed convolution before it (uses the running statistics: eval-mode semantics).

    Parameters
    ----------
    net : nn.Sequential
        Gslice's layer stack (``SliceGenerator.net``); left unchanged.

    Returns
    -------
    nn.Sequential
        Same layers without the BatchNorms; the convolutions carry the folded scale and a bias. In eval mode.
    """
    layers: list[nn.Module] = []
    mods = list(net)
    i = 0
    while i < len(mods):
        m = mods[i]
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        if isinstance(m, nn.ConvTranspose2d) and isinstance(nxt, nn.BatchNorm2d) and m.groups == 1:
            conv = copy.deepcopy(m)
            with torch.no_grad():
                scale = nxt.weight / torch.sqrt(nxt.running_var + nxt.eps)         # (C_out,)
                shift = nxt.bias - nxt.running_mean * scale
                # ConvTranspose2d weight is (C_in, C_out, kH, kW): the output channel is dim 1
                conv.weight.mul_(scale[None, :, None, None])
                bias = shift if m.bias is None else m.bias * scale + shift
                conv.bias = nn.Parameter(bias.clone())
            layers.append(conv)
            i += 2
            continue
        layers.append(copy.deepcopy(m))
        i += 1
    return nn.Sequential(*layers).eval()


def _params_version(module: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is modified in place (optimizer steps, ``load_state_dict``)."""
    return tuple((t.data_ptr(), t._version) for t in list(module.parameters()) + list(module.buffers()))


def fast_gslice(generator: CTSGANGenerator, options: FastOptions) -> nn.Module:
    """The Gslice module :func:`synthesize_fast` calls: folded / channels-last / compiled as ``options`` ask.

    Built once and cached on the generator; rebuilt when Gslice's weights change (in-place version counters).
    """
    key = (options.fold_bn, options.channels_last, options.compile, options.compile_mode,
           _params_version(generator.gslice))
    cache = generator.__dict__.setdefault("_fast_gslice_cache", {})
    if key in cache:
        return cache[key]
    cache.clear()
    net = fold_batchnorm(generator.gslice.net) if options.fold_bn else copy.deepcopy(generator.gslice.net).eval()
    if options.channels_last:
        net = net.to(memory_format=torch.channels_last)
    module: nn.Module = net
    if options.compile:
        module = try_compile(net, options.compile_mode)
    cache[key] = module
    return module


def try_compile(net: nn.Module, mode: str | None = None) -> nn.Module:
    """``torch.compile(net)``, or ``net`` itself with a warning when torch cannot compile here.

    Compilation is lazy in torch: the first call compiles. The returned wrapper runs that first call lazily too and
    falls back to eager on any compile error, so a missing C++ compiler or an unsupported platform never stops a run.
    """
    if not hasattr(torch, "compile"):
        warnings.warn("torch.compile is not available in this torch; generating eagerly", stacklevel=2)
        return net
    try:
        compiled = torch.compile(net, mode=mode, dynamic=False)
    except Exception as exc:   # noqa: BLE001 - any failure means: run eagerly
        warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); generating eagerly", stacklevel=2)
        return net
    return _EagerFallback(compiled, net)


class _EagerFallback(nn.Module):
    """Calls the compiled module; on the first call's failure, warns once and uses the eager one from then on."""

    def __init__(self, compiled: nn.Module, eager: nn.Module):
        super().__init__()
        self.compiled, self.eager, self.ok = compiled, eager, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ok is None:
            try:
                out = self.compiled(x)
                self.ok = True
                return out
            except Exception as exc:   # noqa: BLE001 - inductor/dynamo errors have no common base class
                warnings.warn(f"torch.compile failed at the first call ({type(exc).__name__}); generating eagerly",
                              stacklevel=2)
                self.ok = False
        return self.compiled(x) if self.ok else self.eager(x)


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA or CPU when asked (unlike ``utils.precision.autocast``, CPU too: tests check rounding)."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type if device.type in ("cuda", "cpu") else "cpu", dtype=torch.bfloat16)


@torch.no_grad()
def synthesize_fast(generator: CTSGANGenerator, patient_noise: torch.Tensor, slice_noise: torch.Tensor,
                    options: FastOptions | None = None, to_cpu: bool = True) -> torch.Tensor:
    """Model-space volumes from explicit noise, as :func:`~ctsgan_lib.models.ctsgan.synthesize` but scheduled for
    speed (see the module docstring).

    Parameters
    ----------
    generator : CTSGANGenerator
        In eval mode (BatchNorm folding uses the running statistics).
    patient_noise : Tensor (B, patient_dim)
    slice_noise : Tensor (B, L, slice_noise_dim)
    options : FastOptions, optional
    to_cpu : bool
        Return the volumes on the CPU (default) or leave them on the generator's device.

    Returns
    -------
    Tensor (B, L + 2, S, S) float32, in [-1, 1].
    """
    opts = options or FastOptions()
    if generator.training:
        raise ValueError("synthesize_fast folds BatchNorm with its running statistics: call generator.eval() first")
    dev = next(generator.parameters()).device
    gs = fast_gslice(generator, opts)
    codes = generator.codes(patient_noise.to(dev), slice_noise.to(dev))      # Rv once for the whole batch, float32
    b, n_pos, d = codes.shape
    s = generator.size
    m_total = b * n_pos
    step = max(1, min(int(opts.slice_batch), m_total))
    flat = codes.reshape(m_total, d)
    out = torch.empty(b, n_pos + 2, s, s, dtype=torch.float32, device=dev)
    out_rows = out.view(b * (n_pos + 2), s, s)
    memory_format = torch.channels_last if opts.channels_last else torch.contiguous_format
    for m0 in range(0, m_total, step):
        m1 = min(m0 + step, m_total)
        x = flat[m0:m1]
        if m1 - m0 < step:   # pad to the fixed shape (zero codes; their slices are dropped)
            x = torch.cat([x, x.new_zeros(step - (m1 - m0), d)])
        x = x[:, :, None, None].contiguous(memory_format=memory_format)
        with _autocast(dev, opts.bf16):
            sl = gs(x)[: m1 - m0]                                                   # (k, 3, S, S)
        # pair m = (volume v, position p): its centre channel is row v·(L+2) + p + 1 of the flat output
        m = torch.arange(m0, m1, device=dev)
        out_rows.index_copy_(0, m + 2 * torch.div(m, n_pos, rounding_mode="floor") + 1, sl[:, 1].float())
        # end slices: p == 0 gives slice 0 (channel 0), p == L − 1 gives slice L + 1 (channel 2); an arithmetic
        # progression inside the batch, so plain slicing (no host sync)
        first = (-m0) % n_pos
        if first < m1 - m0:
            v0 = (m0 + first) // n_pos
            ends = sl[first::n_pos, 0]
            out[v0:v0 + ends.shape[0], 0] = ends.float()
        last = (n_pos - 1 - m0) % n_pos
        if last < m1 - m0:
            v0 = (m0 + last) // n_pos
            ends = sl[last::n_pos, 2]
            out[v0:v0 + ends.shape[0], n_pos + 1] = ends.float()
    return out.cpu() if to_cpu else out


__all__ = ["FastOptions", "fold_batchnorm", "fast_gslice", "try_compile", "synthesize_fast"]

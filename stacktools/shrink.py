"""Make particles smaller: real-space crop, Fourier crop and float16, as array functions.

Each function takes a batch ``(m, ny, nx)`` of particles and returns a new batch;
:class:`ShrinkSpec` composes them in CryoSPARC's Downsample order: crop in real
space, then Fourier crop, then convert the pixel type. ``stacks.py`` calls
:meth:`ShrinkSpec.apply` once per bounded batch, so memory stays within a few
chunks whatever the size of the set.

Conventions, compared with other tools:

- **Real-space crop** (tested pixel for pixel against ``relion_image_handler --new_box``
  for even and odd boxes and sizes) keeps the window ``[box//2 - N//2, box//2 - N//2 + N)`` on
  both axes, as RELION's ``relion_image_handler --new_box`` does (its origin is
  pixel ``box//2``, and the window runs from ``-N//2`` to ``N - N//2 - 1`` about it).
  The centre pixel ``box//2`` lands on ``N//2``, so alignment shifts, measured from
  that centre, are unchanged by a crop.
- **Fourier crop** keeps the frequencies ``-N/2 .. N/2-1`` of the Fourier transform
  (the standard FFT, not a Hartley transform) and scales by ``(N/box)^2`` so the
  mean (the DC term) is preserved: it equals
  ``real(ifft2(ifftshift(crop(fftshift(fft2(x)))))) * (N/box)^2``. It is computed
  with real FFTs in float64 (only the kept columns are transformed along y); on the
  Nyquist row and column the real
  inverse keeps the Hermitian part of the cropped spectrum, which is exactly the
  real part the reference takes, so the two agree to rounding. Nothing is padded
  and nothing is windowed.
- **RELION** (``relion_image_handler --rescale_angpix P·box/N --new_box N``, 3.1) gives
  the same images: on ``tests/data/relion/relion31.mrcs`` (256 → 128) the mean and
  the scale are identical and every Fourier coefficient strictly inside the Nyquist
  lines agrees to 2e-7 (relative); only the Nyquist row and column (|k| = N/2)
  differ, because RELION takes them from one side of its half-complex transform
  rather than symmetrising them; that is about 5% of the image's std, all at Nyquist.
- **cryoDRGN** 4.3's ``downsample -D N`` crops the Hartley transform and does not
  rescale: on ``tests/data/relion/relion31.mrcs`` (256 → 128) its images are
  stacktools' times ``(box/N)^2`` (the mean too: ×4 here); divided by that they agree
  to 1e-6 of the std off the Nyquist lines, and the Nyquist row and column differ
  (max 0.24, rms 0.06 of the std), since a Hartley crop keeps the −N/2 coefficient
  of the Hartley transform, a mix of the two Fourier sides.
- **float16** rounds to nearest; any value beyond ``±65504`` (including ±inf) is a
  :class:`~stacktools.errors.Float16RangeError` naming the particle, never a silent
  infinity. NaNs pass through unchanged (``stacktools check`` reports them).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from stacktools.errors import Float16RangeError, ShrinkError

FLOAT16_MAX = float(np.finfo(np.float16).max)

# k -> a one-line description of particle k of the batch, for error messages
Describe = Callable[[int], str]


def crop_window(box: int, n: int) -> slice:
    """The centred window of length ``n`` in an axis of length ``box`` (RELION's rounding)."""
    start = box // 2 - n // 2
    return slice(start, start + n)


def crop(batch: np.ndarray, n: int) -> np.ndarray:
    """Crop each particle of ``(m, box, box)`` to its centred ``n × n`` window."""
    box = batch.shape[-1]
    w = crop_window(box, n)
    return batch[..., w, w]


# Particles transformed at a time: their buffers stay in the CPU's cache, and they
# are reused (per thread), so no call allocates or faults in fresh pages; fresh
# pages cost more than the FFT itself on a 256-pixel box. The FFT is float64:
# NumPy's float32 real FFT allocates a temporary on every call (and is no faster).
FFT_BLOCK_BYTES = 512 * 2**10
_workspaces = threading.local()


class _Workspace:
    """The buffers of one Fourier crop of ``m`` particles from ``box`` to ``n``."""

    def __init__(self, m: int, box: int, n: int):
        h = n // 2
        self.x = np.empty((m, box, box), np.float64)
        self.rows = np.empty((m, box, box // 2 + 1), np.complex128)  # rfft of each row
        self.cols = np.empty((m, h + 1, box), np.complex128)  # the kept columns, [kx, y]
        self.f = np.empty((m, h + 1, box), np.complex128)  # [kx, ky]
        self.c = np.empty((m, h + 1, n), np.complex128)  # cropped, [kx, ky]
        self.g = np.empty((m, h + 1, n), np.complex128)  # [kx, y]
        self.o = np.empty((m, n, n), np.float64)


def _workspace(m: int, box: int, n: int) -> _Workspace:
    key = (m, box, n)
    ws = getattr(_workspaces, "by_shape", None)
    if ws is None:
        ws = _workspaces.by_shape = {}
    if key not in ws:
        ws.clear()  # one shape at a time per thread
        ws[key] = _Workspace(m, box, n)
    return ws[key]


def fourier_crop(batch: np.ndarray, n: int) -> np.ndarray:
    """Fourier-crop each particle of ``(m, box, box)`` to ``(m, n, n)``, keeping the mean.

    NumPy's FFT releases the GIL, so ``stacks.py`` runs batches on several threads.
    """
    box = batch.shape[-1]
    out = np.empty((len(batch), n, n), np.float32)
    step = max(1, FFT_BLOCK_BYTES // (box * box * 8))
    for a in range(0, len(batch), step):
        b = min(len(batch), a + step)
        _fourier_crop_block(batch[a:b], n, out[a:b], _workspace(b - a, box, n))
    return out


def _fourier_crop_block(batch: np.ndarray, n: int, out: np.ndarray, ws: _Workspace) -> None:
    box = batch.shape[-1]
    h = n // 2
    # The mean goes around the FFT, not through it, so a large mean over a small std
    # (raw counts) comes back exactly.
    mean = batch.mean(axis=(-2, -1), dtype=np.float64, keepdims=True)
    np.subtract(batch, mean, out=ws.x, dtype=np.float64)
    # The crop keeps half-spectrum columns 0..h only: transform the rows, drop the
    # other columns, then transform what is left along y. Columns are made the last
    # axis (f[..., kx, ky]) because NumPy's FFT is fastest along the last axis.
    np.fft.rfft(ws.x, axis=-1, out=ws.rows)
    np.copyto(ws.cols, ws.rows[..., :h + 1].swapaxes(-1, -2))
    f = np.fft.fft(ws.cols, axis=-1, out=ws.f)
    # ky = 0..h-1, then -h..-1. The reference keeps -h but not +h; the real part it
    # takes is the Hermitian part, which on the Nyquist line is the mean of the
    # source's -h and +h (and the +h value in the corner).
    c = ws.c
    c[..., :h] = f[..., :h]
    c[..., h:] = f[..., box - h:]
    c[..., :h, h] = (c[..., :h, h] + f[..., :h, h]) / 2
    c[..., h, h] = f[..., h, h]
    g = np.fft.ifft(c, axis=-1, out=ws.g)
    o = np.fft.irfft(g.swapaxes(-1, -2), n=n, axis=-1, out=ws.o)
    o *= (n / box) ** 2
    o += mean
    out[...] = o  # rounded to float32 once, at the end


def to_float16(batch: np.ndarray, describe: Describe | None = None) -> np.ndarray:
    """Convert to float16, refusing any finite or infinite value beyond its range.

    The error's ``particle`` is the offending particle's position in the batch.
    """
    too_big = np.abs(batch) > FLOAT16_MAX  # NaN compares False: passes through
    if too_big.any():
        k = int(np.flatnonzero(too_big.reshape(len(batch), -1).any(axis=1))[0])
        worst = float(np.max(np.abs(np.nan_to_num(batch[k], nan=0.0))))
        where = describe(k) if describe else f"particle {k}"
        err = Float16RangeError(f"{where}: value {worst:.6g} is beyond float16's range "
                                f"(±{FLOAT16_MAX:g}); use float32 or normalise the stack first")
        err.particle = k
        raise err
    return batch.astype(np.float16)


@dataclass(frozen=True)
class ShrinkSpec:
    """What to do to each particle: crop to ``crop``, then Fourier-crop to ``fourier_crop``."""

    crop: int | None = None
    fourier_crop: int | None = None

    def __bool__(self) -> bool:
        return bool(self.crop or self.fourier_crop)

    def check(self, box: int, where: str) -> None:
        """Refuse sizes that cannot apply to a ``box``-pixel particle of ``where``."""
        if self.crop is not None:
            if self.crop < 1 or self.crop > box:
                raise ShrinkError(f"{where}: cannot crop a {box}-pixel box to {self.crop} "
                                  f"(the crop box must be between 1 and {box})")
        inner = self.crop or box
        if self.fourier_crop is not None:
            n = self.fourier_crop
            if n % 2 or n < 2:
                raise ShrinkError(f"{where}: the Fourier-crop box must be even and at least 2, not {n}")
            if n >= inner:
                raise ShrinkError(f"{where}: cannot Fourier-crop a {inner}-pixel box to {n} "
                                  f"(the Fourier-crop box must be smaller than {inner})")

    def out_box(self, box: int) -> int:
        """Box of the particles written."""
        return self.fourier_crop or self.crop or box

    def pixel_factor(self, box: int) -> float:
        """New pixel size over old: ``box/N`` for a Fourier crop, 1 for a crop."""
        inner = self.crop or box
        return inner / self.fourier_crop if self.fourier_crop else 1.0

    def apply(self, batch: np.ndarray, out_dtype: np.dtype, describe: Describe | None = None) -> np.ndarray:
        """Shrink a batch ``(m, box, box)`` and convert it to ``out_dtype``."""
        x = batch
        if self.crop is not None:
            x = crop(x, self.crop)
        if self.fourier_crop is not None:
            x = fourier_crop(x, self.fourier_crop)
        out_dtype = np.dtype(out_dtype)
        if out_dtype.kind == "f" and out_dtype.itemsize == 2:
            return to_float16(x, describe).astype(out_dtype, copy=False)
        return np.ascontiguousarray(x, dtype=out_dtype)


def shrink_fields(data: np.ndarray, spec: ShrinkSpec, box: int, *, copy: bool = True) -> np.ndarray:
    """The ``.cs`` rows as they describe particles shrunk by ``spec`` from ``box``
    (with ``copy=False``, ``data`` itself, rewritten in place).

    ``blob/shape`` becomes the written box and ``blob/psize_A`` grows by
    ``box/N`` for a Fourier crop; alignment shifts (in pixels) shrink by the same
    factor and ``alignments*/psize_A`` follow. A centred crop changes neither
    (the centre pixel stays the centre). CTF fields are in Å and stay as they are.
    """
    if not spec:
        return data
    out = data.copy() if copy else data
    names = out.dtype.names or ()
    factor = spec.pixel_factor(box)
    if "blob/shape" in names:
        out["blob/shape"] = spec.out_box(box)
    for name in names:
        if name == "blob/psize_A" or (name.startswith("alignments") and name.endswith("/psize_A")):
            out[name] = out[name] * factor
        elif name.startswith("alignments") and name.endswith("/shift"):
            out[name] = out[name] / factor
    return out


# RELION 3.0's origins are in pixels of the particle image; 3.1's ``...Angst`` are in Å.
STAR_PIXEL_ORIGINS = ("rlnOriginX", "rlnOriginY", "rlnOriginZ", "rlnOriginXPrior", "rlnOriginYPrior")


def shrink_star(blocks: dict, particles_key: str, spec: ShrinkSpec, box: int, where: str) -> dict:
    """The blocks of a particle STAR as they describe particles shrunk by ``spec`` from ``box``.

    What RELION's own extraction with ``--scale`` writes: in RELION 3.1 the optics
    table's ``rlnImageSize`` becomes the written box and ``rlnImagePixelSize``
    grows by ``box/N`` (``rlnImageSize`` is added when absent); in a RELION 3.0
    single table ``rlnDetectorPixelSize`` grows instead (``rlnMagnification``
    stays). Origins in pixels (3.0's ``rlnOriginX/Y``) shrink by ``N/box``; origins
    in Å, micrograph coordinates and CTF values stay as they are.

    Raises:
        ShrinkError: A Fourier crop of a file that gives no pixel size to rescale.
    """
    if not spec:
        return blocks
    import pandas as pd

    factor = spec.pixel_factor(box)
    n = spec.out_box(box)
    out = dict(blocks)
    parts = out[particles_key].copy()
    optics = out.get("optics") if particles_key != "optics" else None
    has_optics = isinstance(optics, pd.DataFrame)
    if has_optics:
        optics = optics.copy()
        optics["rlnImageSize"] = np.full(len(optics), n, np.int64)
        if "rlnImagePixelSize" in optics:
            optics["rlnImagePixelSize"] = optics["rlnImagePixelSize"].astype(np.float64) * factor
        elif factor != 1 and "rlnImagePixelSize" not in parts:
            raise ShrinkError(f"{where}: data_optics has no rlnImagePixelSize, so the Fourier-cropped "
                              "pixel size cannot be written; add it to the optics table")
        out["optics"] = optics
    if "rlnImageSize" in parts:
        parts["rlnImageSize"] = np.full(len(parts), n, np.int64)
    scaled_psize = False
    for name in ("rlnImagePixelSize", "rlnDetectorPixelSize"):
        if name in parts and (name != "rlnDetectorPixelSize" or "rlnMagnification" in parts):
            parts[name] = parts[name].astype(np.float64) * factor
            scaled_psize = True
    if factor != 1 and not has_optics and not scaled_psize:
        raise ShrinkError(f"{where}: a RELION 3.0 STAR without rlnDetectorPixelSize and rlnMagnification "
                          "(or rlnImagePixelSize) gives no pixel size for the Fourier-cropped particles")
    for name in STAR_PIXEL_ORIGINS:
        if name in parts:
            parts[name] = parts[name].astype(np.float64) / factor
    out[particles_key] = parts
    return out

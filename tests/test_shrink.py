"""The pixel transforms of stacktools.shrink against a plain NumPy reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stacktools.errors import Float16RangeError, ShrinkError
from stacktools.shrink import ShrinkSpec, crop, fourier_crop, to_float16
from tests.independent import header, read_particle

DATA = Path(__file__).parent / "data"


def reference_fourier_crop(x: np.ndarray, n: int) -> np.ndarray:
    """real(ifft2(ifftshift(crop(fftshift(fft2(x)))))) * (n/box)^2, in float64."""
    box = x.shape[-1]
    f = np.fft.fftshift(np.fft.fft2(x.astype(np.float64)), axes=(-2, -1))
    lo = box // 2 - n // 2
    c = f[..., lo:lo + n, lo:lo + n]
    return np.real(np.fft.ifft2(np.fft.ifftshift(c, axes=(-2, -1)))) * (n / box) ** 2


def assert_close_to_reference(x: np.ndarray, n: int) -> None:
    got = fourier_crop(x, n)
    want = reference_fourier_crop(x, n)
    assert got.shape == (len(x), n, n) and got.dtype == np.float32
    for k in range(len(x)):
        # 1e-5 of the image's std, or two float32 steps at the values' magnitude when
        # that is coarser: the output is float32, and a large mean with a small spread
        # (-30 ± 0.1) cannot be written closer than its float32 rounding.
        floor = 2 * float(np.spacing(np.float32(np.max(np.abs(want[k])))))
        tol = max(1e-5 * float(np.std(x[k])), floor, 1e-30)
        assert np.max(np.abs(got[k] - want[k])) <= tol, k


@settings(max_examples=40, deadline=None)
@given(box_half=st.integers(2, 40), data=st.data())
def test_fourier_crop_matches_numpy_reference_on_random_images(box_half, data):
    box = 2 * box_half
    n = 2 * data.draw(st.integers(1, box_half - 1))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(3, box, box)) * rng.uniform(0.01, 100) + rng.uniform(-50, 50)).astype(np.float32)
    assert_close_to_reference(x, n)


def test_fourier_crop_matches_numpy_reference_on_the_relion_stack():
    path = DATA / "relion" / "relion31.mrcs"
    h = header(path)
    x = np.stack([read_particle(path, k) for k in range(h["nz"])]).astype(np.float32)
    box = h["nx"]
    for n in sorted({(box // 2) & ~1, (box * 3 // 4) & ~1, 2 * ((box - 1) // 2)}):
        if 2 <= n < box:
            assert_close_to_reference(x, n)


def test_fourier_crop_preserves_the_mean():
    rng = np.random.default_rng(1)
    x = rng.normal(3.5, 2.0, size=(4, 64, 64)).astype(np.float32)
    got = fourier_crop(x, 20)
    np.testing.assert_allclose(got.mean(axis=(1, 2)), x.mean(axis=(1, 2)), rtol=1e-5)


def test_band_limited_image_survives_crop_and_zero_pad():
    box, n = 64, 32
    rng = np.random.default_rng(7)
    spec = np.zeros((box, box), complex)
    h = n // 2
    # Frequencies strictly inside the cropped band (Nyquist excluded), Hermitian by construction.
    spec[:h, :h] = rng.normal(size=(h, h)) + 1j * rng.normal(size=(h, h))
    spec[box - h + 1:, :h] = rng.normal(size=(h - 1, h)) + 1j * rng.normal(size=(h - 1, h))
    x = np.real(np.fft.ifft2(spec)).astype(np.float64)
    small = fourier_crop(x[None].astype(np.float32), n)[0].astype(np.float64)
    # Zero-pad back to box in Fourier space, undoing the (n/box)^2 scale.
    f = np.fft.fftshift(np.fft.fft2(small))
    big = np.zeros((box, box), complex)
    lo = box // 2 - n // 2
    big[lo:lo + n, lo:lo + n] = f
    back = np.real(np.fft.ifft2(np.fft.ifftshift(big))) * (box / n) ** 2
    assert np.max(np.abs(back - x)) <= 1e-5 * np.std(x)


@pytest.mark.parametrize("box,n,start", [(10, 4, 3), (10, 5, 3), (9, 4, 2), (9, 5, 2), (8, 8, 0)])
def test_crop_window_is_centred_as_relion_rounds(box, n, start):
    x = np.arange(box * box, dtype=np.float32).reshape(1, box, box)
    got = crop(x, n)
    np.testing.assert_array_equal(got[0], x[0, start:start + n, start:start + n])
    # The centre pixel box//2 lands on n//2: shifts measured from it are unchanged.
    assert got[0, n // 2, n // 2] == x[0, box // 2, box // 2]


def test_spec_applies_crop_then_fourier_crop_then_float16():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 48, 48)).astype(np.float32)
    spec = ShrinkSpec(crop=40, fourier_crop=20)
    got = spec.apply(x, np.dtype("<f2"))
    want = reference_fourier_crop(x[:, 4:44, 4:44], 20).astype(np.float16)
    assert got.dtype == np.float16 and got.shape == (2, 20, 20)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), atol=2e-3)
    assert spec.out_box(48) == 20 and spec.pixel_factor(48) == 2.0


@pytest.mark.parametrize("spec,fragment", [
    (ShrinkSpec(fourier_crop=31), "even"),
    (ShrinkSpec(fourier_crop=64), "smaller than 64"),
    (ShrinkSpec(fourier_crop=80), "smaller than 64"),
    (ShrinkSpec(crop=65), "between 1 and 64"),
    (ShrinkSpec(crop=40, fourier_crop=40), "smaller than 40"),
])
def test_spec_refuses_sizes_that_cannot_apply(spec, fragment):
    with pytest.raises(ShrinkError, match=fragment) as e:
        spec.check(64, "stack.mrcs")
    assert "\n" not in str(e.value) and "stack.mrcs" in str(e.value)


def test_float16_overflow_names_the_particle():
    x = np.zeros((3, 4, 4), np.float32)
    x[2, 1, 1] = 1e6
    with pytest.raises(Float16RangeError) as e:
        to_float16(x, lambda k: f"a.mrcs particle {k} (row {10 + k})")
    msg = str(e.value)
    assert "a.mrcs particle 2 (row 12)" in msg and "1e+06" in msg and "\n" not in msg


def test_float16_keeps_values_in_range_and_nan():
    x = np.array([[[65504.0, -65504.0], [np.nan, 1.5]]], np.float32)
    got = to_float16(x)
    assert got.dtype == np.float16 and np.isnan(got[0, 1, 0]) and not np.isinf(got).any()

"""Corruptions built from albumentations against the reference definitions (imagecorruptions)."""

from __future__ import annotations

import importlib
import os
import sys
import types

import numpy as np
import pytest

from detseg.errors import InputError
from detseg.eval.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    corrupt,
    parse_corruptions,
    parse_severities,
)


@pytest.fixture(scope="module")
def images(assets):
    from detseg.data.images import read_image

    files = sorted((assets / "coco-val-11" / "images").glob("*.jpg"))[:4]
    return [read_image(f) for f in files]


@pytest.fixture(scope="module")
def reference():
    """imagecorruptions' `corrupt`. Version 1.1.2 imports pkg_resources (gone from recent
    setuptools) and uses np.float_ (gone in numpy 2): both are provided for the import only
    where missing, and removed again afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            stub = types.ModuleType("pkg_resources")
            stub.resource_filename = lambda pkg, name: os.path.join(
                os.path.dirname(importlib.import_module(pkg).__file__), name)
            mp.setitem(sys.modules, "pkg_resources", stub)
        if not hasattr(np, "float_"):
            mp.setattr(np, "float_", np.float64, raising=False)
        ic = pytest.importorskip("imagecorruptions", reason="the bench extra is not installed")

        def ref(image, name, severity, seed=0):
            np.random.seed(seed)
            return np.asarray(ic.corrupt(image, severity=severity, corruption_name=name), np.float64)

        yield ref


def _rms(a, b):
    return float(np.sqrt(((np.asarray(a, float) - np.asarray(b, float)) ** 2).mean()))


def test_every_corruption_builds_and_strengthens_with_severity(images):
    im = images[0]
    for name in CORRUPTIONS:
        change = [_rms(corrupt(im, name, s, seed=1), im) for s in SEVERITIES]
        assert all(c > 0 for c in change), name
        assert change[-1] > change[0], (name, change)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_deterministic_per_seed_and_severity_zero_is_identity(images, name):
    im = images[1]
    a = corrupt(im, name, 3, seed=7)
    b = corrupt(im.copy(), name, 3, seed=7)
    assert np.array_equal(a, b) and a.shape == im.shape and a.dtype == np.uint8
    assert corrupt(im, name, 0, seed=7) is im
    if name in ("gaussian_noise", "shot_noise", "fog", "motion_blur"):  # random ones
        assert not np.array_equal(a, corrupt(im, name, 3, seed=8))


@pytest.mark.parametrize("text, bad", [("gaussian_noise,snow", "snow"), ("blur", "blur")])
def test_unknown_corruption_lists_the_valid_ones(text, bad):
    with pytest.raises(InputError) as e:
        parse_corruptions(text)
    msg = str(e.value)
    assert bad in msg and all(n in msg for n in CORRUPTIONS) and "\n" not in msg


@pytest.mark.parametrize("text", ["0", "6", "1,x", "-1"])
def test_unknown_severity_lists_the_valid_ones(text):
    with pytest.raises(InputError, match=r"valid: 1, 2, 3, 4, 5"):
        parse_severities(text)


def test_parse_defaults_and_order():
    assert parse_corruptions(None) == list(CORRUPTIONS)
    assert parse_corruptions("fog, contrast,fog") == ["fog", "contrast"]
    assert parse_severities("5,1,3,1") == [1, 3, 5]


# ---- against the reference definitions ------------------------------------------------------
def test_defocus_blur_matches_the_reference(images, reference):
    for s in SEVERITIES:
        for im in images[:2]:
            diff = np.abs(corrupt(im, "defocus_blur", s).astype(float) - reference(im, "defocus_blur", s))
            assert diff.mean() < 0.6, (s, diff.mean())  # rounding and kernel-size differences


def test_gaussian_noise_has_the_reference_std(reference):
    flat = np.full((256, 256, 3), 128, np.uint8)
    for s, std in zip(SEVERITIES, (.08, .12, .18, .26, .38), strict=True):
        noise = corrupt(flat, "gaussian_noise", s).astype(float) - 128
        ref = reference(flat, "gaussian_noise", s) - 128
        assert np.std(noise) == pytest.approx(np.std(ref), rel=0.02), s  # both clipped alike
        if s <= 2:  # no clipping yet: the std itself
            assert np.std(noise) / 255 == pytest.approx(std, rel=0.02)


@pytest.mark.parametrize("name, rel", [("shot_noise", 0.12), ("motion_blur", 0.15), ("fog", 0.15),
                                       ("brightness", 0.05), ("contrast", 0.08), ("pixelate", 0.15),
                                       ("jpeg_compression", 0.1)])
def test_change_per_severity_is_close_to_the_reference(images, reference, name, rel):
    """RMS change from the clean image, averaged over 4 real images, per severity."""
    for s in SEVERITIES:
        ours = np.mean([_rms(corrupt(im, name, s), im) for im in images])
        ref = np.mean([_rms(reference(im, name, s), im) for im in images])
        assert ours == pytest.approx(ref, rel=rel), (name, s, ours, ref)


@pytest.mark.parametrize("name, tol", [("brightness", 2.5), ("contrast", 3.0), ("pixelate", 6.5)])
def test_deterministic_ones_match_the_reference_pixels(images, reference, name, tol):
    for s in SEVERITIES:
        diff = np.abs(corrupt(images[2], name, s).astype(float) - reference(images[2], name, s))
        assert diff.mean() < tol, (name, s, diff.mean())


def test_jpeg_loses_as_much_as_the_reference(images, reference):
    """OpenCV's encoder, not Pillow's: the block artefacts differ, the loss (PSNR) does not."""
    def psnr(a, b):
        return 10 * np.log10(255 ** 2 / np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2))

    for s in SEVERITIES:
        ours = np.mean([psnr(corrupt(im, "jpeg_compression", s), im) for im in images])
        ref = np.mean([psnr(reference(im, "jpeg_compression", s), im) for im in images])
        assert abs(ours - ref) < 1.0, (s, ours, ref)

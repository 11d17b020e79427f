"""Image corruptions at five severities, built from albumentations transforms.

Follows the benchmark of Michaelis et al. 2019 ("Benchmarking Robustness in Object
Detection"), whose reference definitions and parameters are in the ``imagecorruptions``
package (``imagecorruptions.corruptions``). Each corruption here is an albumentations
transform (or two) whose parameters were set from the reference's, per severity:

============== ============================================ ==================================
name           albumentations                               against imagecorruptions
============== ============================================ ==================================
gaussian_noise GaussNoise, std = .08 .12 .18 .26 .38        same distribution (std of [0,1])
shot_noise     ShotNoise, scale = 1/60 1/25 1/12 1/5 1/3    albumentations draws the Poisson
                                                            noise in linear light (gamma 2.2):
                                                            same RMS change (+-5%), but darker
                                                            (mean 61 vs 88 at severity 5)
motion_blur    MotionBlur, kernel 7 13 23 35 51,            reference: one-sided Gaussian-
               angle 135-225 deg (= -45..45 mod 180)        weighted streak (radius, sigma);
                                                            here a uniform line; kernel sizes
                                                            chosen to match the RMS change
defocus_blur   Defocus, radius 3 4 6 8 10, alias .1 .5 .5   same disk kernel: outputs differ by
               .5 .5                                        rounding only
jpeg           ImageCompression, quality 25 18 15 10 7      OpenCV's encoder, not Pillow's:
                                                            PSNR within 1 dB of the reference
brightness     HueSaturationValue, V += .1 .2 .3 .4 .5      same HSV value shift (in uint8)
contrast       RandomBrightnessContrast, factor .4 .3 .2    reference takes the mean per
               .1 .05 around the image mean                 channel, albumentations over all
fog            RandomBrightnessContrast (x / (1 + c)) then  reference: the same two steps with
               PlasmaBrightnessContrast (+ c/(1+c) plasma,  its own plasma fractal, made at the
               c = 1.5 2 2.5 2.5 3, roughness .56 / wibble- next power of 2 and cropped; ours
               decay)                                       is made at the image size
pixelate       Downscale (area down, nearest up), scale     reference: Pillow box down, nearest
               .6 .5 .4 .3 .25                              up; mean |diff| 4-6 levels
============== ============================================ ==================================

Severity 0 is the image itself. Randomness is seeded per image from (seed, corruption,
severity, the image's pixels), so the same image gets the same corruption whatever the
batch or order it comes in.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from detseg.errors import InputError

SEVERITIES = (1, 2, 3, 4, 5)
_DEFINITIONS = 2  # bump when a transform changes in a way the parameters below do not show

# Reference parameters (imagecorruptions 1.1.2, corruptions.py), per severity 1..5.
_GAUSS_STD = (.08, .12, .18, .26, .38)
_SHOT_C = (60, 25, 12, 5, 3)
_MOTION_KERNEL = (7, 13, 23, 35, 51)  # calibrated to the reference's RMS change (see module doc)
_DEFOCUS = ((3, .1), (4, .5), (6, .5), (8, .5), (10, .5))
_JPEG_Q = (25, 18, 15, 10, 7)
_BRIGHT = (.1, .2, .3, .4, .5)
_CONTRAST = (.4, .3, .2, .1, .05)
_FOG = ((1.5, 2.), (2., 2.), (2.5, 1.7), (2.5, 1.5), (3., 1.4))
_FOG_ROUGHNESS = 0.56
_PIXELATE = (.6, .5, .4, .3, .25)


def _gaussian_noise(s: int) -> list:
    import albumentations as A

    std = _GAUSS_STD[s - 1]
    return [A.GaussNoise(std_range=(std, std), mean_range=(0, 0), per_channel=True, p=1)]


def _shot_noise(s: int) -> list:
    import albumentations as A

    k = 1 / _SHOT_C[s - 1]
    return [A.ShotNoise(scale_range=(k, k), p=1)]


def _motion_blur(s: int) -> list:
    import albumentations as A

    k = _MOTION_KERNEL[s - 1]
    return [A.MotionBlur(blur_limit=(k, k), allow_shifted=False, angle_range=(135, 225),
                         direction_range=(0, 0), p=1)]


def _defocus_blur(s: int) -> list:
    import albumentations as A

    r, a = _DEFOCUS[s - 1]
    return [A.Defocus(radius=(r, r), alias_blur=(a, a), p=1)]


def _jpeg(s: int) -> list:
    import albumentations as A

    q = _JPEG_Q[s - 1]
    return [A.ImageCompression(compression_type="jpeg", quality_range=(q, q), p=1)]


def _brightness(s: int) -> list:
    import albumentations as A

    v = _BRIGHT[s - 1] * 255
    return [A.HueSaturationValue(hue_shift_limit=(0, 0), sat_shift_limit=(0, 0),
                                 val_shift_limit=(v, v), p=1)]


def _contrast(s: int) -> list:
    import albumentations as A

    c = _CONTRAST[s - 1]
    # alpha * x + beta * mean(x) with alpha = c, beta = 1 - c: (x - mean) * c + mean
    return [A.RandomBrightnessContrast(brightness_limit=(1 - c, 1 - c), contrast_limit=(c - 1, c - 1),
                                       brightness_by_max=False, p=1)]


def _fog(s: int) -> list:
    import albumentations as A

    c, decay = _FOG[s - 1]
    a = 1 / (1 + c)
    # albumentations' diamond-square renormalises every octave: roughness 0.56 / wibbledecay
    # gives the look of the reference's plasma (0.28 at severity 1 .. 0.4 at 5), by eye and
    # by the mean and RMS change (tests)
    return [A.RandomBrightnessContrast(brightness_limit=(0, 0), contrast_limit=(a - 1, a - 1), p=1),
            A.PlasmaBrightnessContrast(brightness_range=(c * a, c * a), contrast_range=(0, 0),
                                       roughness=_FOG_ROUGHNESS / decay, plasma_size=256, p=1)]


def definitions_digest() -> str:
    """A digest of the definitions (parameters, albumentations' version): results made with
    other definitions (another detseg or albumentations) are not reused."""
    import hashlib
    from importlib.metadata import version

    params = (_DEFINITIONS, _GAUSS_STD, _SHOT_C, _MOTION_KERNEL, _DEFOCUS, _JPEG_Q, _BRIGHT,
              _CONTRAST, _FOG, _FOG_ROUGHNESS, _PIXELATE, version("albumentations"))
    return hashlib.sha256(repr(params).encode()).hexdigest()[:16]


def _pixelate(s: int) -> list:
    import albumentations as A
    import cv2

    c = _PIXELATE[s - 1]
    return [A.Downscale(scale_range=(c, c), p=1,
                        interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_NEAREST_EXACT})]


#: name -> builder of the albumentations transforms for a severity in 1..5
CORRUPTIONS: dict[str, Callable[[int], list]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "motion_blur": _motion_blur,
    "defocus_blur": _defocus_blur,
    "jpeg_compression": _jpeg,
    "brightness": _brightness,
    "contrast": _contrast,
    "fog": _fog,
    "pixelate": _pixelate,
}


def parse_corruptions(text: str | None) -> list[str]:
    """Comma-separated corruption names (None or "all": every one), checked, in given order."""
    if text is None or text.strip() in ("", "all"):
        return list(CORRUPTIONS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in CORRUPTIONS]
    if bad:
        raise InputError(f"--corruptions: unknown {', '.join(bad)}; valid: {', '.join(CORRUPTIONS)}")
    return list(dict.fromkeys(names))


def parse_severities(text: str | None) -> list[int]:
    """Comma-separated severities in 1..5 (None: all five), sorted, duplicates dropped."""
    if text is None or not text.strip():
        return list(SEVERITIES)
    out = []
    for t in text.split(","):
        t = t.strip()
        if not t:
            continue
        if not t.isdigit() or int(t) not in SEVERITIES:
            raise InputError(f"--severities: unknown severity {t!r}; valid: "
                             f"{', '.join(map(str, SEVERITIES))}")
        out.append(int(t))
    return sorted(set(out))


@lru_cache(maxsize=64)
def _pipeline(name: str, severity: int) -> Any:
    import albumentations as A

    return A.Compose(CORRUPTIONS[name](severity))


def image_seed(image: np.ndarray, name: str, severity: int, seed: int) -> int:
    """The seed one image gets: from the run's seed, the corruption and the pixels."""
    h = zlib.crc32(np.ascontiguousarray(image).data)
    return zlib.crc32(f"{seed}/{name}/{severity}/{image.shape}".encode(), h)


def corrupt(image: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """A corrupted copy of ``image`` ((H, W, 3) uint8 RGB -> same); severity 0 returns it as is.

    Deterministic: the same (image, name, severity, seed) always gives the same pixels.
    """
    if name not in CORRUPTIONS:
        raise InputError(f"corruption: unknown {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if severity == 0:
        return image
    if severity not in SEVERITIES:
        raise InputError(f"severity: expected 0 or one of {list(SEVERITIES)}, found {severity}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"image: expected (H, W, 3) uint8 RGB, found {image.shape} {image.dtype}")
    pipe = _pipeline(name, severity)
    pipe.set_random_seed(image_seed(image, name, severity, seed))
    out = pipe(image=np.ascontiguousarray(image))["image"]
    return np.ascontiguousarray(out, dtype=np.uint8)

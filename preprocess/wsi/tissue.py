"""Tissue segmentation of a slide thumbnail (stained tissue vs. glass background and pen marks).

Steps (:func:`segment_tissue`):

1. Pen marks: pixels of strongly saturated blue or green hue, or nearly black, are pen ink
   (:func:`pen_mask`); H&E tissue is pink to purple, never green, rarely that blue or that dark. The
   pen mask is dilated a little to catch the faded stroke edges, left out of the threshold estimate
   and removed from the final mask.
2. Saturation channel of HSV (glass is grey/white, stain is coloured), median blurred.
3. Otsu threshold (own implementation), floored at ``min_saturation`` so an almost empty slide does
   not turn noise into tissue. Blur and threshold are fused exactly (see :func:`segment_tissue`).
4. Morphological close (disk), removal of small objects, filling of small holes (scipy.ndimage
   labelling; sizes in thumbnail pixels), then the pen pixels are removed again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class TissueParams:
    """Segmentation settings; sizes are in thumbnail (mask) pixels.

    Attributes:
        median_size: side of the median filter on the saturation channel.
        min_saturation: lower bound (0-255) on the Otsu threshold.
        close_radius: radius of the disk used by the morphological close.
        min_object_px: connected tissue regions smaller than this are dropped.
        max_hole_px: background holes inside tissue up to this size are filled.
        exclude_pen: drop pen-ink pixels (blue/green/black marker).
        pen_dilate: dilation (pixels) of the pen mask.
    """

    median_size: int = 7
    min_saturation: int = 15
    close_radius: int = 2
    min_object_px: int = 256
    max_hole_px: int = 256
    exclude_pen: bool = True
    pen_dilate: int = 2

    @classmethod
    def for_tile(cls, tile_mask_px: int, **overrides) -> TissueParams:
        """Defaults scaled to the grid: objects and holes smaller than one 20x tile's area are noise."""
        area = int(tile_mask_px) ** 2
        return cls(**{"min_object_px": area, "max_hole_px": area, **overrides})


@dataclass(frozen=True)
class TissueMask:
    """Result of :func:`segment_tissue`: ``mask`` [h, w] bool, the threshold used and pen coverage."""

    mask: np.ndarray
    threshold: int
    pen_fraction: float

    @property
    def tissue_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB uint8 [..., 3] -> (hue in degrees [0, 360), saturation [0, 1], value [0, 1]), float32."""
    rgb = rgb.astype(np.float32) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    c = v - rgb.min(axis=-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-12), 0.0)
    safe_c = np.maximum(c, 1e-12)
    h = np.where(
        v == r,
        ((g - b) / safe_c) % 6.0,
        np.where(v == g, (b - r) / safe_c + 2.0, (r - g) / safe_c + 4.0),
    )
    h = np.where(c > 0, h * 60.0, 0.0)
    return h.astype(np.float32), s.astype(np.float32), v.astype(np.float32)


def _value_and_chroma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV value ``max(R, G, B)`` and chroma ``max - min`` as uint8 [h, w] (cheap channel-wise ops)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = np.maximum(np.maximum(r, g), b)
    return value, value - np.minimum(np.minimum(r, g), b)


def saturation_u8(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``chroma / value`` scaled to 0-255 and rounded, uint8 [h, w] (integer arithmetic)."""
    value, chroma = _value_and_chroma(rgb)
    v = np.maximum(value, 1).astype(np.uint32)
    return ((chroma.astype(np.uint32) * 510 + v) // (2 * v)).astype(np.uint8)


def pen_mask(rgb: np.ndarray) -> np.ndarray:
    """Pen ink: saturated blue (hue 180-250 deg, S >= 0.4), saturated green (75-180 deg, S >= 0.3), or
    nearly black (V < 0.2). H&E stains sit at hue ~260-360 and 0-30 deg (purple to pink)."""
    value, chroma = _value_and_chroma(rgb)
    black = value < 51  # V < 0.2
    coloured = 10 * chroma.astype(np.uint16) >= 3 * value.astype(np.uint16)  # S >= 0.3: hue only there
    h, s, _ = rgb_to_hsv(rgb[coloured])
    blue = (h >= 180) & (h < 250) & (s >= 0.4)
    green = (h >= 75) & (h < 180) & (s >= 0.3)
    pen = black
    pen[coloured] |= blue | green
    return pen


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 ``values``: ``t`` maximising between-class variance of ``<= t`` vs ``> t``."""
    values = np.asarray(values, dtype=np.uint8).ravel()
    if values.size == 0:
        return 0
    hist = np.bincount(values, minlength=256).astype(np.float64)
    prob = hist / hist.sum()
    omega = np.cumsum(prob)  # weight of class "<= t"
    mu = np.cumsum(prob * np.arange(256))
    mu_total = mu[-1]
    denom = omega * (1.0 - omega)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.where(denom > 0, (mu_total * omega - mu) ** 2 / denom, -1.0)
    if between.max() < 0:  # a single grey level
        return int(values[0])
    return int(np.argmax(between))


def disk(radius: int) -> np.ndarray:
    """Boolean disk structuring element of the given radius."""
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx**2 + yy**2 <= radius**2


def binary_close(mask: np.ndarray, radius: int) -> np.ndarray:
    """Morphological close with a disk, padded so tissue touching the border is not eroded."""
    if radius <= 0:
        return mask.copy()
    padded = np.pad(mask, radius + 1, mode="edge")
    closed = ndimage.binary_closing(padded, structure=disk(radius))
    return closed[radius + 1 : -radius - 1, radius + 1 : -radius - 1]


def remove_small_objects(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 8-connected foreground regions with fewer than ``min_size`` pixels."""
    if min_size <= 1 or not mask.any():
        return mask.copy()
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def fill_small_holes(mask: np.ndarray, max_size: int) -> np.ndarray:
    """Fill 4-connected background regions of at most ``max_size`` pixels that do not touch the border."""
    if max_size <= 0 or mask.all():
        return mask.copy()
    labels, count = ndimage.label(~mask)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = sizes <= max_size
    fill[0] = False
    fill[border] = False
    return mask | fill[labels]


def majority_filter(mask: np.ndarray, size: int) -> np.ndarray:
    """Median filter of a boolean mask over ``size`` x ``size`` windows (edges repeated): a pixel is set
    when more than half of its window is. O(1) per pixel (box sums), unlike a general median filter."""
    if size <= 1:
        return mask.copy()
    counts = ndimage.uniform_filter(mask.astype(np.float32), size=size, mode="nearest") * (size * size)
    return counts > (size * size) / 2.0


def segment_tissue(rgb: np.ndarray, params: TissueParams | None = None) -> TissueMask:
    """Tissue mask of an RGB uint8 thumbnail [h, w, 3] (steps in the module docstring).

    The median blur and the threshold commute (thresholding is monotone), so the blurred saturation
    is never formed: Otsu's threshold ``t`` comes from the saturation histogram (pen excluded) and the
    mask is the median (majority) filter of ``saturation > t`` -- the same as thresholding the
    median-blurred saturation at ``t``, in linear time.
    """
    params = params or TissueParams()
    if rgb.size == 0:
        return TissueMask(np.zeros(rgb.shape[:2], dtype=bool), 0, 0.0)
    if params.exclude_pen:
        pen = pen_mask(rgb)
        if params.pen_dilate > 0 and pen.any():
            pen = ndimage.binary_dilation(pen, structure=disk(params.pen_dilate))
    else:
        pen = np.zeros(rgb.shape[:2], dtype=bool)
    sat8 = saturation_u8(rgb)
    candidates = sat8[~pen]
    threshold = max(otsu_threshold(candidates), params.min_saturation) if candidates.size else 255
    mask = majority_filter(sat8 > threshold, params.median_size) & ~pen
    mask = binary_close(mask, params.close_radius)
    mask = remove_small_objects(mask, params.min_object_px)
    mask = fill_small_holes(mask, params.max_hole_px)
    mask &= ~pen
    return TissueMask(mask, int(threshold), float(pen.mean()))

"""Slide reading, tissue segmentation and nested 5x/20x tiling (preprocess/wsi), on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from preprocess.wsi.reader import (
    SlideError,
    available_backends,
    best_level_for_downsample,
    open_slide,
    read_downsampled,
)
from preprocess.wsi.synthetic import expected_tiles, synthetic_image, write_pyramid_tiff
from preprocess.wsi.tiling import TileGeometry, choose_level, plan_tiles, resolve_level0_mag, tissue_fractions
from preprocess.wsi.tissue import (
    TissueParams,
    fill_small_holes,
    median_blur,
    otsu_threshold,
    pen_mask,
    remove_small_objects,
    rgb_to_hsv,
    saturation_u8,
    segment_tissue,
)

# ----------------------------------------------------------------------------------------------- tissue


def test_otsu_threshold_splits_two_levels_and_matches_brute_force():
    values = np.array([10] * 100 + [200] * 60, dtype=np.uint8)
    # any t in [10, 199] separates the two levels perfectly; argmax takes the first
    assert otsu_threshold(values) == 10
    rng = np.random.default_rng(0)
    mixed = np.concatenate([rng.normal(40, 8, 500), rng.normal(150, 15, 300)]).clip(0, 255).astype(np.uint8)

    def between(t: int) -> float:  # direct definition: w0 * w1 * (mu0 - mu1)^2
        lo, hi = mixed[mixed <= t].astype(float), mixed[mixed > t].astype(float)
        if lo.size == 0 or hi.size == 0:
            return -1.0
        return lo.size * hi.size / mixed.size**2 * (lo.mean() - hi.mean()) ** 2

    best = max(range(256), key=between)
    assert otsu_threshold(mixed) == best


def test_median_blur_repeats_edges_and_commutes_with_thresholding():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    sat = rng.integers(0, 256, size=(40, 50), dtype=np.uint8)
    np.testing.assert_array_equal(median_blur(sat, 7), ndimage.median_filter(sat, size=7, mode="nearest"))
    np.testing.assert_array_equal(median_blur(sat, 1), sat)
    for t in (30, 128, 200):  # thresholding is monotone: blur-then-threshold = majority of the thresholded
        expected = ndimage.median_filter((sat > t).astype(np.uint8), size=7, mode="nearest") > 0
        np.testing.assert_array_equal(median_blur(sat, 7) > t, expected)


def saturation_image(sat: np.ndarray) -> np.ndarray:
    """RGB (255, 255 - s, 255 - s): hue 0 (pink-red, never pen), value 1, saturation_u8 exactly ``s``."""
    rgb = np.full((*sat.shape, 3), 255, dtype=np.uint8)
    rgb[..., 1] = rgb[..., 2] = 255 - sat
    return rgb


def test_otsu_threshold_is_computed_on_the_blurred_saturation():
    """Salt (isolated very saturated pixels on glass) drags Otsu up on the raw saturation and the faint
    tissue is lost; the median blur removes the salt first, so Otsu separates glass from tissue."""
    from skimage import filters

    rng = np.random.default_rng(5)
    sat = np.full((64, 64), 8, dtype=np.uint8)
    sat[16:48, 20:44] = 70  # faint tissue
    salt = rng.random(sat.shape) < 0.12
    salt[14:50, 18:46] = False
    sat[salt] = 250
    rgb = saturation_image(sat)
    np.testing.assert_array_equal(saturation_u8(rgb), sat)
    params = TissueParams(
        median_size=7, min_saturation=0, close_radius=0, min_object_px=0, max_hole_px=0, exclude_pen=False
    )
    tissue = segment_tissue(rgb, params)

    footprint = np.ones((7, 7), dtype=bool)
    blurred = filters.median(sat, footprint=footprint, mode="nearest")
    t_blurred = filters.threshold_otsu(blurred)  # blur, then Otsu (CLAM, README)
    t_raw = filters.threshold_otsu(sat)  # Otsu, then blur (the order this test guards against)
    other = filters.median(sat > t_raw, footprint=footprint, mode="nearest")
    assert tissue.threshold == t_blurred != t_raw
    np.testing.assert_array_equal(tissue.mask, blurred > t_blurred)
    assert not np.array_equal(tissue.mask, other)
    assert tissue.mask[20:44, 24:40].all() and not tissue.mask[:10].any()  # the tissue, not the salt
    assert not other[20:44, 24:40].any()


def test_tissue_object_exactly_at_the_minimum_size_is_kept():
    sat = np.full((40, 40), 5, dtype=np.uint8)
    sat[2:6, 2:7] = 120  # 20 px
    sat[10:14, 2:7] = 120
    sat[10, 2] = 5  # 19 px
    sat[20:22, 20:25] = 120  # 10 px ...
    sat[22:24, 25:30] = 120  # ... + 10 px touching it only at a corner: one 8-connected object of 20 px
    sat[30:34, 30:35] = 120
    sat[31:33, 32] = 5  # a 2 px hole, not filled with max_hole_px=0: 18 px
    params = TissueParams(
        median_size=1, min_saturation=0, close_radius=0, min_object_px=20, max_hole_px=0, exclude_pen=False
    )
    mask = segment_tissue(saturation_image(sat), params).mask
    assert mask[2:6, 2:7].all()
    assert not mask[10:14, 2:7].any()
    assert mask[20:22, 20:25].all() and mask[22:24, 25:30].all()
    assert not mask[30:34, 30:35].any()
    assert mask.sum() == 40
    direct = np.zeros((5, 5), dtype=bool)
    direct[1:4, 1:4] = True  # 9 px
    assert remove_small_objects(direct, 9).sum() == 9 and not remove_small_objects(direct, 10).any()


def test_saturation_u8_matches_float_hsv():
    rgb = np.random.default_rng(2).integers(0, 256, size=(30, 30, 3), dtype=np.uint8)
    _, s, _ = rgb_to_hsv(rgb)
    value, low = rgb.max(axis=2).astype(float), rgb.min(axis=2).astype(float)
    expected = np.floor((value - low) * 255 / np.maximum(value, 1) + 0.5)  # round half up
    np.testing.assert_array_equal(saturation_u8(rgb), expected)
    assert np.abs(saturation_u8(rgb) - s * 255).max() <= 0.5 + 1e-3


def test_pen_mask_flags_blue_green_black_but_not_stain():
    pixels = np.array(
        [
            [40, 70, 170],  # blue marker
            [60, 160, 80],  # green marker
            [30, 30, 45],  # black marker
            [214, 140, 190],  # eosin pink
            [120, 90, 170],  # hematoxylin purple
            [242, 242, 240],  # glass
        ],
        dtype=np.uint8,
    )[None]
    assert pen_mask(pixels)[0].tolist() == [True, True, True, False, False, False]


def test_remove_small_objects_and_fill_small_holes():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:4, 2:4] = True  # 4 px object
    mask[8:18, 8:18] = True  # 100 px object ...
    mask[12:14, 12:14] = False  # ... with a 4 px hole
    mask[0:3, 15:20] = False
    kept = remove_small_objects(mask, min_size=5)
    assert not kept[2:4, 2:4].any() and kept[8:12, 8:18].all()
    filled = fill_small_holes(kept, max_size=4)
    assert filled[12:14, 12:14].all()
    assert not fill_small_holes(kept, max_size=3)[12:14, 12:14].any()
    # background touching the border is never a hole
    assert not fill_small_holes(kept, max_size=10_000)[0, 0]


def test_segment_tissue_excludes_pen_and_keeps_stain():
    thumb = synthetic_image(tile_px=32)[::2, ::2]  # 128 x 128, 16 px per 20x tile
    tissue = segment_tissue(thumb, TissueParams.for_tile(16))
    # tissue A occupies x [16, 112), y [16, 48); the blue pen band x [80, 128), y [88, 112)
    assert tissue.mask[20:44, 20:108].mean() > 0.99
    assert tissue.mask[90:110, 82:126].sum() == 0
    assert tissue.pen_fraction > 0
    without_pen = segment_tissue(thumb, TissueParams.for_tile(16, exclude_pen=False))
    assert without_pen.mask[90:110, 82:126].mean() > 0.9


# ----------------------------------------------------------------------------------------------- tiling


def test_geometry_sides_at_40x_and_20x():
    g40, g20 = TileGeometry(40), TileGeometry(20)
    assert (g40.low_px, g40.high_px, g40.children_per_side, g40.mask_downsample) == (2048, 512, 4, 32)
    assert (g20.low_px, g20.high_px, g20.children_per_side, g20.mask_downsample) == (1024, 256, 4, 16)
    with pytest.raises(SlideError, match="below"):
        TileGeometry(10)


def test_plan_tiles_selection_rule_by_hand():
    geometry = TileGeometry(20)  # 5x tile 1024 px, 20x tile 256 px, 16 mask px per 20x tile
    slide = (2048 + 100, 1024 + 500)  # 2 x 1 full 5x tiles; the margins are never tiled
    mask = np.zeros((slide[1] // 16, slide[0] // 16), dtype=bool)
    cell = 16

    def fill(col: int, row: int, frac: float = 1.0) -> None:  # fill the left part of one 20x cell
        mask[row * cell : (row + 1) * cell, col * cell : col * cell + int(cell * frac)] = True

    for col, row in [(0, 0), (1, 0), (2, 0), (0, 1)]:  # 4/16 in 5x tile (0, 0): kept (>= 0.25)
        fill(col, row)
    fill(3, 3, 0.25)  # a 25%-tissue child of the kept tile: kept
    fill(2, 2, 0.125)  # 12.5%: dropped
    for col, row in [(4, 0), (5, 1), (6, 2)]:  # 3/16 in 5x tile (1, 0): dropped with its full children
        fill(col, row)
    mask[0:cell, 2048 // 16 :] = True  # tissue in the right margin (outside the grid): ignored
    plan = plan_tiles(mask, geometry, slide, min_tissue=0.25)

    assert plan.grid_low == (1, 2)
    assert plan.coords_low.tolist() == [[0, 0]]
    assert plan.coords_high.tolist() == [[0, 0], [256, 0], [512, 0], [0, 256], [768, 768]]
    assert plan.coords_low.dtype == np.int64 and plan.coords_high.dtype == np.int64
    assert plan.parent_of_high.tolist() == [0] * 5
    np.testing.assert_allclose(plan.tissue_low, [(4 + 0.25 + 0.125) / 16])
    np.testing.assert_allclose(plan.tissue_high, [1, 1, 1, 1, 0.25])


def test_every_kept_5x_tile_has_a_kept_child_and_children_nest():
    rng = np.random.default_rng(3)
    geometry = TileGeometry(40)
    slide = (2048 * 5, 2048 * 4)
    mask = rng.random((slide[1] // 32, slide[0] // 32)) < rng.random((slide[1] // 32, 1)) * 0.6
    plan = plan_tiles(mask, geometry, slide, min_tissue=0.25)
    assert len(plan.coords_low) > 0
    assert set(plan.parent_of_high.tolist()) == set(range(len(plan.coords_low)))
    parents = plan.coords_low[plan.parent_of_high]
    delta = plan.coords_high - parents
    assert ((delta >= 0) & (delta < geometry.low_px)).all()
    assert (plan.coords_low % 2048 == 0).all() and (plan.coords_high % 512 == 0).all()
    # 5x fraction == mean of its 16 children's fractions
    frac20 = tissue_fractions(mask, 16, 20, 16)
    np.testing.assert_allclose(
        plan.tissue_low,
        [frac20[y // 512 : y // 512 + 4, x // 512 : x // 512 + 4].mean() for x, y in plan.coords_low],
        rtol=1e-6,
    )


def test_choose_level_picks_largest_downsample_not_above_target():
    assert best_level_for_downsample([1.0, 4.0, 16.0], 8.0) == 1
    assert best_level_for_downsample([1.0, 4.0, 16.0], 0.5) == 0
    g = TileGeometry(40)
    low, high = choose_level([1.0, 4.0, 16.0], g.low_px), choose_level([1.0, 4.0, 16.0], g.high_px)
    assert (low.level, low.read_size, low.exact) == (1, 512, False)
    assert (high.level, high.read_size, high.exact) == (0, 512, False)
    rounded = choose_level([1.0, 4.0002, 16.003], g.low_px)  # pyramids round level sizes
    assert (rounded.level, rounded.read_size) == (1, 512)
    exact = choose_level([1.0, 2.0, 8.0, 32.0], g.low_px)
    assert (exact.level, exact.read_size, exact.exact) == (2, 256, True)
    g20 = TileGeometry(20)
    assert choose_level([1.0, 4.0, 16.0], g20.low_px).exact and choose_level([1.0, 4.0], g20.high_px).exact


def test_resolve_level0_mag_precedence():
    assert resolve_level0_mag(20, 40, 40, 0.25) == (20, "--level0-mag")
    assert resolve_level0_mag(None, 20, 40, 0.25) == (20, "csv")
    assert resolve_level0_mag(None, None, 40.0, 0.5) == (40, "metadata")
    assert resolve_level0_mag(None, None, None, 0.49) == (20, "mpp")
    assert resolve_level0_mag(None, None, None, 0.26) == (40, "mpp")
    with pytest.raises(SlideError, match="--level0-mag"):
        resolve_level0_mag(None, None, None, 0.35)


# ----------------------------------------------------------------------------------------------- reading


@pytest.fixture(scope="module")
def small_slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides")
    image = synthetic_image(tile_px=64)  # 512 x 512
    svs = write_pyramid_tiff(folder / "a.svs", image, downsamples=(1, 4), objective_power=40)
    tif = write_pyramid_tiff(folder / "g.tif", image, downsamples=(1, 4))
    return image, svs, tif


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_backends_read_identical_pixels_and_white_outside(small_slides, backend):
    if backend not in available_backends():
        pytest.skip(f"{backend} not installed")
    image, svs, tif = small_slides
    for path in (svs, tif):
        with open_slide(path, backends=(backend,)) as reader:
            assert reader.backend == backend
            assert reader.level_dimensions == [(512, 512), (128, 128)]
            np.testing.assert_allclose(reader.level_downsamples, [1.0, 4.0])
            np.testing.assert_array_equal(reader.read_region((100, 37), 0, (80, 50)), image[37:87, 100:180])
            np.testing.assert_array_equal(
                reader.read_region((64, 128), 1, (16, 8)), image[::4, ::4][32:40, 16:32]
            )
            edge = reader.read_region((480, 500), 0, (64, 64))
            np.testing.assert_array_equal(edge[:12, :32], image[500:, 480:])
            assert (edge[12:] == 255).all() and (edge[:, 32:] == 255).all()
    with open_slide(svs, backends=(backend,)) as reader:
        assert (reader.objective_power, reader.mpp) == (40.0, 0.25)
        thumb = read_downsampled(reader, 8)
        assert thumb.shape == (64, 64, 3)
        np.testing.assert_allclose(thumb[10, 10], image[80:88, 80:88].reshape(-1, 3).mean(0), atol=25)


def test_default_reader_is_openslide_and_there_is_no_tifffile_fallback(small_slides):
    """OpenSlide (a required dependency) reads the synthetic SVS and generic pyramids itself."""
    assert available_backends()[0] == "openslide"
    _, svs, tif = small_slides
    for path in (svs, tif):
        with open_slide(path) as reader:
            assert reader.backend == "openslide"
    with pytest.raises(ValueError, match="unknown slide backend 'tifffile'"):
        open_slide(svs, backends=("tifffile",))


def test_open_slide_rejects_corrupt_file_in_one_line(tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    before = bad.read_bytes()
    with pytest.raises(SlideError) as info:
        open_slide(bad)
    assert "cannot read slide" in str(info.value) and "\n" not in str(info.value)
    assert bad.read_bytes() == before
    with pytest.raises(SlideError, match="not found"):
        open_slide(tmp_path / "missing.svs")


def test_synthetic_layout_gives_the_hand_count():
    """The planted layout (preprocess/wsi/synthetic.py) through segmentation + tiling gives the hand count."""
    image = synthetic_image(tile_px=256)  # 2048 x 2048, 20x tiles of 256 px at level0_mag 20
    thumb = image.reshape(128, 16, 128, 16, 3).mean(axis=(1, 3)).astype(np.uint8)
    geometry = TileGeometry(20)
    plan = plan_tiles(segment_tissue(thumb, TissueParams.for_tile(16)).mask, geometry, (2048, 2048))
    low, high = expected_tiles()
    assert {(x // 1024, y // 1024) for x, y in plan.coords_low.tolist()} == low
    assert {(x // 256, y // 256) for x, y in plan.coords_high.tolist()} == high

"""Paired augmentation keeps query and satellite geometrically consistent."""

from __future__ import annotations

import numpy as np
import pytest

from gleam.data.transforms import AugmentConfig, augment_pair, flip_pair, resize, rotate_pair, to_tensor

SIZE, WIDTH = 64, 128


def satellite_with_marker(azimuth_deg: float) -> np.ndarray:
    """A tile with a bright marker 20 px from the centre at the given azimuth (clockwise from north)."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    a = np.radians(azimuth_deg)
    row, col = int(round((SIZE - 1) / 2 - 20 * np.cos(a))), int(round((SIZE - 1) / 2 + 20 * np.sin(a)))
    image[row - 1:row + 2, col - 1:col + 2] = 255
    return image


def panorama_with_marker(azimuth_deg: float) -> np.ndarray:
    image = np.zeros((32, WIDTH, 3), np.uint8)
    image[:, int(round(azimuth_deg / 360 * WIDTH)) % WIDTH] = 255
    return image


def angle_error(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def marker_azimuth_in_tile(image: np.ndarray) -> float:
    rows, cols = np.nonzero(image[..., 0])
    dy, dx = (SIZE - 1) / 2 - rows.mean(), cols.mean() - (SIZE - 1) / 2
    return float(np.degrees(np.arctan2(dx, dy)) % 360)


def marker_azimuth_in_panorama(image: np.ndarray) -> float:
    cols = np.nonzero(image[0, :, 0])[0]
    return float(cols[0] / WIDTH * 360)


@pytest.mark.parametrize("azimuth", [0.0, 45.0, 90.0, 200.0])
@pytest.mark.parametrize("turns", [0, 1, 2, 3])
def test_rotation_moves_panorama_with_the_tile(azimuth, turns):
    query, tile = rotate_pair(panorama_with_marker(azimuth), satellite_with_marker(azimuth), "panorama", turns)
    expected = (azimuth + 90 * turns) % 360
    assert angle_error(marker_azimuth_in_tile(tile), expected) < 4
    assert angle_error(marker_azimuth_in_panorama(query), expected) < 3


@pytest.mark.parametrize("azimuth", [0.0, 45.0, 135.0, 300.0])
def test_flip_mirrors_panorama_and_tile_alike(azimuth):
    query, tile = flip_pair(panorama_with_marker(azimuth), satellite_with_marker(azimuth), "panorama")
    expected = (360 - azimuth) % 360
    assert angle_error(marker_azimuth_in_tile(tile), expected) < 4
    assert angle_error(marker_azimuth_in_panorama(query), expected) < 3


def test_streetmap_rotates_exactly_like_the_tile():
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    query, rotated = rotate_pair(tile.copy(), tile, "streetmap", 3)
    np.testing.assert_array_equal(query, rotated)


def test_uav_pixels_are_not_rotated_with_the_tile():
    rng = np.random.default_rng(0)
    uav = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    query, _ = rotate_pair(uav, uav, "uav", 1)
    np.testing.assert_array_equal(query, uav)


def test_augment_is_seeded_and_keeps_shapes():
    rng_image = np.random.default_rng(1)
    pano = rng_image.integers(0, 255, (32, WIDTH, 3), dtype=np.uint8)
    tile = rng_image.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    first = augment_pair(pano, tile, "panorama", np.random.default_rng(5), AugmentConfig())
    second = augment_pair(pano, tile, "panorama", np.random.default_rng(5), AugmentConfig())
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert first[0].shape == pano.shape and first[1].shape == tile.shape


def test_resize_and_normalise():
    image = np.full((40, 80, 3), 128, np.uint8)
    assert resize(image, (20, 30)).shape == (20, 30, 3)
    tensor = to_tensor([image, image], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert tuple(tensor.shape) == (2, 3, 40, 80)
    assert float(tensor.abs().max()) < 0.01


def test_panoramas_keep_their_shape_in_every_path(tmp_path):
    """A CVUSA-shaped panorama (5.5:1) into a 2:1 input keeps its full width and its aspect:
    centred, padded with the mean colour (no x2.75 stretch); a taller one is centre-cropped; a
    2:1 one is simply resized. Training, index/serving (Embedder.prepare) and batch localization
    prepare it identically."""
    from gleam.core.model import ModelConfig
    from gleam.data.images import decode_rgb
    from gleam.data.pipeline import _preprocess_batch
    from gleam.data.schema import encode_jpeg
    from gleam.data.transforms import PAD_VALUE, fit_panorama, fit_view
    from gleam.retrieval.batch import read_and_decode
    from gleam.retrieval.embed import prepare_image

    rng = np.random.default_rng(3)
    cvusa = rng.integers(0, 256, (16, 88, 3), dtype=np.uint8)  # 5.5:1
    fitted = fit_panorama(cvusa, (32, 64))
    assert fitted.shape == (32, 64, 3)
    band = resize(cvusa, (12, 64))  # 64 / 88 of 16 rows: 11.6 -> 12, aspect kept
    np.testing.assert_array_equal(fitted[10:22], band)
    assert (fitted[:10] == PAD_VALUE).all() and (fitted[22:] == PAD_VALUE).all()
    tall = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # 4:3 "panorama": sky and ground cropped
    np.testing.assert_array_equal(fit_panorama(tall, (32, 64)), tall[8:40])
    vigor = rng.integers(0, 256, (40, 81, 3), dtype=np.uint8)  # 2.03:1, within tolerance: plain resize
    np.testing.assert_array_equal(fit_panorama(vigor, (32, 64)), resize(vigor, (32, 64)))
    np.testing.assert_array_equal(fit_view(cvusa, (32, 32), "uav"), resize(cvusa, (32, 32)))

    data = encode_jpeg(cvusa, quality=95)
    expected = fit_panorama(decode_rgb(data), (32, 64))
    train = _preprocess_batch({"key": ["k"], "location_id": ["l"], "modality": ["panorama"], "latitude": [0.0],
                               "longitude": [0.0], "query": [data], "satellite": [data]},
                              {"panorama": (32, 64)}, (32, 32))
    assert train["query_shape"][0].tolist() == [32, 64]
    np.testing.assert_array_equal(np.frombuffer(train["query_pixels"][0], np.uint8).reshape(32, 64, 3), expected)
    config = ModelConfig(image_size=32, panorama_size=[32, 64])
    np.testing.assert_array_equal(prepare_image(decode_rgb(data), "panorama", config), expected)
    (tmp_path / "p.jpg").write_bytes(data)
    batch = read_and_decode({"path": np.array([str(tmp_path / "p.jpg")], dtype=object),
                             "modality": np.array(["panorama"], dtype=object)}, {"panorama": (32, 64)})
    np.testing.assert_array_equal(np.frombuffer(batch["pixels"][0], np.uint8).reshape(32, 64, 3), expected)

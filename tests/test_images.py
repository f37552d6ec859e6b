"""One image decoder for every path: each encoding gives the same pixels (or the same refusal)
through ingest -> shards -> Ray Data read, the training/evaluation preprocessing, index
building, serving, batch localization and GLEAM-X (gleam.data.images)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from gleam.data import images
from gleam.data.images import CorruptImage, ImageTooLarge, NotAnImage, TruncatedImage, decode_image, decode_rgb

H, W = 24, 40  # not square: a wrong orientation changes the shape
RNG = np.random.default_rng(15)


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def gray16_png():
    values = np.linspace(0, 65535, H * W).reshape(H, W).astype(np.uint16)
    gray = np.rint(values / 257).astype(np.uint8)  # the 16-bit range scaled, not clipped
    return _save(Image.fromarray(values), "PNG"), np.repeat(gray[:, :, None], 3, axis=2)


def exif_rotated_jpeg():
    image = Image.fromarray(RNG.integers(0, 256, (H, W, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # stored sideways: view by turning 90 degrees clockwise
    data = _save(image, "JPEG", exif=exif, quality=95)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return data, np.rot90(stored, k=-1)


def la_png():
    gray = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    alpha = np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1))
    composited = np.rint(gray.astype(float) * alpha / 255).astype(np.uint8)  # over black
    return _save(Image.fromarray(np.stack([gray, alpha], axis=2), "LA"), "PNG"), np.repeat(composited[:, :, None], 3, 2)


def palette_transparent_png():
    indices = RNG.integers(0, 3, (H, W), dtype=np.uint8)
    palette = np.array([[250, 250, 250], [200, 30, 10], [10, 60, 220]], np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette.ravel().tolist())
    expected = palette[indices]
    expected[indices == 0] = 0  # index 0 is transparent: the black background
    return _save(image, "PNG", transparency=0), expected


def cmyk_jpeg():
    data = _save(Image.fromarray(RNG.integers(0, 256, (H, W, 4), dtype=np.uint8), "CMYK"), "JPEG", quality=95)
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # Pillow's CMYK converter


def rgba_png():
    pixels = RNG.integers(0, 256, (H, W, 4), dtype=np.uint8)
    composited = np.rint(pixels[:, :, :3].astype(float) * pixels[:, :, 3:] / 255).astype(np.uint8)
    return _save(Image.fromarray(pixels, "RGBA"), "PNG"), composited


def animated_gif():
    first = np.zeros((H, W, 3), np.uint8)
    first[:, W // 2:] = (255, 0, 0)
    frames = [Image.fromarray(first), Image.new("RGB", (W, H), (0, 0, 255)), Image.new("RGB", (W, H), (0, 255, 0))]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50), first


def float_tiff():
    values = RNG.random((H, W), dtype=np.float32)  # [0, 1]: scaled by 255
    gray = np.rint(values.astype(np.float64) * 255).astype(np.uint8)
    return _save(Image.fromarray(values, "F"), "TIFF"), np.repeat(gray[:, :, None], 3, axis=2)


def truncated_jpeg():
    data = _save(Image.fromarray(RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)), "JPEG")
    return data[: len(data) // 2], TruncatedImage


def bomb_png():
    return _save(Image.new("1", (20_000, 20_000)), "PNG"), ImageTooLarge  # 400 Mpixel in ~50 KB


def non_image():
    return b"GLEAM: these bytes are not an image\n" * 8, NotAnImage


ENCODINGS = {f.__name__: f for f in (gray16_png, exif_rotated_jpeg, la_png, palette_transparent_png, cmyk_jpeg,
                                     rgba_png, animated_gif, float_tiff, truncated_jpeg, bomb_png, non_image)}


@pytest.fixture(scope="module")
def table():
    """name -> (bytes, expected uint8 HxWx3 pixels or the ImageError class that refuses them)."""
    return {name: make() for name, make in ENCODINGS.items()}


def refused(expected) -> bool:
    return isinstance(expected, type)


# --------------------------------------------------------------------------- the decoder itself


def test_decoder_pixels_and_record(table):
    for name, (data, expected) in table.items():
        if refused(expected):
            with pytest.raises(expected):
                decode_image(data)
            continue
        decoded = decode_image(data)
        np.testing.assert_array_equal(decoded.pixels, expected, err_msg=name)
        assert decoded.pixels.dtype == np.uint8 and decoded.pixels.flags.c_contiguous
    info = lambda name: decode_image(table[name][0]).info  # noqa: E731
    assert info("gray16_png").scaling == "uint16_range" and info("gray16_png").mode == "I;16"
    assert info("exif_rotated_jpeg").orientation == 6 and info("exif_rotated_jpeg").notes() == {"mode": "RGB", "orientation": 6}
    assert info("rgba_png").alpha == "composited_on_black" and info("palette_transparent_png").alpha == "composited_on_black"
    assert info("animated_gif").animated and info("float_tiff").scaling == "unit_range"
    assert decode_image(_save(Image.new("RGB", (9, 9)), "PNG")).info.notes() == {}  # plain: nothing to record
    bomb = pytest.raises(ImageTooLarge, decode_image, table["bomb_png"][0]).value
    assert bomb.pixels == 400_000_000 and bomb.limit == images.DEFAULT_MAX_PIXELS
    small = pytest.raises(ImageTooLarge, decode_image, table["gray16_png"][0], max_pixels=100).value
    assert (small.width, small.height, small.pixels, small.limit) == (W, H, W * H, 100)
    with pytest.raises(NotAnImage):
        decode_image(b"")
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = True  # as some libraries do: never honoured here
    with pytest.raises(TruncatedImage):
        decode_image(table["truncated_jpeg"][0])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_out_of_range_values_are_min_max_scaled_not_clipped():
    values = np.array([[-1000.0, 0.0, 3000.0, np.nan]], np.float32)
    assert decode_rgb(_save(Image.fromarray(values, "F"), "TIFF"))[0, :, 0].tolist() == [0, 64, 255, 0]
    wide = np.array([[-5, 0, 100_000]], np.int32)
    assert decode_rgb(_save(Image.fromarray(wide, "I"), "TIFF"))[0, :, 0].tolist() == [0, 0, 255]
    assert decode_image(_save(Image.fromarray(wide, "I"), "TIFF")).info.scaling == "min_max"
    broken = bytearray(_save(Image.new("RGB", (16, 16), (9, 9, 9)), "PNG"))
    broken[60:80] = b"\x00" * 20  # inside the compressed pixel data
    with pytest.raises((CorruptImage, TruncatedImage)):
        decode_image(bytes(broken))


# --------------------------------------------------------------------------- every path


def _write(folder, name: str, data: bytes) -> str:
    path = folder / f"{name}.img"
    path.write_bytes(data)
    return str(path)


def test_every_path_decodes_the_same_pixels_or_refuses_the_same(ray_session, table, tmp_path):
    from gleam.config import ShardConfig
    from gleam.core.model import GleamEncoder, ModelConfig
    from gleam.data import shards
    from gleam.data.ingest.common import PairRecord, part_samples
    from gleam.data.pipeline import _preprocess_batch, read_samples, tile_row
    from gleam.data.schema import Sample, SampleError, encode_jpeg
    from gleam.data.transforms import fit_view
    from gleam.explain.dataset import _read_image
    from gleam.explain.model import load_image
    from gleam.retrieval.batch import read_and_decode
    from gleam.retrieval.embed import Embedder, GalleryEmbedStage
    from gleam.serving.requests import RequestError, decode_image_bytes

    tile = encode_jpeg(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    tile_url = _write(tmp_path, "tile", tile)
    urls = {name: _write(tmp_path, name, data) for name, (data, _) in table.items()}
    accepted = [n for n, (_, e) in table.items() if not refused(e)]

    # ingest (the converters' part task body): refusals are skipped with the class named
    records = [PairRecord(key=name, location_id=name, split="test", modality="ground", satellite=tile_url,
                          query=urls[name], latitude=1.0, longitude=2.0) for name in table]
    skipped, warnings = [], []
    ingested = list(part_samples(records, "test", str(tmp_path), None, 90, skipped, warnings))
    assert sorted(s.key for s in ingested) == sorted(accepted)
    reasons = {s["key"]: (s["reason"], s["detail"]) for s in skipped}
    for name, (_, expected) in table.items():
        if refused(expected):
            code = "too_many_pixels" if expected is ImageTooLarge else "unreadable_image"
            assert reasons[name][0] == code and expected.__name__ in reasons[name][1], reasons[name]
    by_key = {s.key: s for s in ingested}
    assert by_key["exif_rotated_jpeg"].metadata["query_decoding"]["orientation"] == 6
    assert by_key["exif_rotated_jpeg"].metadata["query_size"] == [H, W]  # as viewed: W and H swap

    # shards -> Ray Data read: ingested samples, plus the refused bytes written straight into the shard
    raw = [Sample(key=f"raw_{n}", location_id=n, modality="ground", satellite_image=tile, latitude=1.0,
                  longitude=2.0, split="test", source="test", query_image=table[n][0])
           for n in table if refused(table[n][1])]
    shard_dir = str(tmp_path / "shards")
    record = shards.write_part(shard_dir, "all", lambda: ingested + raw, ShardConfig())
    reader = read_samples([f"{shard_dir}/{s.name}" for s in record.shards])
    rows = {row["key"]: row for row in reader.dataset.take_all()}
    assert sorted(rows) == sorted(accepted)
    corrupt = {c["key"]: c for c in reader.report()["corrupt_samples"]}
    for sample in raw:
        name = sample.key[len("raw_"):]
        assert corrupt[sample.key]["field"] == "query_image" and table[name][1].__name__ in corrupt[sample.key]["reason"]

    # training / evaluation preprocessing, index building, serving, batch localization, GLEAM-X
    GleamEncoder(ModelConfig(embedding_dim=8, image_size=32, panorama_size=[32, 64])).save_pretrained(
        str(tmp_path / "ckpt"))
    embedder = Embedder(str(tmp_path / "ckpt"), device="cpu")
    embed_stage = GalleryEmbedStage(str(tmp_path / "ckpt"), "cpu", 8, 1)

    def gallery_stage(data, name):  # build_index's two stages: the read task's tile row, then the embedding actor
        row = tile_row(Sample(key=name, location_id=name, modality="satellite", satellite_image=data, latitude=0.0,
                              longitude=0.0, split="test", source="test"))
        return embed_stage({column: np.array([value], dtype=object if isinstance(value, (str, bytes)) else None)
                            for column, value in row.items()})
    size = (16, 16)
    batch = read_and_decode({"path": np.array([urls[n] for n in table], dtype=object),
                             "modality": np.array(["ground"] * len(table), dtype=object)}, {"ground": size})
    localized = dict(zip(table, zip(batch["pixels"], batch["error"])))
    for name, (data, expected) in table.items():
        if refused(expected):
            assert expected.__name__ in localized[name][1]
            with pytest.raises(RequestError) as caught:
                decode_image_bytes(data, "image", 8 * 2**20)
            assert caught.value.status == (413 if expected is ImageTooLarge else 415)
            assert expected is ImageTooLarge or expected.__name__ in caught.value.message
            with pytest.raises(expected):
                load_image(data, 16)
            assert _read_image(urls[name])[0] is None and expected.__name__ in _read_image(urls[name])[1]
            with pytest.raises(SampleError) as caught:
                gallery_stage(data, name)
            assert isinstance(caught.value.__cause__, expected)
            continue
        np.testing.assert_array_equal(rows[name]["query"], expected, err_msg=f"{name}: ingest -> read")
        train = _preprocess_batch({"key": [name], "location_id": [name], "modality": ["ground"], "latitude": [1.0],
                                   "longitude": [2.0], "query": [by_key[name].query_image], "satellite": [tile]},
                                  {"ground": size}, (16, 16))
        np.testing.assert_array_equal(np.frombuffer(train["query_pixels"][0], np.uint8).reshape(*size, 3),
                                      fit_view(expected, size, "ground"), err_msg=f"{name}: training")
        served = decode_image_bytes(data, "image", 8 * 2**20)
        np.testing.assert_array_equal(served, expected, err_msg=f"{name}: serving")
        np.testing.assert_array_equal(np.frombuffer(localized[name][0], np.uint8).reshape(*size, 3),
                                      fit_view(expected, size, "ground"), err_msg=f"{name}: batch localization")
        indexed = gallery_stage(data, name)["embedding"]
        np.testing.assert_array_equal(indexed, embedder.embed([expected], "satellite"), err_msg=f"{name}: index")
        explained = np.asarray(load_image(data, 16))
        np.testing.assert_array_equal(explained, np.asarray(Image.fromarray(expected).resize(
            (16, 16), Image.Resampling.BICUBIC)), err_msg=f"{name}: GLEAM-X")
        assert _read_image(urls[name]) == (data, None)


# --------------------------------------------------------------------------- bit depth as the data is


def _png16_rgb(values: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (Pillow cannot write one), rows unfiltered."""
    import struct
    import zlib

    height, width, _ = values.shape
    raw = b"".join(b"\x00" + values[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _sbit(bits: int):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add(b"sBIT", bytes([bits]))
    return info


def test_twelve_bit_and_satellite_dn_data_keep_their_levels():
    twelve = RNG.integers(0, 4096, (H, W)).astype(np.uint16)  # a 12-bit sensor in a 16-bit PNG
    decoded = decode_image(_save(Image.fromarray(twelve), "PNG"))
    np.testing.assert_array_equal(decoded.pixels[:, :, 0], (twelve.astype(np.int64) * 255 + 2047) // 4095)
    info = decoded.info
    assert (info.scaling, info.source_bits, info.significant_bits) == ("inferred_bits", 16, 12)
    assert info.used_range == (int(twelve.min()), int(twelve.max())) and len(np.unique(decoded.pixels)) > 200
    assert info.notes()["scaling"] == "inferred_bits" and info.to_json()["used_range"] == list(info.used_range)
    assert len(np.unique(np.rint(twelve / 257))) <= 17  # the old rule (v / 257): 17 grey levels

    ten = RNG.integers(0, 1024, (H, W)).astype(np.uint16)  # the file says: 10 significant bits (sBIT)
    declared = decode_image(_save(Image.fromarray(ten), "PNG", pnginfo=_sbit(10)))
    assert (declared.info.scaling, declared.info.significant_bits) == ("declared_bits", 10)
    np.testing.assert_array_equal(declared.pixels[:, :, 0], (ten.astype(np.int64) * 255 + 511) // 1023)

    dn = RNG.integers(0, 3001, (H, W)).astype(np.uint16)  # TIFF SMaxSampleValue = 3000 (satellite DN)
    tiff = decode_image(_save(Image.fromarray(dn), "TIFF", tiffinfo={341: 3000}))
    assert tiff.info.scaling == "declared_max" and tiff.info.format == "TIFF"
    np.testing.assert_array_equal(tiff.pixels[:, :, 0], (dn.astype(np.int64) * 255 + 1500) // 3000)

    narrow = (RNG.integers(0, 300, (H, W)) + 20_000).astype(np.uint16)  # DN values in a narrow band
    stretched = decode_image(_save(Image.fromarray(narrow), "PNG"))
    assert stretched.info.scaling == "used_range" and "low dynamic range" in stretched.info.warning
    assert stretched.pixels.min() == 0 and stretched.pixels.max() == 255 and len(np.unique(stretched.pixels)) > 200
    assert stretched.info.notes()["warning"] == stretched.info.warning

    full = decode_image(table_gray16())  # data using the 16th bit: the full range, as before
    assert full.info.scaling == "uint16_range" and full.info.warning == ""

    wide32 = decode_image(_save(Image.fromarray(twelve.astype(np.int32), "I"), "TIFF"))
    assert (wide32.info.scaling, wide32.info.source_bits) == ("inferred_bits", 32)
    reflectance = (RNG.random((H, W)) * 0.05).astype(np.float32)  # float reflectance 0..0.05
    floats = decode_image(_save(Image.fromarray(reflectance, "F"), "TIFF"))
    assert floats.info.scaling == "used_range" and floats.pixels.max() == 255
    flat = decode_image(_save(Image.fromarray(np.full((H, W), 20_000, np.uint16)), "PNG"))
    assert flat.info.scaling == "uint16_range" and flat.info.warning == ""  # constant: nothing to stretch


def table_gray16() -> bytes:
    return gray16_png()[0]


def test_sixteen_bit_colour_is_recorded_and_a_flat_top_byte_stretched():
    deep = RNG.integers(0, 65536, (H, W, 3))
    full = decode_image(_png16_rgb(deep))
    np.testing.assert_array_equal(full.pixels, deep >> 8)  # Pillow's top byte
    assert (full.info.source_bits, full.info.scaling) == (16, "high_byte") and "top 8 bits" in full.info.warning
    twelve = RNG.integers(0, 4096, (H, W, 3))  # 12-bit colour: the top byte spans 0..15
    low = decode_image(_png16_rgb(twelve))
    assert low.info.scaling == "used_range" and low.pixels.max() == 255 and "low dynamic range" in low.info.warning
    np.testing.assert_array_equal(low.pixels, np.rint((twelve >> 8) * 17).astype(np.uint8))


def test_ingest_records_the_scaling_and_warns_once_per_file(tmp_path):
    from gleam.config import ShardConfig
    from gleam.data.ingest.common import IngestPart, IngestPlan, PairRecord, build_report, write_part_task

    tile = tmp_path / "tile.png"
    Image.fromarray(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tile)
    narrow = tmp_path / "dn.png"
    Image.fromarray((RNG.integers(0, 300, (16, 16)) + 20_000).astype(np.uint16)).save(narrow)
    twelve = tmp_path / "twelve.png"
    Image.fromarray(RNG.integers(0, 4096, (16, 16)).astype(np.uint16)).save(twelve)
    records = [PairRecord(key=f"k{i}", location_id=f"l{i}", split="train", modality="ground", satellite=str(tile),
                          query=str(query), latitude=1.0, longitude=2.0)
               for i, query in enumerate([narrow, twelve, narrow])]
    result = write_part_task(str(tmp_path / "out"), IngestPart("train-ground-0000", "train", "ground", records),
                             "test", str(tmp_path), ShardConfig(), False, None)
    assert result["scaling"] == {"query:inferred_bits": 1, "query:used_range": 2, "satellite:none": 3}
    depth = [w for w in result["warnings"] if w["reason"] == "image_depth"]
    assert [w["file"] for w in depth] == ["dn.png"] and "low dynamic range" in depth[0]["detail"]
    report = build_report(IngestPlan("manifest", "test", str(tmp_path), records), str(tmp_path / "out"), [result],
                          [], [], False, 512, None)
    assert report["scaling"] == result["scaling"] and report["warnings_by_reason"] == {"image_depth": 1}


def test_a_validated_sample_gives_its_tile_without_a_second_decode(monkeypatch):
    """Validation decodes both images; the gallery's tile row reuses those pixels (one decode a
    tile on the way to the encoder), and a decode that fails is refused as before."""
    from gleam.data import schema
    from gleam.data.pipeline import tile_row

    tile = RNG.integers(0, 256, (24, 20, 3), dtype=np.uint8)
    sample = schema.Sample(key="s0", location_id="loc0", modality="uav", satellite_image=schema.encode_jpeg(tile),
                           query_image=schema.encode_jpeg(tile[:16]), latitude=1.0, longitude=2.0,
                           split="test", source="test")
    calls = []
    real = schema.decode_rgb
    monkeypatch.setattr(schema, "decode_rgb", lambda data, **kw: calls.append(len(data)) or real(data, **kw))
    schema.validate(sample, check_images=True, keep_pixels=True)
    row = tile_row(sample, keep_encoded=True)
    assert len(calls) == 2  # the satellite tile and the query image, each once
    pixels = np.frombuffer(row["pixels"], np.uint8).reshape(row["height"], row["width"], 3)
    np.testing.assert_array_equal(pixels, real(sample.satellite_image))
    assert (row["height"], row["width"]) == (24, 20) and row["satellite"] == sample.satellite_image
    broken = schema.Sample(key="s1", location_id="loc1", modality="satellite", satellite_image=b"\xff\xd8 not a jpeg",
                           latitude=1.0, longitude=2.0, split="test", source="test")
    with pytest.raises(schema.SampleError, match="satellite_image"):
        tile_row(broken)
    # validation without keep_pixels, or none, keeps nothing: each call decodes (lists of samples
    # held for hard-negative mining do not grow by their pixels)
    plain = schema.Sample(key="s2", location_id="loc2", modality="satellite", satellite_image=sample.satellite_image,
                          latitude=1.0, longitude=2.0, split="test", source="test")
    schema.validate(plain, check_images=True)
    calls.clear()
    plain.satellite_array(), plain.satellite_array()
    assert len(calls) == 2 and plain._decoded == {}

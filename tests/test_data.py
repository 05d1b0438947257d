import os
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from tfdnadet.config import load_config
from tfdnadet.data.images import ImageError, decode_image, is_plain_png
from tfdnadet.data.pipeline import load_images, make_image_dataset, make_patch_dataset, random_patches
from tfdnadet.data.sources import ImageList, align_to_classes, read_dataset, split_train_val
from tfdnadet.errors import TfdnadetError


def save(path, array, mode=None, **params):
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(path, **params)
    return str(path)


def rgb(size=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_decode_converts_every_mode_to_rgb8(tmp_path):
    gray = save(tmp_path / "gray.png", rgb()[..., 0])
    rgba = save(tmp_path / "rgba.png", np.dstack([rgb(), np.full((40, 40), 128, np.uint8)]))
    palette = str(tmp_path / "palette.png")
    Image.fromarray(rgb()).convert("P").save(palette)
    sixteen = str(tmp_path / "sixteen.png")
    Image.fromarray((np.arange(1600).reshape(40, 40) * 40).astype(np.uint16)).save(sixteen)
    for path in (gray, rgba, palette, sixteen):
        image = decode_image(path)
        assert image.shape == (40, 40, 3) and image.dtype == np.uint8, path
    assert decode_image(sixteen).max() > 200  # 16-bit scaled down, not clipped to 255 everywhere
    assert len(np.unique(decode_image(sixteen))) > 50


def png_chunks_rewritten(data: bytes, change) -> bytes:
    """The PNG with `change(type, payload)` applied to each chunk and every CRC made valid again."""
    out, at = bytearray(data[:8]), 8
    while at < len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        kind, payload = data[at + 4 : at + 8], change(data[at + 4 : at + 8], data[at + 8 : at + 8 + size])
        out += len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")
        at += 12 + size
    return bytes(out)


def test_plain_pngs_decode_through_libpng_to_pils_pixels_and_damaged_ones_do_not_stop_the_stream(tmp_path):
    image = rgb(48)
    plain = {
        "rgb": save(tmp_path / "rgb.png", image),
        "rgba": save(tmp_path / "rgba.png", np.dstack([image, rgb(48, seed=1)[..., 0]])),
        "rgb with a transparent colour": save(tmp_path / "trns.png", image, transparency=(1, 2, 3)),
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise
    Image.fromarray(rgb(48)[:, :40]).save(tmp_path / "exif.png", exif=exif)
    data = open(plain["rgb"], "rb").read()
    (tmp_path / "no_end.png").write_bytes(data[:-12])  # libpng refuses it, PIL reads it
    damaged = png_chunks_rewritten(data, lambda kind, payload: payload[:40] + bytes(20) + payload[60:] if kind == b"IDAT" else payload)
    (tmp_path / "damaged.png").write_bytes(damaged)  # valid CRCs, broken zlib stream
    others = {"gray": save(tmp_path / "gray.png", image[..., 0]), "exif": str(tmp_path / "exif.png"), "no IEND": str(tmp_path / "no_end.png")}
    for name, path in {**plain, **others}.items():
        assert is_plain_png(open(path, "rb").read()) == (name in plain or name == "no IEND"), name  # by its header
    assert is_plain_png(damaged) and not is_plain_png(data, max_pixels=48 * 48 - 1) and not is_plain_png(data, min_size=49)
    assert not is_plain_png(data[:25]) and not is_plain_png(b"") and not is_plain_png(data.replace(b"IDAT", b"acTL", 1))
    paths = [plain["rgb"], others["no IEND"], str(tmp_path / "damaged.png"), *plain.values(), *others.values()]
    loaded = load_images(ImageList(paths, np.arange(len(paths), dtype=np.int32), []), 48)
    assert loaded.paths == [p for p in paths if not p.endswith("damaged.png")]  # in order, the damaged one left out
    assert [(os.path.basename(p), reason) for p, reason in loaded.failures] == [("damaged.png", "not a readable image (broken data stream when reading image file)")]
    np.testing.assert_array_equal(loaded.labels, [0, 1, *range(3, len(paths))])
    for path, got in zip(loaded.paths, loaded.images):
        with Image.open(path) as reference:
            expected = np.asarray(ImageOps.exif_transpose(reference).convert("RGB"))
        if expected.shape[:2] == (48, 48):  # base size 48: no resize
            np.testing.assert_array_equal(got, expected, err_msg=path)
    assert decode_image(others["exif"]).shape == (40, 48, 3)  # turned upright by PIL


def test_files_whose_names_are_not_utf8_decode(tmp_path):
    names = [b"\xff\xfe.png", "\u00fc\u00f1\u00ef.png".encode(), b"plain.png"]  # not UTF-8, UTF-8, ASCII
    paths = [save(tmp_path / os.fsdecode(name), rgb(48, seed=index)) for index, name in enumerate(names)]
    loaded = load_images(ImageList(paths, np.zeros(len(paths), np.int32), []), 48)
    assert loaded.paths == paths and not loaded.failures
    for path, got in zip(paths, loaded.images):
        np.testing.assert_array_equal(got, np.asarray(Image.open(path)))


def test_decode_refuses_bad_files_with_a_reason(tmp_path):
    good = save(tmp_path / "good.jpg", rgb(64), quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(open(good, "rb").read()[:300])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    with pytest.raises(ImageError, match="not a readable image"):
        decode_image(str(truncated))
    with pytest.raises(ImageError, match=r"^not a readable image \(not a format PIL knows, or damaged\)$"):
        decode_image(str(garbage))
    with pytest.raises(ImageError, match="smaller than a patch"):
        decode_image(good, min_size=65)
    with pytest.raises(ImageError, match="too large"):
        decode_image(good, max_pixels=100)


def test_class_folders_manifest_and_annotations(tmp_path):
    for cls in ("real", "progan"):
        for i in range(3):
            save(tmp_path / "data" / cls / "sub" / f"{i}.png", rgb(seed=i))
    images = read_dataset(str(tmp_path / "data"))
    assert images.class_names == ["progan", "real"] and len(images) == 6
    assert images.groups[0] == "progan/sub"

    (tmp_path / "data" / "m.csv").write_text("path,label,split\nreal/sub/0.png,real,test\nprogan/sub/1.png,progan,train\n")
    manifest = read_dataset(str(tmp_path / "data" / "m.csv"))
    assert manifest.class_names == ["progan", "real"] and manifest.labels.tolist() == [1, 0] and manifest.splits == ["test", "train"]

    (tmp_path / "data" / "a.txt").write_text("real/sub/0.png\t0\nprogan/sub/1.png\t1\n")
    annotated = read_dataset(str(tmp_path / "data" / "a.txt"), class_names=["real", "progan"])
    assert annotated.labels.tolist() == [0, 1] and annotated.class_names == ["real", "progan"]
    with pytest.raises(TfdnadetError, match="class_names"):
        read_dataset(str(tmp_path / "data" / "a.txt"))

    aligned = align_to_classes(manifest, ["real", "progan", "sngan"])
    assert aligned.labels.tolist() == [0, 1]
    with pytest.raises(TfdnadetError, match="The model knows: real"):
        align_to_classes(manifest, ["real"])


def test_bad_data_sources(tmp_path):
    (tmp_path / "data" / "empty").mkdir(parents=True)
    save(tmp_path / "data" / "real" / "0.png", rgb())
    with pytest.raises(TfdnadetError, match="'empty'"):
        read_dataset(str(tmp_path / "data"))
    with pytest.raises(TfdnadetError, match="not found"):
        read_dataset(str(tmp_path / "missing"))
    (tmp_path / "escape.csv").write_text("path,label\n../../etc/passwd,real\n")
    with pytest.raises(TfdnadetError, match="outside"):
        read_dataset(str(tmp_path / "escape.csv"))


def test_load_images_skips_and_counts_unusable_files(tmp_path):
    for i in range(4):
        save(tmp_path / "d" / "real" / f"{i}.png", rgb(seed=i))
    (tmp_path / "d" / "real" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    save(tmp_path / "d" / "real" / "small.png", rgb(8))
    loaded = load_images(read_dataset(str(tmp_path / "d")), base_size=32, min_size=16)
    assert loaded.images.shape == (4, 32, 32, 3) and loaded.images.dtype == np.uint8
    assert len(loaded.failures) == 2
    assert "skipped 2 unusable" in loaded.failure_summary()


def test_random_patches_copy_exact_pixels():
    images = np.arange(2 * 16 * 16 * 3, dtype=np.float32).reshape(2, 16, 16, 3)
    patches = random_patches(images, 5, 4, seed=[0, 7]).numpy()
    assert patches.shape == (10, 4, 4, 3)
    for index, patch in enumerate(patches):
        source = images[index // 5]
        hits = [(y, x) for y in range(13) for x in range(13) if np.array_equal(source[y : y + 4, x : x + 4], patch)]
        assert hits, f"patch {index} is not an exact crop of its image"


def test_patch_dataset_is_class_balanced():
    config = load_config("tiny").data
    images = np.random.default_rng(0).integers(0, 255, (30, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0] * 20 + [1] * 7 + [2] * 3, dtype=np.int32)
    dataset = make_patch_dataset(images, labels, 3, config)
    for patches, patch_labels in dataset.take(3):
        k, p = config.images_per_class, config.patches_per_image
        assert patches.shape == (3 * k * p, config.patch_size, config.patch_size, 3)
        assert np.bincount(patch_labels.numpy(), minlength=3).tolist() == [k * p] * 3
        assert -1.0 <= float(np.min(patches)) and float(np.max(patches)) <= 1.0
    # Draws are keyed by (seed, batch index): a second pass repeats the first, another seed does not.
    first, again, other = ([p.numpy() for p, _ in make_patch_dataset(images, labels, 3, config, seed=s).take(4)] for s in (0, 0, 1))
    assert all(np.array_equal(a, b) for a, b in zip(first, again)) and not np.array_equal(first[0], other[0])
    # From batch `start` on (a resumed run): the same batches as the whole stream's, labels too.
    resumed = [(p.numpy(), y.numpy()) for p, y in make_patch_dataset(images, labels, 3, config, start=3).take(1)]
    whole = [(p.numpy(), y.numpy()) for p, y in make_patch_dataset(images, labels, 3, config).take(4)]
    np.testing.assert_array_equal(resumed[0][0], whole[3][0])
    np.testing.assert_array_equal(resumed[0][1], whole[3][1])
    full = next(iter(make_image_dataset(images, labels, config.input_size, 8)))
    assert full[0].shape == (8, config.input_size, config.input_size, 3)


def test_split_is_stratified_and_seeded(tmp_path):
    for cls in ("a", "b"):
        for i in range(10):
            save(tmp_path / "d" / cls / f"{i}.png", rgb(16, i))
    images = read_dataset(str(tmp_path / "d"))
    train, val = split_train_val(images, 0.2, seed=3)
    assert np.bincount(val.labels).tolist() == [2, 2] and len(train) == 16
    assert split_train_val(images, 0.2, seed=3)[1].paths == val.paths
    assert set(train.paths).isdisjoint(val.paths)

import os

import cv2
import numpy as np
import pytest
import torch

from data.io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    ImageWriteError,
    PairError,
    float_to_uint8,
    fuse_chroma_release,
    is_effectively_gray,
    list_images,
    load_fusion_pair,
    read_gray_0_255_metric_convention,
    read_image,
    read_label,
    recombine_color,
    rgb_to_ycrcb,
    tensor_to_image,
    to_tensor_1hw,
    write_image_atomic,
    ycrcb_to_rgb,
)


def _write_raw(path, array_bgr):
    ok, encoded = cv2.imencode(os.path.splitext(str(path))[1], array_bgr)
    assert ok
    encoded.tofile(str(path))
    return path


def _rgb_example(h=5, w=7):
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# read_image: formats
# ---------------------------------------------------------------------------------------------------------------


def test_read_gray_png(tmp_path):
    gray = np.arange(35, dtype=np.uint8).reshape(5, 7) * 7
    image = read_image(_write_raw(tmp_path / "g.png", gray))
    assert image.shape == (5, 7) and image.dtype == np.float32
    np.testing.assert_allclose(image, gray / 255.0, atol=1e-7)


def test_read_rgb_png_returns_rgb_order(tmp_path):
    rgb = _rgb_example()
    image = read_image(_write_raw(tmp_path / "c.png", rgb[..., ::-1].copy()))
    assert image.shape == (5, 7, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image, rgb / 255.0, atol=1e-7)


def test_read_16bit_png_scales_by_65535(tmp_path):
    values = np.array([[0, 1000], [32768, 65535]], dtype=np.uint16)
    image = read_image(_write_raw(tmp_path / "d.png", values))
    assert image.dtype == np.float32
    np.testing.assert_allclose(image, values / 65535.0, atol=1e-7)
    assert image.max() == 1.0


def test_read_rgba_drops_alpha(tmp_path):
    rgb = _rgb_example()
    alpha = np.full(rgb.shape[:2], 17, np.uint8)
    bgra = np.dstack([rgb[..., ::-1], alpha])
    image = read_image(_write_raw(tmp_path / "a.png", bgra))
    assert image.shape == (5, 7, 3)
    np.testing.assert_allclose(image, rgb / 255.0, atol=1e-7)


def test_read_palette_png_expands_colours_and_label_keeps_indices(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    indices = np.array([[0, 1, 2], [3, 1, 0]], dtype=np.uint8)
    handle = pil.fromarray(indices, mode="P")
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9] + [0] * (252 * 3)
    handle.putpalette(palette)
    path = tmp_path / "p.png"
    handle.save(path)
    image = read_image(path)
    assert image.shape == (2, 3, 3)
    np.testing.assert_allclose(image[0, 0], [1, 0, 0])
    np.testing.assert_allclose(image[1, 2], [1, 0, 0])
    np.testing.assert_allclose(image[1, 0], [9 / 255] * 3, atol=1e-7)
    np.testing.assert_allclose(image[0, 2], [0, 0, 1])
    np.testing.assert_array_equal(read_label(path), indices)


def test_three_equal_channels_count_as_gray(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    path = _write_raw(tmp_path / "tno.png", np.dstack([gray] * 3))
    assert is_effectively_gray(np.dstack([gray] * 3))
    assert not is_effectively_gray(_rgb_example())
    image = read_image(path)
    assert image.shape == (3, 4)
    assert read_image(path, collapse_gray=False).shape == (3, 4, 3)


def test_non_ascii_file_name_round_trip(tmp_path):
    rgb = _rgb_example()
    path = tmp_path / "红外_é_тест.png"
    write_image_atomic(path, rgb)
    assert path.exists()
    np.testing.assert_allclose(read_image(path), rgb / 255.0, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# read_image: errors name the file
# ---------------------------------------------------------------------------------------------------------------


def test_missing_file_error(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(ImageReadError, match="does not exist") as info:
        read_image(path)
    assert str(path) in str(info.value) and info.value.path == str(path)


def test_zero_byte_file_error(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty") as info:
        read_image(path)
    assert "empty.png" in str(info.value)


def test_truncated_png_error(tmp_path):
    ok, encoded = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (60, 60), dtype=np.uint8))
    path = tmp_path / "cut.png"
    path.write_bytes(encoded.tobytes()[: encoded.size // 2])
    with pytest.raises(ImageReadError, match="truncated PNG file") as info:
        read_image(path)
    assert "cut.png" in str(info.value)


def test_text_file_named_png_error(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match="not a recognised image format") as info:
        read_image(path)
    assert "notes.png" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unsupported_channel_count_and_sample_type(tmp_path, monkeypatch):
    path = _write_raw(tmp_path / "five.png", np.zeros((4, 4), np.uint8))
    monkeypatch.setattr("data.io.decode_image_unchanged", lambda p: np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ImageReadError, match="unsupported channel count 5") as info:
        read_image(path)
    assert "five.png" in str(info.value)
    monkeypatch.setattr("data.io.decode_image_unchanged", lambda p: np.zeros((4, 4), np.float32))
    with pytest.raises(ImageReadError, match="unsupported sample type float32"):
        read_image(path)


def test_colour_label_is_rejected(tmp_path):
    path = _write_raw(tmp_path / "colour_label.png", _rgb_example())
    with pytest.raises(ImageReadError, match="single-channel"):
        read_label(path)


def test_read_label_keeps_values(tmp_path):
    label = np.array([[0, 14, 255], [3, 3, 7]], dtype=np.uint8)
    out = read_label(_write_raw(tmp_path / "l.png", label))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, label)


# ---------------------------------------------------------------------------------------------------------------
# Colour
# ---------------------------------------------------------------------------------------------------------------


def test_ycrcb_round_trip_and_neutral_gray():
    rgb = np.random.default_rng(1).random((6, 5, 3), dtype=np.float32)
    ycrcb = rgb_to_ycrcb(rgb)
    np.testing.assert_allclose(ycrcb[..., 0], 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2],
                               atol=1e-5)
    np.testing.assert_allclose(ycrcb_to_rgb(ycrcb), rgb, atol=1e-3)
    gray = np.repeat(rgb[..., :1], 3, axis=2)
    np.testing.assert_allclose(rgb_to_ycrcb(gray)[..., 1:], 0.5, atol=1e-6)


def test_recombine_color_keeps_visible_chroma():
    rgb = np.random.default_rng(2).uniform(0.2, 0.8, (4, 4, 3)).astype(np.float32)
    ycrcb = rgb_to_ycrcb(rgb)
    np.testing.assert_allclose(recombine_color(ycrcb[..., 0], ycrcb[..., 1:]), rgb, atol=1e-3)
    fused_y = np.clip(ycrcb[..., 0] + 0.05, 0, 1)
    out = recombine_color(fused_y, ycrcb[..., 1:])
    np.testing.assert_allclose(rgb_to_ycrcb(out)[..., 1:], ycrcb[..., 1:], atol=1e-3)
    np.testing.assert_allclose(rgb_to_ycrcb(out)[..., 0], fused_y, atol=1e-3)
    assert recombine_color(fused_y, None) is not None and recombine_color(fused_y, None).shape == (4, 4)


def test_fuse_chroma_release_hand_computed():
    ir = np.zeros((2, 2, 2), np.float32)
    vi = np.zeros((2, 2, 2), np.float32)
    ir[..., 0] = [[0.5, 0.7], [0.2, 0.5]]  # Cr
    vi[..., 0] = [[0.6, 0.4], [0.5, 0.5]]
    ir[..., 1] = [[0.9, 0.5], [0.4, 0.3]]  # Cb
    vi[..., 1] = [[0.1, 0.5], [0.4, 0.8]]
    out = fuse_chroma_release(ir, vi)
    # Cr weights |C - 0.5|: ir [[0, .2], [.3, 0]], vi [[.1, .1], [0, 0]] -> last pixel falls back to the mean.
    expected_cr = [[0.6, (0.7 * 0.2 + 0.4 * 0.1) / 0.3], [0.2, 0.5]]
    # Cb weights: ir [[.4, 0], [.1, .2]], vi [[.4, 0], [.1, .3]]
    expected_cb = [[(0.9 * 0.4 + 0.1 * 0.4) / 0.8, 0.5], [0.4, (0.3 * 0.2 + 0.8 * 0.3) / 0.5]]
    np.testing.assert_allclose(out[..., 0], expected_cr, atol=1e-6)
    np.testing.assert_allclose(out[..., 1], expected_cb, atol=1e-6)
    np.testing.assert_array_equal(fuse_chroma_release(None, vi), vi)
    np.testing.assert_array_equal(fuse_chroma_release(ir, None), ir)
    assert fuse_chroma_release(None, None) is None


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------


def test_float_to_uint8_clamp_vs_stretch():
    values = np.array([-0.5, 0.25, 0.5, 1.5], np.float32)
    np.testing.assert_array_equal(float_to_uint8(values), [0, 64, 128, 255])
    # stretch: (x + 0.5) / 2 -> [0, 0.375, 0.5, 1]
    np.testing.assert_array_equal(float_to_uint8(values, "stretch"), [0, 96, 128, 255])
    np.testing.assert_array_equal(float_to_uint8(np.full(3, 0.5, np.float32), "stretch"), [128, 128, 128])
    with pytest.raises(ValueError, match="NaN"):
        float_to_uint8(np.array([np.nan], np.float32))
    with pytest.raises(ValueError, match="mode"):
        float_to_uint8(values, "normalise")


def test_write_image_atomic_leaves_no_temp_and_round_trips(tmp_path):
    rgb = _rgb_example()
    out = write_image_atomic(tmp_path / "sub" / "x.png", rgb)
    assert os.listdir(tmp_path / "sub") == ["x.png"]
    np.testing.assert_allclose(read_image(out), rgb / 255.0, atol=1e-7)
    # float input is clamped
    write_image_atomic(tmp_path / "f.png", np.array([[-1.0, 0.5, 2.0]], np.float32))
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "f.png"), cv2.IMREAD_UNCHANGED), [[0, 128, 255]])
    assert sorted(os.listdir(tmp_path)) == ["f.png", "sub"]


def test_write_image_atomic_refuses_to_overwrite_an_input(tmp_path):
    source = _write_raw(tmp_path / "vi.png", _rgb_example())
    before = source.read_bytes()
    with pytest.raises(ImageWriteError, match="input file"):
        write_image_atomic(tmp_path / "." / "vi.png", np.zeros((5, 7), np.uint8), forbid=[source])
    assert source.read_bytes() == before
    assert os.listdir(tmp_path) == ["vi.png"]
    with pytest.raises(ImageWriteError, match="extension"):
        write_image_atomic(tmp_path / "noext", np.zeros((2, 2), np.uint8))


def test_tensor_helpers_round_trip():
    gray = np.random.default_rng(0).random((3, 4), dtype=np.float32)
    tensor = to_tensor_1hw(gray)
    assert tensor.shape == (1, 3, 4) and tensor.dtype == torch.float32
    np.testing.assert_array_equal(tensor_to_image(tensor), gray)
    np.testing.assert_array_equal(tensor_to_image(tensor[None]), gray)
    colour = np.random.default_rng(0).random((3, 4, 2), dtype=np.float32)
    assert to_tensor_1hw(colour).shape == (2, 3, 4)
    np.testing.assert_array_equal(tensor_to_image(to_tensor_1hw(colour)), colour)


def test_load_fusion_pair_size_mismatch_names_both(tmp_path):
    ir = _write_raw(tmp_path / "ir.png", np.zeros((4, 6), np.uint8))
    vi = _write_raw(tmp_path / "vi.png", np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(PairError) as info:
        load_fusion_pair(ir, vi)
    assert "ir.png" in str(info.value) and "vi.png" in str(info.value)


def test_load_fusion_pair_colour_infrared_becomes_luminance(tmp_path):
    rgb = _rgb_example()
    ir = _write_raw(tmp_path / "ir.png", rgb[..., ::-1].copy())
    vi = _write_raw(tmp_path / "vi.png", rgb[..., ::-1].copy())
    pair = load_fusion_pair(ir, vi)
    assert pair["ir"].shape == (5, 7) and pair["vi_y"].shape == (5, 7) and pair["vi_crcb"].shape == (5, 7, 2)
    np.testing.assert_allclose(pair["ir"], pair["vi_y"])
    assert pair["name"] == "vi"


def _release_y(path):
    """The authors' test.py, step by step: cv2.imread (8-bit BGR), float32, BGR -> RGB, RGB -> YCrCb, Y / 255."""
    rgb = cv2.cvtColor(cv2.imread(str(path)).astype("float32"), cv2.COLOR_BGR2RGB)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)[:, :, 0] / 255


def test_release_reading_is_the_release_pipeline_and_differs_from_exact_by_round_off(tmp_path):
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = _rgb_example(16, 16)
    ir = _write_raw(tmp_path / "ir.png", ramp)
    vi = _write_raw(tmp_path / "vi.png", rgb[..., ::-1].copy())
    exact = load_fusion_pair(ir, vi)
    release = load_fusion_pair(ir, vi, reading="release")
    assert release["ir"].dtype == np.float32 and release["vi_y"].dtype == np.float32
    np.testing.assert_array_equal(release["ir"], _release_y(ir))
    np.testing.assert_array_equal(release["vi_y"], _release_y(vi))
    np.testing.assert_array_equal(exact["ir"], ramp.astype(np.float32) / np.float32(255))
    gap = np.abs(release["ir"].astype(np.float64) - exact["ir"].astype(np.float64))
    assert 0 < gap.max() <= 1e-7 and (gap > 0).sum() > 10  # below float32 resolution, but not nothing
    np.testing.assert_array_equal(release["vi_crcb"], exact["vi_crcb"])  # chroma is read the same way
    deep = _write_raw(tmp_path / "deep.png", ramp.astype(np.uint16) * 257)  # 16-bit: the release reads 8 bits
    np.testing.assert_array_equal(load_fusion_pair(deep, deep, reading="release")["ir"], _release_y(deep))
    with pytest.raises(ValueError, match="input reading must be one of"):
        load_fusion_pair(ir, vi, reading="opencv")


def test_metric_convention_reader(tmp_path):
    rgb = _rgb_example()
    path = _write_raw(tmp_path / "m.png", rgb[..., ::-1].copy())
    expected = np.round(0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2])
    np.testing.assert_allclose(read_gray_0_255_metric_convention(path), expected, atol=1.0)
    assert np.all(read_gray_0_255_metric_convention(path) == np.round(read_gray_0_255_metric_convention(path)))


# ---------------------------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------------------------


def test_real_pairs(shared_data):
    msrs = sorted((shared_data / "MSRS" / "ir").glob("*.png"))[:2]
    for ir in msrs:
        pair = load_fusion_pair(ir, shared_data / "MSRS" / "vi" / ir.name)
        assert pair["ir"].shape == (480, 640) and pair["vi_crcb"] is not None
        assert 0.0 <= pair["ir"].min() and pair["vi_y"].max() <= 1.0
    odd = None
    for ir in sorted((shared_data / "RoadScene" / "ir").glob("*.png")):
        h, w = cv2.imread(str(ir), cv2.IMREAD_GRAYSCALE).shape
        if h % 2 or w % 2:
            odd = ir
            break
    assert odd is not None
    pair = load_fusion_pair(odd, shared_data / "RoadScene" / "vi" / odd.name)
    assert pair["ir"].shape == pair["vi_y"].shape and (pair["ir"].shape[0] % 2 or pair["ir"].shape[1] % 2)
    tno = sorted((shared_data / "TNO" / "ir").glob("*.png"))[0]
    pair = load_fusion_pair(tno, shared_data / "TNO" / "vi" / tno.name)
    assert pair["vi_crcb"] is None and pair["ir_crcb"] is None and pair["vi_y"].ndim == 2


def test_pillow_free_palette_detection_uses_png_header(tmp_path):
    # A gray PNG must not be routed to the palette path (colour type byte 0).
    path = _write_raw(tmp_path / "g.png", np.zeros((2, 2), np.uint8))
    assert path.read_bytes()[25] == 0
    assert read_label(path).shape == (2, 2)


# ---------------------------------------------------------------------------------------------------------------
# One IO stack: listing, messages, EXIF orientation, the metric reading (issues 13, 15)
# ---------------------------------------------------------------------------------------------------------------


def test_list_images_one_extension_list_and_what_is_not_a_file(tmp_path):
    for name in ("a.png", "a.jpg", "b.PNG", "f.webp", "g.pgm"):
        _write_raw(tmp_path / name, np.zeros((4, 4), np.uint8))
    (tmp_path / "notes.txt").write_text("x")
    _write_raw(tmp_path / ".hidden.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "d.png").mkdir()
    (tmp_path / "e.png").symlink_to(tmp_path / "gone.png")
    listing = list_images(tmp_path)
    assert set(listing.files) == {"b", "f", "g"} and ".webp" in IMAGE_EXTENSIONS
    assert [p.name for p in listing.duplicates["a"]] == ["a.jpg", "a.png"]
    assert listing.unusable["d"] == "d.png is a folder, not an image file"
    assert listing.unusable["e"].startswith("e.png is a broken symbolic link") and "gone.png" in listing.unusable["e"]
    assert listing and not list_images(tmp_path / "d.png")  # an empty folder lists nothing
    np.testing.assert_array_equal(read_image(listing.files["f"]), np.zeros((4, 4)))  # .webp is read too


def test_folder_and_dangling_link_messages_are_not_missing_file(tmp_path):
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "link.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(ImageReadError, match="is a folder, not an image file"):
        read_image(tmp_path / "dir.png")
    with pytest.raises(ImageReadError, match="broken symbolic link .*nowhere.png"):
        read_gray_0_255_metric_convention(tmp_path / "link.png")


def test_float_tiff_is_not_called_truncated(tmp_path):
    ok, encoded = cv2.imencode(".tiff", np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8))
    path = tmp_path / "f.tiff"
    path.write_bytes(encoded.tobytes())
    with pytest.raises(ImageReadError) as info:
        read_gray_0_255_metric_convention(path)
    assert "valid TIFF with float32 samples" in info.value.reason and "truncated" not in str(info.value)
    with pytest.raises(ImageReadError, match="unsupported sample type float32"):
        read_image(path)


def test_corrupt_but_complete_png_and_foreign_riff(tmp_path):
    ok, encoded = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (60, 60), dtype=np.uint8))
    data = bytearray(encoded.tobytes())
    data[60:200] = bytes(140)  # damage inside IDAT; the end marker is still there
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="corrupt PNG data") as info:
        read_image(tmp_path / "bad.png")
    assert "truncated" not in str(info.value)
    (tmp_path / "sound.webp").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40))  # a WAV named .webp
    with pytest.raises(ImageReadError, match="not a recognised image format"):
        read_gray_0_255_metric_convention(tmp_path / "sound.webp")


def _jpeg_with_orientation(path, rgb: np.ndarray, orientation: int) -> None:
    pil = pytest.importorskip("PIL.Image")
    image = pil.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = orientation  # EXIF Orientation
    image.save(path, "JPEG", exif=exif.tobytes(), quality=95)


def test_exif_orientation_is_ignored_by_every_reader(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:5] = 255  # a bright top band, stored landscape
    path = tmp_path / "rotated.jpg"
    _jpeg_with_orientation(path, rgb, 6)  # "rotate 90 degrees to display"
    assert cv2.imread(str(path)).shape[:2] == (30, 20)  # the tag is there: cv2.imread would rotate
    fused_view = read_image(path)
    metric_view = read_gray_0_255_metric_convention(path)
    assert fused_view.shape[:2] == metric_view.shape == (20, 30)
    assert metric_view[:5].mean() > 200 and metric_view[10:].mean() < 50  # stored order, not rotated
    pair = load_fusion_pair(path, path)
    assert pair["vi_y"].shape == metric_view.shape


def test_io_and_metrics_import_without_torch():
    import subprocess
    import sys

    code = "import sys, data.io, metrics.evaluate, eval_metrics; assert 'torch' not in sys.modules, 'torch imported'"
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr

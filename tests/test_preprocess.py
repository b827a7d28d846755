"""The preprocessing spec: stored columns (numbers, uint8 pixels, encoded images) to float32 model input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from crossdistill.data.preprocess import Preprocessor, decode_image
from crossdistill.errors import DataError


def _encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def _rgb(h=4, w=6, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _images(*arrays: np.ndarray) -> np.ndarray:
    return np.array([_encode(a) for a in arrays], dtype=object)


def test_rgb_images_decode_channels_first_scaled_and_normalised():
    a, b = _rgb(seed=1), _rgb(seed=2)
    meta = {"preprocess": {"kind": "image", "size": [4, 6], "channels": 3, "scale": 1 / 255,
                           "mean": [0.5, 0.25, 0.0], "std": [0.5, 0.5, 2.0]}}
    x = Preprocessor(meta)({"id": np.array([0, 1]), "image": _images(a, b)})
    assert x.shape == (2, 3, 4, 6) and x.dtype == np.float32 and x.flags.c_contiguous
    expected = (np.stack([a, b]).transpose(0, 3, 1, 2) / 255.0 - np.array([0.5, 0.25, 0])[None, :, None, None]) \
        / np.array([0.5, 0.5, 2.0])[None, :, None, None]
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-6)


def test_grey_conversion_and_resize_follow_the_spec_and_its_override():
    a = _rgb(8, 10)
    meta = {"preprocess": {"kind": "image", "size": [8, 10], "channels": 3, "scale": 1 / 255}}
    x = Preprocessor(meta, override={"channels": 1, "size": [4, 5]})({"image": _images(a)})
    assert x.shape == (1, 1, 4, 5)
    grey = np.asarray(Image.fromarray(a).convert("L").resize((5, 4), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(x[0, 0] * 255, grey, atol=1e-3)
    assert Preprocessor(meta, {"size": 16})({"image": _images(a)}).shape == (1, 3, 16, 16)  # one side: square


def test_jpeg_and_grey_png_decode_to_the_requested_channels():
    grey = np.full((5, 5), 100, dtype=np.uint8)
    out = decode_image(_encode(grey), (5, 5), 3, "here")
    assert out.shape == (3, 5, 5) and (out == 100).all()
    jpeg = decode_image(_encode(_rgb(8, 8), "JPEG"), (8, 8), 3, "here")
    assert jpeg.shape == (3, 8, 8) and jpeg.dtype == np.uint8


def test_an_image_that_does_not_decode_names_its_id():
    meta = {"preprocess": {"kind": "image", "size": [4, 6], "channels": 3}}
    batch = {"id": np.array([7, 42]), "image": np.array([_encode(_rgb()), b"not a png"], dtype=object)}
    with pytest.raises(DataError, match="train data: id 42: the image does not decode"):
        Preprocessor(meta, where="train data")(batch)


def test_images_without_an_image_spec_are_refused():
    with pytest.raises(DataError, match="needs a preprocess spec with kind 'image'"):
        Preprocessor({})({"image": _images(_rgb())})


def test_numeric_inputs_scale_and_normalise_per_feature():
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 1, 2, 2)
    x = Preprocessor({"preprocess": {"scale": 0.5}})({"x": pixels})
    np.testing.assert_allclose(x, pixels / 2.0)
    table = np.array([[1.0, 10.0], [3.0, 30.0]], dtype=np.float32)
    y = Preprocessor({"preprocess": {"mean": [2.0, 20.0], "std": [1.0, 10.0]}})({"x": table})
    np.testing.assert_allclose(y, [[-1, -1], [1, 1]])


def test_statistics_that_do_not_fit_the_channels_are_a_data_error_naming_the_key():
    grey = np.zeros((2, 1, 4, 4), dtype=np.uint8)  # one channel; an RGB mean/std of three values cannot apply
    with pytest.raises(DataError, match=r"val data: preprocess 'mean'=\[0.5, 0.5, 0.5\]: expected a number or one "
                                        r"per channel \(1 channel\(s\): inputs of shape \[1, 4, 4\]"):
        Preprocessor({"preprocess": {"mean": [0.5, 0.5, 0.5]}}, where="val data")({"x": grey})
    with pytest.raises(DataError, match="preprocess 'std'=\\[0.0\\]: expected finite numbers > 0"):
        Preprocessor({"preprocess": {"std": [0.0]}})({"x": grey})
    with pytest.raises(DataError, match="preprocess 'mean'='a lot'"):
        Preprocessor({"preprocess": {"mean": "a lot"}})({"x": grey})
    rgb = np.full((1, 3, 2, 2), 10, dtype=np.uint8)
    y = Preprocessor({"preprocess": {"mean": [1.0, 2.0, 3.0], "std": 2.0}})({"x": rgb})  # per channel; one for all
    np.testing.assert_allclose(y[0, :, 0, 0], [4.5, 4.0, 3.5])

"""Adapters: one network in four formats gives the same logits; layers; format detection and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crossdistill import storage
from crossdistill.errors import ModelFormatError, TeacherError
from crossdistill.teacher.adapters import TORCHSCRIPT_META, load_teacher

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def four_formats(tmp_path_factory, digits):
    """A Keras MLP, and a torch MLP holding the same weights, saved as .keras, SavedModel, TorchScript, ONNX."""
    import keras

    torch.set_num_threads(1)
    keras.utils.set_random_seed(1)
    tmp = tmp_path_factory.mktemp("formats")
    inp = keras.Input((1, 8, 8), name="input")
    h = keras.layers.Flatten(name="flatten")(inp)
    h = keras.layers.Dense(32, activation="relu", name="hidden")(h)
    out = keras.layers.Dense(10, name="logits")(h)
    km = keras.Model(inp, out)
    km.save(tmp / "m.keras")
    km.export(str(tmp / "saved"), format="tf_saved_model", verbose=False)

    (w1, b1), (w2, b2) = km.get_layer("hidden").get_weights(), km.get_layer("logits").get_weights()
    tm = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    with torch.no_grad():
        tm[1].weight.copy_(torch.from_numpy(w1.T))
        tm[1].bias.copy_(torch.from_numpy(b1))
        tm[3].weight.copy_(torch.from_numpy(w2.T))
        tm[3].bias.copy_(torch.from_numpy(b2))
    tm.eval()
    torch.jit.save(torch.jit.script(tm), str(tmp / "m.pt"),
                   _extra_files={TORCHSCRIPT_META: json.dumps({"input_shape": [1, 8, 8], "num_classes": 10})})
    torch.onnx.export(tm, (torch.zeros(2, 1, 8, 8),), str(tmp / "m.onnx"), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      dynamo=False)
    x = digits["x"][:50]
    with torch.no_grad():
        hidden = tm[2](tm[1](tm[0](torch.from_numpy(x)))).numpy()
    return {"dir": tmp, "x": x, "keras": km, "hidden": hidden}


@pytest.mark.parametrize("name,fmt", [("m.keras", "keras"), ("saved", "savedmodel"), ("m.pt", "torchscript"),
                                      ("m.onnx", "onnx")])
def test_every_format_gives_the_same_logits(four_formats, name, fmt):
    adapter = load_teacher(str(four_formats["dir"] / name), threads=1)
    assert adapter.format == fmt
    assert adapter.input_shape == (1, 8, 8)
    assert adapter.num_classes == 10
    assert adapter.num_parameters == 64 * 32 + 32 + 32 * 10 + 10
    assert adapter.size_bytes > 0
    expected = np.asarray(four_formats["keras"](four_formats["x"]))
    got = adapter.predict(four_formats["x"])["logits"]
    assert got.dtype == np.float32 and got.shape == (50, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_keras_layers_by_name(four_formats):
    import keras

    adapter = load_teacher(str(four_formats["dir"] / "m.keras"))
    assert "hidden" in adapter.layer_names() and "input" not in adapter.layer_names()
    out = adapter.predict(four_formats["x"], layers=["hidden"])
    ref = keras.Model(four_formats["keras"].input, four_formats["keras"].get_layer("hidden").output)
    np.testing.assert_allclose(out["hidden"], np.asarray(ref(four_formats["x"])), rtol=1e-5, atol=1e-5)
    with pytest.raises(TeacherError, match="no layer"):
        adapter.predict(four_formats["x"], layers=["nope"])


def test_torchscript_and_onnx_layers_match_the_torch_network(four_formats):
    ts = load_teacher(str(four_formats["dir"] / "m.pt"))
    assert ts.layer_names() == ["0", "1", "2", "3"]  # children of the Sequential root
    np.testing.assert_allclose(ts.predict(four_formats["x"], layers=["2"])["2"], four_formats["hidden"], atol=1e-5)
    ox = load_teacher(str(four_formats["dir"] / "m.onnx"))
    relu = [n for n in ox.layer_names() if "Relu" in n]
    assert relu, ox.layer_names()
    out = ox.predict(four_formats["x"], layers=[relu[0]])
    np.testing.assert_allclose(out[relu[0]], four_formats["hidden"], atol=1e-5)
    np.testing.assert_allclose(out["logits"], ts.predict(four_formats["x"])["logits"], atol=1e-5)


def test_torchscript_dict_outputs_are_layers(tmp_path, digits):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(64, 16)
            self.head = torch.nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            h = torch.relu(self.body(x.flatten(1)))
            return {"logits": self.head(h), "features": h}

    net = Net().eval()
    torch.jit.save(torch.jit.script(net), str(tmp_path / "d.pt"),
                   _extra_files={TORCHSCRIPT_META: json.dumps({"input_shape": [1, 8, 8]})})
    adapter = load_teacher(str(tmp_path / "d.pt"))
    assert adapter.layer_names() == ["features"]
    out = adapter.predict(digits["x"][:4], layers=["features"])
    with torch.no_grad():
        ref = net(torch.from_numpy(digits["x"][:4]))
    np.testing.assert_allclose(out["features"], ref["features"].numpy(), atol=1e-6)
    np.testing.assert_allclose(out["logits"], ref["logits"].numpy(), atol=1e-6)


def test_softmax_teacher_serves_log_probs(tmp_path, digits):
    import keras

    inp = keras.Input((1, 8, 8))
    probs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inp))
    model = keras.Model(inp, probs)
    model.save(tmp_path / "p.keras")
    adapter = load_teacher(str(tmp_path / "p.keras"), output_is_probs=True)
    logits = adapter.predict(digits["x"][:8])["logits"]
    np.testing.assert_allclose(logits, np.log(np.asarray(model(digits["x"][:8]))), rtol=1e-5, atol=1e-6)


def test_loads_from_an_fsspec_uri(four_formats):
    uri = "memory://teachers/m.onnx"
    storage.put_file(four_formats["dir"] / "m.onnx", uri)
    adapter = load_teacher(uri)
    assert adapter.format == "onnx" and adapter.source == uri
    assert adapter.predict(four_formats["x"][:3])["logits"].shape == (3, 10)


def test_wrong_format_names_file_and_expected_format(four_formats, tmp_path):
    keras_file = str(four_formats["dir"] / "m.keras")
    with pytest.raises(ModelFormatError, match=r"m\.keras.*model_format='onnx' expects an ONNX"):
        load_teacher(keras_file, fmt="onnx")
    with pytest.raises(ModelFormatError, match=r"m\.onnx.*TorchScript"):
        load_teacher(str(four_formats["dir"] / "m.onnx"), fmt="torchscript")
    bogus = tmp_path / "broken.onnx"
    bogus.write_text("this is not a model")
    with pytest.raises(ModelFormatError, match=r"broken\.onnx: not a valid ONNX model"):
        load_teacher(str(bogus))
    unknown = tmp_path / "weights.bin"
    unknown.write_bytes(b"\x00\x01\x02")
    with pytest.raises(ModelFormatError, match=r"weights\.bin: cannot tell the model format"):
        load_teacher(str(unknown))
    with pytest.raises(ModelFormatError, match=r"weights\.bin: is a file, expected a TF SavedModel"):
        load_teacher(str(unknown), fmt="savedmodel")
    with pytest.raises(ModelFormatError, match=r"saved: is a TF SavedModel directory.*expects an ONNX"):
        load_teacher(str(four_formats["dir"] / "saved"), fmt="onnx")


def test_input_of_the_wrong_shape_is_refused(four_formats):
    adapter = load_teacher(str(four_formats["dir"] / "m.onnx"))
    with pytest.raises(TeacherError, match=r"expects \[N, 1, 8, 8\]"):
        adapter.predict(np.zeros((2, 1, 7, 7), np.float32))


def test_a_torchscript_archive_whose_input_shape_does_not_fit_is_one_line(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    path = tmp_path / "misfit.pt"
    torch.jit.save(torch.jit.script(net), str(path),
                   _extra_files={TORCHSCRIPT_META: json.dumps({"input_shape": [1, 7, 7], "num_classes": 10})})
    with pytest.raises(ModelFormatError, match=r"misfit\.pt: a forward pass on 'input' of the recorded input_shape "
                                               r"\[1, 1, 7, 7\] failed") as err:
        load_teacher(str(path))
    assert "\n" not in str(err.value)


def test_a_truncated_model_file_is_one_line(four_formats, tmp_path):
    whole = (four_formats["dir"] / "m.keras").read_bytes()
    cut = tmp_path / "cut.keras"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelFormatError, match=r"cut\.keras: cannot load as a Keras \.keras model") as err:
        load_teacher(str(cut))
    assert "\n" not in str(err.value) and len(str(err.value)) < 500


def test_an_inprocess_forward_that_fails_names_the_input(tmp_path, digits):
    from crossdistill.teacher.client import TeacherClientConfig
    from crossdistill.teacher.colocated import open_teacher

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(49, 10)).eval()  # expects 7x7 images
    path = tmp_path / "no-meta.pt"
    torch.jit.save(torch.jit.script(net), str(path))  # no recorded input shape: nothing to check up front
    teacher = open_teacher(TeacherClientConfig(url=f"inprocess:{path}"))
    with pytest.raises(ModelFormatError, match=r"no-meta\.pt: a forward pass on 'input' of shape \[4, 1, 8, 8\] "
                                               r"failed") as err:
        teacher.infer(digits.ids[:4], digits["x"][:4])
    assert "\n" not in str(err.value)

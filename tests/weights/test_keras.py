"""Keras 3 applications (KERAS_BACKEND=torch, weights=None, classifier_activation=None), random weights,
written in the Keras-2 HDF5 layout by Keras's own legacy writer: imported exactly, with TF padding,
BN eps 1e-3, [-1, 1] inputs (and ReLU6 for MobileNet V1), each of which is needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mobilecnn import create_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

V2 = {0.35: "mobilenet_v2_x0_35", 1.0: "mobilenet_v2_x1_0", 1.4: "mobilenet_v2_x1_4"}
V1 = {0.25: "mobilenet_v1_x0_25", 1.0: "mobilenet_v1_x1_0"}


def _randomize(keras, model, seed=0):
    """He-normal kernels (Keras' glorot default on depthwise kernels washes the input out), random BN
    with momentum 0 so the next training-mode call sets the moving statistics to the batch's."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            ws = layer.get_weights()
            k = ws[0]
            fan_in = k.shape[0] * k.shape[1] if isinstance(layer, keras.layers.DepthwiseConv2D) else int(np.prod(k.shape[:-1]))
            ws[0] = rng.normal(0, (2.0 / fan_in) ** 0.5, k.shape).astype(k.dtype)
            if len(ws) > 1:
                ws[1] = rng.normal(0, 0.1, ws[1].shape).astype(ws[1].dtype)
            layer.set_weights(ws)
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), np.zeros(c), np.ones(c)])
            layer.momentum = 0.0


def _calibrate(keras, model, x_nhwc, seed=0):
    rng = np.random.default_rng(seed + 1)
    model(np.concatenate([x_nhwc, x_nhwc[:, :, ::-1]]), training=True)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            c = gamma.shape[0]
            layer.set_weights([gamma, beta, mean + rng.normal(0, 0.05, c) * np.sqrt(var), var * rng.uniform(0.8, 1.2, c)])
            layer.momentum = 0.99


def _save_legacy_h5(model, path: Path) -> None:
    """The Keras-2 layout of the published application files, by Keras 3's own legacy writer."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(str(path), "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def _check(keras, model, preprocess_input, tmp_path, name, size, expect, options, wt):
    x8 = wt.photos(size)
    x_keras = preprocess_input(x8.permute(0, 2, 3, 1).float().numpy().copy())  # Keras' own: x / 127.5 - 1
    _calibrate(keras, model, x_keras)
    h5 = tmp_path / name
    _save_legacy_h5(model, h5)
    ref = keras.ops.convert_to_numpy(model(x_keras, training=False))
    out = tmp_path / "w.safetensors"
    side = wt.import_file(h5, "keras", out)
    assert side["model"] == expect and side["model_kwargs"] == options
    pre = side["data"]["preprocessing"]
    assert pre["resolution"] == size and pre["scale"] == pytest.approx(2 / 255) and pre["mean"] == [1.0] * 3
    x = wt.ours_input(out, x8)
    assert wt.rel_diff(wt.logits(create_model(expect, weights=out), x), ref) <= wt.TOL
    state = create_model(expect, weights=out).state_dict()
    for dropped in options:  # each option is needed: without it the same tensors are another function
        partial = {k: v for k, v in options.items() if k != dropped}
        model = create_model(expect, **partial)
        model.load_state_dict(state)
        assert wt.rel_diff(wt.logits(model, x), ref) > wt.TOL, f"{dropped} made no difference"


@pytest.mark.parametrize("alpha,size", [(0.35, 96), (1.0, 224), (1.4, 224)])
def test_keras_mobilenet_v2_exact(alpha, size, tmp_path, keras, wt):
    keras.utils.set_random_seed(0)
    m = keras.applications.MobileNetV2(weights=None, alpha=alpha, input_shape=(size, size, 3), classifier_activation=None)
    _randomize(keras, m)
    name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{size}.h5"  # the published name pattern
    _check(keras, m, keras.applications.mobilenet_v2.preprocess_input, tmp_path, name, size, V2[alpha],
           {"bn_eps": 0.001, "padding": "tf_same"}, wt)


@pytest.mark.parametrize("alpha,size", [(0.25, 224), (1.0, 128)])
def test_keras_mobilenet_v1_exact(alpha, size, tmp_path, keras, wt):
    keras.utils.set_random_seed(0)
    m = keras.applications.MobileNet(weights=None, alpha=alpha, input_shape=(size, size, 3), classifier_activation=None)
    _randomize(keras, m)
    name = f"mobilenet_{str(alpha).replace('.', '_')}_{size}_tf.h5"
    _check(keras, m, keras.applications.mobilenet.preprocess_input, tmp_path, name, size, V1[alpha],
           {"act": "relu6", "bn_eps": 0.001, "padding": "tf_same"}, wt)


def test_keras_headless_file_and_no_keras_import(tmp_path, keras):
    """A include_top=False file converts (no classifier); the reader needs h5py only (fresh interpreter)."""
    m = keras.applications.MobileNetV2(weights=None, alpha=0.5, include_top=False, input_shape=(96, 96, 3))
    h5 = tmp_path / "no_top.h5"
    _save_legacy_h5(m, h5)
    code = ("import sys; from mobilecnn.weights import import_weights; "
            "d = import_weights(sys.argv[1], 'keras', sys.argv[2]); "
            "assert not any(k.split('.')[0] in ('keras', 'tensorflow') for k in sys.modules), 'keras imported'; "
            "print(d['model'], d['headless'])")
    env = {**os.environ, "PYTHONPATH": str(Path(__import__("mobilecnn").__file__).parents[1])}
    res = subprocess.run([sys.executable, "-c", code, str(h5), str(tmp_path / "w.safetensors")], capture_output=True,
                         text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["mobilenet_v2_x0_5", "True"]

"""The view settings (central crop, per-image intensity stretch) run inside the model: the served graph sees
exactly what training saw, the cut border cannot move an answer, and Grad-CAM maps back onto the input."""

import glob
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from trainer import inputs, models, ood, signatures
from trainer.config import TrainerConfig
from trainer.threshold import Threshold

SIZE = 64
VIEW = {"central_crop": 0.75, "intensity": "percentile"}


def tiny_cnn(**view):
    return models.build("cnn", SIZE, **models.REGISTRY["cnn"].tiny, **view)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def real_films(shared_data, count=3):
    files = sorted(glob.glob(f"{shared_data}/chest_xray/test/*/*.jpeg"))[::150][:count]
    return [np.asarray(Image.open(f).convert("L").resize((SIZE, SIZE))) for f in files]


def with_white_border(pixels: np.ndarray, width: int) -> np.ndarray:
    painted = pixels.copy()
    painted[:width], painted[-width:], painted[:, :width], painted[:, -width:] = 255, 255, 255, 255
    return painted


def export(model, tmp_path, name, view) -> str:
    export_dir = str(tmp_path / name)
    signatures.export(
        model,
        export_dir,
        SIZE,
        Threshold(0.5, "youden", 1.0, 1.0, 4),
        str(tmp_path / f"{name}-work"),
        "cnn",
        {**models.REGISTRY["cnn"].tiny, **view},
        guard=ood.noise_guard(model, SIZE),
    )
    return export_dir


def served(export_dir: str, signature: str, images):
    outputs = tf.saved_model.load(export_dir).signatures[signature](images=tf.constant(images))
    return {key: value.numpy() for key, value in outputs.items()}


def test_the_layer_removes_the_border_and_the_exposure():
    film = np.random.default_rng(0).uniform(0, 255, (1, SIZE, SIZE, 1)).astype("float32")
    view = models.ViewStandardization(**VIEW)
    reference = view(film).numpy()
    bordered = film.copy()
    bordered[:, :7], bordered[:, -7:], bordered[:, :, :7], bordered[:, :, -7:] = 255.0, 0.0, 255.0, 0.0
    np.testing.assert_allclose(view(bordered).numpy(), reference, atol=1e-3)
    np.testing.assert_allclose(view(0.5 * film + 60.0).numpy(), reference, atol=1e-2)  # another exposure
    assert reference.min() == 0.0 and reference.max() == 255.0
    assert not np.allclose(models.ViewStandardization()(bordered).numpy(), models.ViewStandardization()(film).numpy())


def test_serving_applies_the_view_training_applied(shared_data, tmp_path):
    """The training input pipeline's pixels through the Keras model, and the served graph on the same bytes,
    give the same probability; and the served answer ignores a border the crop removes, unlike the same
    weights without the view."""
    films = real_films(shared_data)
    model = tiny_cnn(**VIEW)
    records = str(tmp_path / "split.tfrecord.gz")
    with tf.io.TFRecordWriter(records, "GZIP") as writer:
        for film in films:
            writer.write(
                tf.train.Example(
                    features=tf.train.Features(
                        feature={
                            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png(film)])),
                            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[0])),
                        }
                    )
                ).SerializeToString()
            )
    pixels, _ = next(iter(inputs.make_dataset([records], SIZE, batch_size=len(films), training=False)))
    trained_view = model(pixels, training=False).numpy().reshape(-1)

    with_view = export(model, tmp_path, "with-view", VIEW)
    np.testing.assert_allclose(
        served(with_view, "predict_images", [png(f) for f in films])["probability"], trained_view, atol=1e-6
    )

    plain = tiny_cnn()
    plain.set_weights(model.get_weights())  # the view layer has no weights: the same network without it
    without_view = export(plain, tmp_path, "without-view", {})
    width = SIZE // 10  # inside the 12.5% each side the crop cuts
    original = [png(f) for f in films]
    painted = [png(with_white_border(f, width)) for f in films]
    np.testing.assert_allclose(
        served(with_view, "predict_images", painted)["probability"],
        served(with_view, "predict_images", original)["probability"],
        atol=2e-3,
    )
    assert not np.allclose(
        served(without_view, "predict_images", painted)["probability"],
        served(without_view, "predict_images", original)["probability"],
        atol=2e-3,
    )


def test_gradcam_of_a_cropping_model_is_zero_on_the_cut_border(shared_data, tmp_path):
    model = tiny_cnn(**VIEW)
    export_dir = export(model, tmp_path, "model", VIEW)
    maps = served(export_dir, "explain_images", [png(f) for f in real_films(shared_data)])["gradcam"]
    side = maps.shape[1]  # the served map is the input at a quarter of its side
    offset, kept = models.crop_box(side, VIEW["central_crop"])
    inside = maps[:, offset + 1 : offset + kept - 1, offset + 1 : offset + kept - 1]
    border = maps.copy()
    border[:, offset : offset + kept, offset : offset + kept] = 0.0
    assert np.all(border == 0.0) and inside.max() > 0.0


@pytest.mark.parametrize(
    "model_config, message",
    [
        ({"central_crop": 0.3}, "central_crop must be in"),
        ({"intensity": "histogram"}, "intensity must be one of"),
    ],
)
def test_bad_view_settings_are_refused_before_training(model_config, message):
    config = {
        "architecture": "cnn",
        "image_size": SIZE,
        "epochs": 1,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "early_stopping_patience": 1,
        "threshold_policy": "youden",
        "loss": "bce",
        "augment": False,
        "horizontal_flip": False,
        "cache": False,
        "weights": "none",
        "seed": 1,
        "model_config": model_config,
    }
    with pytest.raises(ValueError, match=message):
        TrainerConfig.from_dict(config)


def test_an_ensemble_refuses_members_that_see_different_crops():
    members = [
        {"architecture": "cnn", "model_config": {**models.REGISTRY["cnn"].tiny, "central_crop": crop}}
        for crop in (0.75, 1.0)
    ]
    with pytest.raises(ValueError, match="members crop their input differently"):
        models.build("ensemble", SIZE, members=members)

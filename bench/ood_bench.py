"""Out-of-distribution guard: how well the Mahalanobis score separates Kermany test X-rays from other images.

Trains the `cnn` architecture briefly on the Kermany train split (a tenth of the patients held out as
validation), fits the guard as the Trainer does (trainer/ood.py: Gaussians on train, threshold at the
99.5th percentile of validation), and prints, per image set, the OOD AUROC against Kermany test (1.0:
every image of the set scores above every test X-ray) and the share flagged at the threshold, for the
guard's features (the pooled Grad-CAM feature map) and, for comparison, the penultimate features:
  - natural photographs: scikit-image's packaged photographs (plus four crops of each) and its 200 LFW faces;
  - documents and noise: scikit-image's page and text scans (with crops), synthetic typed pages, noise;
  - CT-like slices: the Shepp-Logan head phantom reconstructed by filtered back-projection (skimage.transform),
    rotated and cropped: synthetic, not patient CT;
  - the external adult X-rays (ieee8023 + RSNA): the share flagged, and the model's error rate among the
    flagged and the unflagged images at its threshold (Youden on validation).
Usage: .venv/bin/python bench/ood_bench.py [--image-size 128] [--epochs 3] [--percentile 99.5]
       [--weights /tmp/ood-cnn.weights.h5]
"""

import argparse
import glob
import os
import re
import time
from typing import Dict, List

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

from pneumonia.data.sources import shared_data_dir
from trainer import explain, models, ood, threshold
from trainer.preprocessing import decode_image
from trainer.task import class_weights

NATURAL = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "moon",
    "hubble_deep_field",
    "coins",
    "gravel",
    "grass",
    "brick",
    "cell",
    "immunohistochemistry",
    "retina",
    "clock",
)
DOCUMENTS = ("page", "text")


def encode(pixels: np.ndarray) -> bytes:
    """uint8 [H, W] or [H, W, 3] -> PNG bytes, decoded by the model like any upload."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        pixels = (255 * (pixels - pixels.min()) / max(np.ptp(pixels), 1e-9)).astype(np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return tf.io.encode_png(pixels[..., :3]).numpy()


def crops(pixels: np.ndarray, rng: np.random.Generator, count: int) -> List[np.ndarray]:
    """The image itself and `count` random crops of half to three quarters of its side."""
    height, width = pixels.shape[:2]
    result = [pixels]
    for _ in range(count):
        side = int(min(height, width) * rng.uniform(0.5, 0.75))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        result.append(pixels[top : top + side, left : left + side])
    return result


def natural_photographs(rng) -> List[bytes]:
    from skimage import data

    return [encode(crop) for name in NATURAL for crop in crops(getattr(data, name)(), rng, 4)]


def faces() -> List[bytes]:
    from skimage import data

    return [encode(face) for face in data.lfw_subset()]


def documents_and_noise(rng) -> List[bytes]:
    from skimage import data

    scans = [encode(crop) for name in DOCUMENTS for crop in crops(getattr(data, name)(), rng, 9)]
    typed = []
    for _ in range(40):
        page = Image.new("L", (600, 800), color=int(rng.integers(225, 256)))
        draw = ImageDraw.Draw(page)
        for line in range(int(rng.integers(10, 40))):
            words = " ".join(
                "".join(chr(c) for c in rng.integers(97, 123, rng.integers(2, 10)))
                for _ in range(int(rng.integers(3, 12)))
            )
            draw.text((40, 40 + 18 * line), words, fill=int(rng.integers(0, 60)))
        typed.append(encode(np.asarray(page)))
    noise = [encode(rng.integers(0, 256, (224, 224), dtype=np.uint8)) for _ in range(20)]
    noise += [encode(np.clip(rng.normal(128, 40, (224, 224)), 0, 255).astype(np.uint8)) for _ in range(20)]
    return scans + typed + noise


def ct_like_slices(rng) -> List[bytes]:
    from skimage.data import shepp_logan_phantom
    from skimage.transform import iradon, radon, rotate

    phantom = shepp_logan_phantom()
    angles = np.linspace(0.0, 180.0, 180, endpoint=False)
    reconstructed = iradon(radon(phantom, theta=angles), theta=angles, filter_name="ramp")
    slices = []
    for _ in range(40):
        turned = rotate(reconstructed, rng.uniform(-30, 30), mode="constant")
        slices += crops(turned, rng, 1)
    return [encode(s) for s in slices]


def patient(path: str) -> str:
    """Kermany file names carry the patient: person123_..., IM-0117-0001, NORMAL2-IM-0450-0001."""
    name = os.path.basename(path)
    match = re.match(r"(person\d+)_|((?:NORMAL2-)?IM-\d+)-", name)
    return match.group(1) or match.group(2) if match else name


def batched(pixels: np.ndarray, labels: np.ndarray, size: int = 64):
    return [(pixels[i : i + size], labels[i : i + size]) for i in range(0, len(pixels), size)]


def load(paths: List[str], image_size: int) -> np.ndarray:
    return np.stack([decode_image(open(p, "rb").read(), image_size).numpy() for p in paths])


def labelled(folder: str) -> Dict[str, int]:
    return {path: int("/PNEUMONIA/" in path) for path in sorted(glob.glob(f"{folder}/*/*.jpeg"))}


def penultimate_scores(model, x_fit, y_fit, x_val, percentile: float):
    """The same Gaussians fitted on the penultimate features (the input of the `probability` layer) instead:
    the common choice, measured for comparison. Returns a scorer with the threshold as an attribute."""
    head_input = keras.Model(model.inputs, model.get_layer("probability").input)
    features = lambda pixels: head_input.predict(pixels, batch_size=64, verbose=0)  # noqa: E731
    fitted = ood.fit(features(x_fit), y_fit, features(x_val), percentile)

    def score(pixels: np.ndarray) -> np.ndarray:
        return ood.distances(features(pixels), fitted.means, fitted.precision).numpy()

    score.threshold = fitted.threshold
    return score


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an outside image scores above an inside one), ties counting half (the Mann-Whitney AUC)."""
    ranks = np.argsort(np.argsort(np.concatenate([inside, outside]), kind="stable"), kind="stable") + 1.0
    outside_ranks = ranks[len(inside) :].sum()
    return float((outside_ranks - len(outside) * (len(outside) + 1) / 2) / (len(inside) * len(outside)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--percentile", type=float, default=ood.DEFAULT_PERCENTILE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--weights",
        help="a .weights.h5 file: loaded when it exists (the same split and size), "
        "else written after training, so a rerun skips training",
    )
    args = parser.parse_args()
    data = shared_data_dir()
    if not data:
        raise SystemExit("error: ../shared/data (the chest X-rays) is needed")
    rng = np.random.default_rng(args.seed)
    keras.utils.set_random_seed(args.seed)
    started = time.monotonic()

    train = labelled(f"{data}/chest_xray/train")
    patients = sorted({patient(p) for p in train})
    held_out = set(rng.choice(patients, size=len(patients) // 10, replace=False))
    fit_paths = [p for p in train if patient(p) not in held_out]
    validation_paths = [p for p in train if patient(p) in held_out]
    x_fit, y_fit = load(fit_paths, args.image_size), np.array([train[p] for p in fit_paths])
    x_val, y_val = load(validation_paths, args.image_size), np.array([train[p] for p in validation_paths])
    model = models.build("cnn", args.image_size)
    if args.weights and os.path.exists(args.weights):
        model.load_weights(args.weights)
    else:
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        weights = class_weights(int((y_fit == 0).sum()), int(y_fit.sum()))
        model.fit(x_fit, y_fit, batch_size=32, epochs=args.epochs, class_weight=weights, verbose=2)
        if args.weights:
            model.save_weights(args.weights)

    guard, val_probability, _ = ood.fit_model(model, batched(x_fit, y_fit), batched(x_val, y_val), args.percentile)
    tuned = threshold.choose(y_val, val_probability, "youden").value
    features_and_output = explain.feature_model(model, models.FEATURE_MAP)

    def scored(images: np.ndarray):
        probability, features, _ = ood.features(features_and_output, batched(images, np.zeros(len(images))))
        return probability, ood.distances(features, guard.means, guard.precision).numpy()

    compared = penultimate_scores(model, x_fit, y_fit, x_val, args.percentile)
    test = labelled(f"{data}/chest_xray/test")
    test_pixels = load(list(test), args.image_size)
    test_probability, test_scores = scored(test_pixels)
    test_compared = compared(test_pixels)
    test_labels = np.array(list(test.values()))
    decoded = lambda images: np.stack([decode_image(b, args.image_size).numpy() for b in images])  # noqa: E731
    sets = {
        "natural photographs (skimage, with crops)": decoded(natural_photographs(rng)),
        "faces (skimage LFW subset)": decoded(faces()),
        "documents and noise": decoded(documents_and_noise(rng)),
        "CT-like slices (phantom FBP)": decoded(ct_like_slices(rng)),
    }
    external = labelled(f"{data}/external")
    external_pixels = load(list(external), args.image_size)
    print(
        f"cnn at {args.image_size} px, {args.epochs} epochs on {len(fit_paths)} train images; guard: "
        f"{guard.means.shape[1]} features, threshold {guard.threshold:.2f} (validation p{args.percentile:g}, "
        f"{len(validation_paths)} images); model threshold {tuned:.3f}; test accuracy "
        f"{np.mean((test_probability >= tuned) == test_labels):.3f}"
    )
    print(f"{'':<44}{'':>7}{'the guard (pooled feature map)':>32}{'penultimate features, compared':>32}")
    print(f"{'image set':<44}{'images':>7}" + f"{'AUROC vs test':>20}{'flagged':>12}" * 2)
    flagged_test = [np.mean(test_scores > guard.threshold), np.mean(test_compared > compared.threshold)]
    print(
        f"{'Kermany test (in distribution)':<44}{len(test_scores):>7}"
        + "".join(f"{'':>20}{share:>12.1%}" for share in flagged_test)
    )

    def row(name: str, scores: np.ndarray, other: np.ndarray) -> None:
        print(
            f"{name:<44}{len(scores):>7}{auroc(test_scores, scores):>20.3f}"
            f"{np.mean(scores > guard.threshold):>12.1%}"
            f"{auroc(test_compared, other):>20.3f}{np.mean(other > compared.threshold):>12.1%}"
        )

    for name, pixels in sets.items():
        row(name, scored(pixels)[1], compared(pixels))
    probability, scores = scored(external_pixels)
    other = compared(external_pixels)
    row("external adult X-rays (ieee8023 + RSNA)", scores, other)
    for subset in ("ieee8023", "rsna"):
        chosen = np.array([f"/{subset}_" in p for p in external])
        row(f"  {subset}", scores[chosen], other[chosen])
    labels = np.array(list(external.values()))
    flagged, wrong = scores > guard.threshold, (probability >= tuned) != labels
    error_rate = lambda mask: f"{wrong[mask].mean():.1%} of {mask.sum()}" if mask.any() else "-"  # noqa: E731
    print(
        f"external, the guard: error rate at the model threshold among flagged {error_rate(flagged)}, "
        f"not flagged {error_rate(~flagged)}; AUROC of the OOD score for the model's errors "
        f"{auroc(scores[~wrong], scores[wrong]):.3f}"
    )
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()

"""Architecture registry: each model is registered by name with a tiny configuration for tests.

A builder takes the square input size plus its own keyword settings and returns an uncompiled Keras
model mapping float32 [N, size, size, 1] pixels in [0, 255] to a pneumonia probability [N, 1].
Normalisation happens inside the model, so serving feeds raw decoded pixels; so do the optional view settings
every builder takes (`central_crop`, `intensity`: `ViewStandardization`), so no consumer can skip them.

Every model names its last spatial feature map [N, H, W, C] `feature_map` (an identity layer), the
layer Grad-CAM differentiates against; `REGISTRY[name].gradcam_layer` says so. An ensemble names each
member's map `feature_map_<index>`.
"""

import dataclasses
import inspect
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
from keras import layers, ops
from keras.src.applications import densenet as keras_densenet

FEATURE_MAP = "feature_map"
BACKBONE = "backbone"  # the nested pretrained model of architectures that have one


@dataclasses.dataclass(frozen=True)
class Architecture:
    build: Callable[..., keras.Model]
    tiny: Dict[str, Any]  # settings that build a model in seconds, for tests
    gradcam_layer: str = FEATURE_MAP
    # Architectures with a pretrained backbone accept `weights`; when it starts frozen they train in two
    # stages: the head on the frozen backbone, then the backbone from this layer on at a lower rate.
    fine_tune_from: Optional[str] = None


REGISTRY: Dict[str, Architecture] = {}


def register(name: str, tiny: Dict[str, Any], fine_tune_from: Optional[str] = None):
    def decorator(build: Callable[..., keras.Model]):
        REGISTRY[name] = Architecture(build, tiny, fine_tune_from=fine_tune_from)
        return build

    return decorator


def architecture(name: str) -> Architecture:
    if name not in REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def check_settings(name: str, settings: Dict[str, Any]) -> None:
    """Refuses an unknown architecture, or a model_config key its builder does not take."""
    known = [
        parameter for parameter in inspect.signature(architecture(name).build).parameters if parameter != "image_size"
    ]
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(f"{name}: unknown model_config setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if "central_crop" in settings or "intensity" in settings:
        check_view(settings.get("central_crop", 1.0), settings.get("intensity", "none"))


def build(name: str, image_size: int, **settings: Any) -> keras.Model:
    check_settings(name, settings)
    return architecture(name).build(image_size, **settings)


def feature_map_layers(model: keras.Model, layer_name: str = FEATURE_MAP) -> List[layers.Layer]:
    """The layers Grad-CAM and the OOD guard read: `layer_name`, or an ensemble's `<layer_name>_0`, `_1`, ..."""
    names = {layer.name for layer in model.layers}
    if layer_name in names:
        return [model.get_layer(layer_name)]
    members = [
        model.get_layer(f"{layer_name}_{index}") for index in range(len(names)) if f"{layer_name}_{index}" in names
    ]
    if not members:
        raise ValueError(f"Grad-CAM layer {layer_name!r} is not a layer of model {model.name!r}")
    return members


def unfreeze_top(model: keras.Model, first_layer: str) -> None:
    """Stage two of fine-tuning: the backbone trains from `first_layer` on, the layers below stay frozen.

    BatchNormalization keeps its ImageNet statistics because the backbone is called with training=False.
    """
    backbone = model.get_layer(BACKBONE)
    names = [layer.name for layer in backbone.layers]
    if first_layer not in names:
        raise ValueError(f"fine-tuning: backbone {backbone.name!r} has no layer {first_layer!r}")
    backbone.trainable = True
    for layer in backbone.layers[: names.index(first_layer)]:
        layer.trainable = False


VIEW_LAYER = "view"
INTENSITY_MODES = ("none", "percentile")
PERCENTILE_WINDOW = (0.01, 0.99)  # robust to a few saturated pixels (markers, text) at either end


def check_view(central_crop: float, intensity: str) -> None:
    if not 0.5 <= central_crop <= 1.0:
        raise ValueError(
            f"central_crop must be in [0.5, 1] (the kept share of each side; 1 keeps the whole "
            f"image), got {central_crop}"
        )
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"intensity must be one of {', '.join(INTENSITY_MODES)}, got {intensity!r}")


def crop_box(size: int, central_crop: float) -> Tuple[int, int]:
    """(offset, kept side) of the central crop of a square of side `size`."""
    kept = int(round(size * central_crop))
    return (size - kept) // 2, kept


class ViewStandardization(layers.Layer):
    """The model's first layer, so training, validation, TFMA, every signature and Grad-CAM see one view.

    `central_crop` keeps the central share of each side and resizes it back to the input size: the film
    edges, collimation borders and markers of the acquiring site leave the image. `intensity="percentile"`
    then stretches each image's 1st-99th percentile to [0, 255]: the site's exposure and processing curve
    no longer set the grey levels (measured inside the crop, so black borders do not set the floor).
    """

    def __init__(self, central_crop: float = 1.0, intensity: str = "none", **kwargs):
        super().__init__(**kwargs)
        check_view(central_crop, intensity)
        self.central_crop, self.intensity = float(central_crop), intensity

    def call(self, pixels):
        size = pixels.shape[1]
        if self.central_crop < 1.0:
            offset, kept = crop_box(size, self.central_crop)
            pixels = pixels[:, offset : offset + kept, offset : offset + kept, :]
            pixels = ops.image.resize(pixels, (size, size), interpolation="bilinear", antialias=True)
        if self.intensity == "percentile":
            ordered = ops.sort(ops.reshape(pixels, (-1, size * size)), axis=-1)
            low, high = (ordered[:, int(round(share * (size * size - 1)))] for share in PERCENTILE_WINDOW)
            low, high = ops.reshape(low, (-1, 1, 1, 1)), ops.reshape(high, (-1, 1, 1, 1))
            pixels = ops.clip((pixels - low) * 255.0 / ops.maximum(high - low, 1.0), 0.0, 255.0)
        return pixels

    def get_config(self):
        return {**super().get_config(), "central_crop": self.central_crop, "intensity": self.intensity}


def view_crop(model: keras.Model) -> float:
    """The central crop a model applies to its input (nested members included; 1.0 without one)."""
    crops = set()
    for layer in model.layers:
        if isinstance(layer, ViewStandardization):
            crops.add(layer.central_crop)
        elif isinstance(layer, keras.Model):
            crops.add(view_crop(layer))
    crops.discard(1.0)
    if len(crops) > 1:
        raise ValueError(f"model {model.name!r} crops its input differently in different parts: {sorted(crops)}")
    return crops.pop() if crops else 1.0


def _pixels(
    image_size: int, central_crop: float = 1.0, intensity: str = "none"
) -> Tuple[keras.KerasTensor, keras.KerasTensor]:
    """(the model's input: raw decoded pixels, the standardized view every architecture reads)."""
    inputs = keras.Input(shape=(image_size, image_size, 1), name="pixels")
    if central_crop == 1.0 and intensity == "none":
        return inputs, inputs
    return inputs, ViewStandardization(central_crop, intensity, name=VIEW_LAYER)(inputs)


def _probability(features: keras.KerasTensor, dense_units: int, dropout: float) -> keras.KerasTensor:
    """The shared head on pooled features: Dense + Dropout, sigmoid."""
    x = layers.Dense(dense_units, activation="relu")(features)
    x = layers.Dropout(dropout)(x)
    return layers.Dense(1, activation="sigmoid", name="probability")(x)


def _conv_stack(pixels: keras.KerasTensor, filters: Sequence[int]) -> keras.KerasTensor:
    """The seed's convolutional stack: (Conv2D 3x3 + ReLU, 2x2 max-pool) per filter count.

    The last convolution's output is the `feature_map` (before its pooling, for a finer Grad-CAM).
    """
    x = layers.Rescaling(1.0 / 255)(pixels)
    for index, count in enumerate(filters):
        x = layers.Conv2D(count, 3, activation="relu", name=f"conv{index + 1}")(x)
        if index == len(filters) - 1:
            x = layers.Identity(name=FEATURE_MAP)(x)
        x = layers.MaxPooling2D()(x)
    return x


@register("cnn", tiny={"filters": (4, 8, 16), "dense_units": 16})
def basic_cnn(
    image_size: int,
    filters=(32, 64, 128),
    dense_units: int = 128,
    dropout: float = 0.5,
    central_crop: float = 1.0,
    intensity: str = "none",
) -> keras.Model:
    """The seed's basic CNN: 3 x (Conv2D + ReLU, max-pool), Dense + Dropout, sigmoid."""
    inputs, view = _pixels(image_size, central_crop, intensity)
    x = layers.Flatten()(_conv_stack(view, filters))
    return keras.Model(inputs, _probability(x, dense_units, dropout), name="cnn")


# --- DenseNet121 ---------------------------------------------------------------------------------


class GrayscaleToImageNet(layers.Layer):
    """Grayscale [0, 255] -> the 3-channel input an ImageNet DenseNet expects ("torch" preprocessing:
    [0, 1], then per-channel ImageNet mean and standard deviation)."""

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def call(self, pixels):
        rgb = ops.repeat(pixels / 255.0, 3, axis=-1)
        return (rgb - np.array(self.MEAN, "float32")) / np.array(self.STD, "float32")

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)


def _backbone_weights(weights: str) -> Optional[str]:
    """`none`, `imagenet` (Keras downloads it) or a local .h5/.keras file -> what Keras takes."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return weights
    if not weights.endswith((".h5", ".keras")):
        raise ValueError(f"weights {weights!r}: expected 'imagenet', 'none' or a .h5/.keras weights file")
    if not os.path.isfile(weights):
        raise ValueError(f"weights file not found: {weights}")
    return weights


DENSENET121_BLOCKS = (6, 12, 24, 16)


@register("densenet121", tiny={"blocks": (1, 1, 1, 1), "dense_units": 8}, fine_tune_from="conv5_block1_0_bn")
def densenet121(
    image_size: int,
    weights: str = "none",
    blocks=DENSENET121_BLOCKS,
    dense_units: int = 128,
    dropout: float = 0.3,
    central_crop: float = 1.0,
    intensity: str = "none",
) -> keras.Model:
    """Keras DenseNet121 with a new head.

    With pretrained `weights` the backbone starts frozen with BatchNorm in inference mode, for two-stage
    fine-tuning (`unfreeze_top` later opens its last dense block); from scratch (`none`) all of it trains.
    The backbone is nested as one layer, so a DenseNet121 weights file loads into it unchanged. `blocks`
    (layers per dense block) exists for the tiny test configuration; ImageNet weights need DenseNet121's.
    """
    blocks = list(blocks)  # Keras matches the ImageNet weights on the list [6, 12, 24, 16]
    if weights == "imagenet" and blocks != list(DENSENET121_BLOCKS):
        raise ValueError(
            f"densenet121: ImageNet weights exist only for blocks {DENSENET121_BLOCKS}, not {tuple(blocks)}"
        )
    inputs, view = _pixels(image_size, central_crop, intensity)
    # The function behind keras.applications.DenseNet121, which also takes the block counts.
    backbone = keras_densenet.DenseNet(
        blocks,
        include_top=False,
        weights=_backbone_weights(weights),
        input_shape=(image_size, image_size, 3),
        name=BACKBONE,
    )
    pretrained = weights != "none"
    backbone.trainable = not pretrained
    x = backbone(GrayscaleToImageNet(name="to_imagenet")(view), training=False if pretrained else None)
    x = layers.Identity(name=FEATURE_MAP)(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, _probability(x, dense_units, dropout), name="densenet121")


# --- CNN + Transformer ---------------------------------------------------------------------------


class PositionEmbedding(layers.Layer):
    """Adds a learned embedding per token position to a [N, tokens, dim] sequence."""

    def build(self, input_shape):
        self.embedding = self.add_weight(
            shape=tuple(input_shape[1:]), name="embedding", initializer=keras.initializers.RandomNormal(stddev=0.02)
        )

    def call(self, tokens):
        return tokens + self.embedding


def _transformer_encoder(
    tokens: keras.KerasTensor, num_heads: int, mlp_dim: int, dropout: float, name: str
) -> keras.KerasTensor:
    """Post-norm encoder block: self-attention and an MLP, each residual and followed by LayerNorm."""
    dim = tokens.shape[-1]
    attention = layers.MultiHeadAttention(
        num_heads, key_dim=dim // num_heads, dropout=dropout, name=f"{name}_attention"
    )(tokens, tokens)
    x = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm1")(tokens + attention)
    mlp = layers.Dense(mlp_dim, activation="gelu", name=f"{name}_mlp1")(x)
    mlp = layers.Dense(dim, name=f"{name}_mlp2")(layers.Dropout(dropout)(mlp))
    return layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm2")(x + mlp)


@register("cnn_transformer", tiny={"filters": (4, 8, 16), "num_heads": 2, "mlp_dim": 16, "dense_units": 8})
def cnn_transformer(
    image_size: int,
    filters=(32, 64, 128),
    num_layers: int = 1,
    num_heads: int = 4,
    mlp_dim: int = 256,
    dense_units: int = 64,
    dropout: float = 0.1,
    central_crop: float = 1.0,
    intensity: str = "none",
) -> keras.Model:
    """The seed's hybrid: CNN feature map -> token sequence + learned positions -> Transformer encoder
    block(s) -> global average pooling -> Dense -> sigmoid."""
    if filters[-1] % num_heads:
        raise ValueError(f"cnn_transformer: last filter count {filters[-1]} is not divisible by num_heads {num_heads}")
    inputs, view = _pixels(image_size, central_crop, intensity)
    x = _conv_stack(view, filters)
    tokens = layers.Reshape((x.shape[1] * x.shape[2], x.shape[3]), name="tokens")(x)
    tokens = PositionEmbedding(name="positions")(tokens)
    for index in range(num_layers):
        tokens = _transformer_encoder(tokens, num_heads, mlp_dim, dropout, name=f"encoder{index + 1}")
    x = layers.GlobalAveragePooling1D()(tokens)
    return keras.Model(inputs, _probability(x, dense_units, dropout), name="cnn_transformer")


# --- Swin Transformer ----------------------------------------------------------------------------


def _window_partition(x, window: int):
    """[N, H, W, C] -> [N * windows, window * window, C]."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    x = ops.reshape(x, (-1, height // window, window, width // window, window, channels))
    return ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4, 5)), (-1, window * window, channels))


def _window_merge(windows, window: int, height: int, width: int):
    """Inverse of `_window_partition`: [N * windows, window * window, C] -> [N, H, W, C]."""
    channels = windows.shape[-1]
    x = ops.reshape(windows, (-1, height // window, width // window, window, window, channels))
    return ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4, 5)), (-1, height, width, channels))


def _relative_position_index(window: int) -> np.ndarray:
    """[window², window²] index into the (2 * window - 1)² bias table, as in Swin."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    relative = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return (relative[..., 0] * (2 * window - 1) + relative[..., 1]).astype("int32")


def _shifted_window_mask(size: int, window: int, shift: int) -> np.ndarray:
    """[windows, window², window²]: -100 between tokens that the cyclic shift brought together."""
    regions = np.zeros((1, size, size, 1), "float32")
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for region, (rows, cols) in enumerate((r, c) for r in bounds for c in bounds):
        regions[:, rows, cols, :] = region
    ids = ops.convert_to_numpy(_window_partition(regions, window))[..., 0]
    return np.where(ids[:, :, None] != ids[:, None, :], -100.0, 0.0).astype("float32")


class SwinBlock(layers.Layer):
    """A Swin block on [N, H, W, C]: (shifted-)window multi-head self-attention with relative position
    bias, then an MLP; pre-norm, both residual."""

    def __init__(self, dim: int, num_heads: int, size: int, window: int, shift: int, mlp_ratio: float, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.size, self.window, self.shift = num_heads, size, window, shift
        self.norm1 = layers.LayerNormalization(epsilon=1e-5, name="norm1")
        self.qkv = layers.Dense(3 * dim, name="qkv")
        self.proj = layers.Dense(dim, name="proj")
        self.norm2 = layers.LayerNormalization(epsilon=1e-5, name="norm2")
        self.mlp1 = layers.Dense(int(dim * mlp_ratio), activation="gelu", name="mlp1")
        self.mlp2 = layers.Dense(dim, name="mlp2")
        self.bias_index = _relative_position_index(window)
        self.mask = _shifted_window_mask(size, window, shift) if shift else None

    def build(self, input_shape):
        self.bias_table = self.add_weight(
            shape=((2 * self.window - 1) ** 2, self.num_heads),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="relative_position_bias_table",
        )

    def _attention(self, windows):
        tokens, dim = windows.shape[1], windows.shape[2]
        head_dim = dim // self.num_heads
        qkv = ops.reshape(self.qkv(windows), (-1, tokens, 3, self.num_heads, head_dim))
        query, key, value = (ops.transpose(qkv[:, :, i], (0, 2, 1, 3)) for i in range(3))
        scores = ops.matmul(query * head_dim**-0.5, ops.transpose(key, (0, 1, 3, 2)))
        bias = ops.take(self.bias_table, ops.reshape(self.bias_index, (-1,)), axis=0)
        scores = scores + ops.transpose(ops.reshape(bias, (tokens, tokens, self.num_heads)), (2, 0, 1))
        if self.mask is not None:
            windows_per_image = self.mask.shape[0]
            scores = ops.reshape(scores, (-1, windows_per_image, self.num_heads, tokens, tokens))
            scores = ops.reshape(scores + self.mask[None, :, None], (-1, self.num_heads, tokens, tokens))
        out = ops.matmul(ops.softmax(scores, axis=-1), value)
        return self.proj(ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (-1, tokens, dim)))

    def call(self, x):
        shortcut = x
        x = self.norm1(x)
        if self.shift:
            x = ops.roll(x, (-self.shift, -self.shift), axis=(1, 2))
        x = _window_merge(self._attention(_window_partition(x, self.window)), self.window, self.size, self.size)
        if self.shift:
            x = ops.roll(x, (self.shift, self.shift), axis=(1, 2))
        x = shortcut + x
        return x + self.mlp2(self.mlp1(self.norm2(x)))


class PatchMerging(layers.Layer):
    """[N, H, W, C] -> [N, H/2, W/2, 2C]: each 2x2 neighbourhood concatenated, normalised, projected."""

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.norm = layers.LayerNormalization(epsilon=1e-5, name="norm")
        self.reduction = layers.Dense(2 * dim, use_bias=False, name="reduction")

    def call(self, x):
        x = ops.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        return self.reduction(self.norm(x))


def _largest_window(size: int, window_size: int) -> int:
    """The largest window not above `window_size` that tiles a size x size stage exactly."""
    return max(w for w in range(1, min(size, window_size) + 1) if size % w == 0)


SWIN_T = {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24), "window_size": 7, "patch_size": 4}


@register("swin", tiny={"embed_dim": 8, "depths": (2, 2), "num_heads": (1, 2), "window_size": 4})
def swin(
    image_size: int,
    embed_dim: int = 32,
    depths=(2, 2, 2),
    num_heads=(2, 4, 8),
    window_size: int = 7,
    patch_size: int = 4,
    mlp_ratio: float = 4.0,
    central_crop: float = 1.0,
    intensity: str = "none",
) -> keras.Model:
    """Swin Transformer: patch partition, stages of window / shifted-window attention blocks, patch merging
    between stages, LayerNorm, global average pooling, sigmoid.

    The default is small enough to train on a CPU; `SWIN_T` is Swin-T's configuration. Each stage uses the
    largest window up to `window_size` that tiles it (7 throughout at 224 px); a stage no larger than its
    window is attended whole, without shift, as in Swin.
    """
    if len(depths) != len(num_heads):
        raise ValueError(f"swin: depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length")
    reduction = patch_size * 2 ** (len(depths) - 1)
    if image_size % reduction:
        raise ValueError(
            f"swin: image_size {image_size} must be a multiple of patch_size x 2^(stages - 1) = {reduction}"
        )
    inputs, view = _pixels(image_size, central_crop, intensity)
    # Centred to [-1, 1]: the per-patch norm after the embedding would otherwise cancel any brightness scaling.
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0)(view)
    x = layers.Conv2D(embed_dim, patch_size, strides=patch_size, name="patch_embed")(x)
    x = layers.LayerNormalization(epsilon=1e-5, name="patch_norm")(x)
    size, dim = image_size // patch_size, embed_dim
    for stage, (depth, heads) in enumerate(zip(depths, num_heads)):
        if stage:
            x = PatchMerging(dim, name=f"merge{stage}")(x)
            size, dim = size // 2, dim * 2
        if dim % heads:
            raise ValueError(f"swin: stage {stage + 1} width {dim} is not divisible by its {heads} heads")
        window = _largest_window(size, window_size)
        for block in range(depth):
            shift = window // 2 if block % 2 and size > window else 0
            x = SwinBlock(dim, heads, size, window, shift, mlp_ratio, name=f"stage{stage + 1}_block{block + 1}")(x)
    x = layers.LayerNormalization(epsilon=1e-5, name="norm")(x)
    x = layers.Identity(name=FEATURE_MAP)(x)
    outputs = layers.Dense(1, activation="sigmoid", name="probability")(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs, name="swin")


class MemberResize(layers.Layer):
    """The ensemble's input resized (antialiased) to a member's size. Not `layers.Resizing`: that preprocessing
    layer carries a random seed generator whose state a SavedModel signature cannot capture."""

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = size

    def call(self, pixels):
        return ops.image.resize(pixels, (self.size, self.size), interpolation="bilinear", antialias=True)

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def _member(spec: Dict[str, Any], image_size: int, index: int) -> keras.Model:
    """A trained member, frozen: built from its recorded architecture, size and settings, and loaded from its
    Keras weights file (a member without `weights` starts fresh: the registry's tiny test configuration)."""
    unknown = sorted(set(spec) - {"architecture", "image_size", "model_config", "weights"})
    if unknown or "architecture" not in spec:
        raise ValueError(
            f"ensemble member {index}: expected architecture, image_size, model_config, weights; got {sorted(spec)}"
        )
    if spec["architecture"] == "ensemble":
        raise ValueError(f"ensemble member {index}: an ensemble cannot be a member")
    model = build(spec["architecture"], spec.get("image_size", image_size), **(spec.get("model_config") or {}))
    if spec.get("weights"):
        if not os.path.isfile(spec["weights"]):
            raise ValueError(f"ensemble member {index}: weights file not found: {spec['weights']}")
        model.load_weights(spec["weights"])
    model.trainable = False
    return model


def _logit(probability):
    clipped = ops.clip(probability, 1e-7, 1.0 - 1e-7)
    return ops.log(clipped) - ops.log1p(-clipped)


@register(
    "ensemble",
    tiny={
        "members": [
            {"architecture": "cnn", "model_config": {"filters": [4, 8, 16], "dense_units": 8}},
            {
                "architecture": "swin",
                "model_config": {"embed_dim": 8, "depths": [2], "num_heads": [1], "window_size": 4},
            },
        ]
    },
)
def ensemble(image_size: int, members: Sequence[Dict[str, Any]] = ()) -> keras.Model:
    """The average of trained members' logits, as one model that serves, evaluates and explains like any other.

    Each member is {"architecture", "image_size" (default: the ensemble's), "model_config", "weights": its
    Keras weights file}; members are frozen and each sees the input resized to its own size.

    Each member's last feature map stays on its own grid as `feature_map_<index>`: Grad-CAM sums the members'
    maps on the input (`explain.heatmaps`), so members of any grid combine, and the OOD guard reads all of them.
    """
    if len(members) < 2:
        raise ValueError(f"ensemble: needs at least 2 members, got {len(members)}")
    parts = [_member(spec, image_size, index) for index, spec in enumerate(members)]
    crops = {view_crop(part) for part in parts}
    if len(crops) > 1:  # Grad-CAM places every member's map on one view of the input
        raise ValueError(
            f"ensemble: members crop their input differently ({sorted(crops)}); "
            "combine members trained with the same central_crop"
        )
    inputs, _ = _pixels(image_size)
    logits = []
    for index, (part, spec) in enumerate(zip(parts, members)):
        member_size = int(part.input.shape[1])
        pixels = (
            inputs if member_size == image_size else MemberResize(member_size, name=f"member{index}_resize")(inputs)
        )
        layer = part.get_layer(REGISTRY[spec["architecture"]].gradcam_layer)
        features = keras.Model(part.input, layer.output, name=f"member{index}_features")(pixels)
        features = layers.Identity(name=f"{FEATURE_MAP}_{index}")(features)
        probability = keras.Model(layer.output, part.output, name=f"member{index}_head")(features)
        logits.append(layers.Lambda(_logit, name=f"member{index}_logit")(probability))
    mean_logit = layers.Average(name="mean_logit")(logits)
    outputs = layers.Activation("sigmoid", name="probability")(mean_logit)
    return keras.Model(inputs, outputs, name="ensemble")

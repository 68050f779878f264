"""The training objective and its schedule: the loss and its class balance, what early stopping watches, and
the weight average's momentum. Apart from the Trainer's module so trainer/config.py can check a setting
against them without importing the Trainer."""

from typing import Optional, Tuple

import keras


def class_weights(normal: int, pneumonia: int) -> dict:
    """Inverse-frequency weights: each class contributes equally to the loss."""
    total = normal + pneumonia
    return {0: total / (2.0 * max(normal, 1)), 1: total / (2.0 * max(pneumonia, 1))}


def loss_and_class_weights(
    loss: str, normal: int, pneumonia: int, label_smoothing: float = 0.0
) -> Tuple[keras.losses.Loss, Optional[dict]]:
    """Imbalance handling: `bce` with inverse-frequency class weights, or `focal` loss balanced by its alpha
    (the NORMAL share weighs PNEUMONIA), which then needs no class weights. Label smoothing pulls the targets
    towards 0.5, so scores stay graded instead of saturating at 0 and 1."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if loss == "bce":
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing), class_weights(normal, pneumonia)
    if loss == "focal":
        alpha = normal / max(normal + pneumonia, 1)
        return keras.losses.BinaryFocalCrossentropy(
            apply_class_balancing=True, alpha=alpha, gamma=2.0, label_smoothing=label_smoothing
        ), None
    raise ValueError(f"unknown loss {loss!r}; use 'bce' or 'focal'")


# What early stopping and the best-epoch choice monitor on the validation split: (Keras key, mode).
EARLY_STOPPING_MONITORS = {"auc": ("val_auc", "max"), "loss": ("val_loss", "min")}


def early_stopping_monitor(name: str) -> Tuple[str, str]:
    if name not in EARLY_STOPPING_MONITORS:
        raise ValueError(f"unknown early_stopping_metric {name!r}; use one of: {', '.join(EARLY_STOPPING_MONITORS)}")
    return EARLY_STOPPING_MONITORS[name]


def ema_momentum(ema_epochs: float, steps_per_epoch: int) -> Optional[float]:
    """The per-step momentum of an exponential moving average whose horizon is `ema_epochs` epochs
    (None: no averaging). A horizon in epochs, not a raw momentum, keeps its meaning across data sizes."""
    if ema_epochs < 0:
        raise ValueError(f"ema_epochs must be >= 0 (0 turns weight averaging off), got {ema_epochs}")
    if ema_epochs == 0:
        return None
    return 1.0 - 1.0 / max(ema_epochs * steps_per_epoch, 1.0)

"""The Trainer's module file: `run_fn` trains the configured architecture and exports it.

Besides the SavedModel in `serving_model_dir` (`Format-Serving/`), it writes the Keras weights to
`<model artifact>/Keras/model.weights.h5`, beside the served folder so the Pusher does not ship them.
`models.build(architecture, image_size, **model_config)` + `load_weights` on that file rebuilds the Keras
model from what `Format-Serving/assets/threshold.json` records: warm start and Grad-CAM do so.
"""

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import keras
import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs

from trainer import distribute, inputs, models, objective, ood, signatures, threshold
from trainer.config import TrainerConfig

FINE_TUNE_LEARNING_RATE_FACTOR = 0.1  # stage two of a pretrained backbone trains at a tenth of the rate


def keras_weights_path(serving_model_dir: str) -> str:
    return os.path.join(os.path.dirname(serving_model_dir), "Keras", "model.weights.h5")


def _normalised(model_config: Dict[str, Any]) -> Dict[str, Any]:
    """As the threshold JSON stores it (tuples become lists), so configurations compare equal."""
    return json.loads(json.dumps(model_config))


def _check_base_model(base_model: str, architecture: str, image_size: int, model_config: Dict[str, Any]) -> str:
    """The base model's Keras weights file, after refusing a model these weights cannot initialise."""
    recorded = signatures.read_metadata(base_model)
    wanted = {"architecture": architecture, "image_size": image_size, "model_config": _normalised(model_config)}
    for key, value in wanted.items():
        if recorded.get(key) != value:
            raise ValueError(
                f"warm start refused: the base model {base_model} has {key} {recorded.get(key)!r}, "
                f"this run has {value!r}; train without --warm-start or with the same {key}"
            )
    weights_path = keras_weights_path(base_model)
    if not tf.io.gfile.exists(weights_path):  # gfile: the base model may be in a bucket (Kubeflow)
        raise ValueError(f"warm start refused: the base model has no Keras weights at {weights_path}")
    return weights_path


def build_model(config: TrainerConfig, base_model: Optional[str] = None) -> keras.Model:
    """The configured architecture: from the base model's weights when warm-starting, else from
    `weights` (pretrained backbones only) or a fresh initialisation."""
    model_config = dict(config.model_config)
    if base_model:
        weights_path = _check_base_model(base_model, config.architecture, config.image_size, model_config)
        model = models.build(config.architecture, config.image_size, **model_config)
        model.load_weights(weights_path)
        logging.info("warm start from %s", weights_path)
        return model
    if config.weights != "none":
        model_config["weights"] = config.weights
    return models.build(config.architecture, config.image_size, **model_config)


def _stages(
    model: keras.Model, architecture: str, epochs: int, learning_rate: float
) -> List[Tuple[int, float, Optional[str]]]:
    """(epochs, learning rate, first layer to unfreeze or None) per training stage.

    A backbone that starts frozen (pretrained) first trains the new head for half the epochs (rounded up),
    then fine-tunes its top blocks for the rest at a lower rate; any other model trains in one stage.
    """
    fine_tune_from = models.architecture(architecture).fine_tune_from
    if fine_tune_from is None or model.get_layer(models.BACKBONE).trainable or epochs < 2:
        return [(epochs, learning_rate, None)]
    head_epochs = math.ceil(epochs / 2)
    return [
        (head_epochs, learning_rate, None),
        (epochs - head_epochs, learning_rate * FINE_TUNE_LEARNING_RATE_FACTOR, fine_tune_from),
    ]


def train(
    model: keras.Model, config: TrainerConfig, train_data, validation_data, counts: Tuple[int, int], log_dir: str
) -> Dict[str, Any]:
    """Adam with a cosine learning-rate decay per stage, early stopping on the validation metric
    (`early_stopping_metric`: AUC, or loss once AUC saturates); leaves the model at the weights with the best
    validation value over all stages. Returns what the run cost and chose, for the model's metadata.

    With `ema_epochs` > 0 the weights are an exponential moving average over about that many epochs: each
    epoch's validation, the best-epoch choice and the exported model all use the averaged weights
    (SwapEMAWeights swaps them in before EarlyStopping records an epoch)."""
    loss, weights = objective.loss_and_class_weights(config.loss, *counts, config.label_smoothing)
    metric_name = config.early_stopping_metric
    monitor, mode = objective.early_stopping_monitor(metric_name)
    sign = 1.0 if mode == "max" else -1.0  # compare as "higher is better"
    steps_per_epoch = max(math.ceil(sum(counts) / config.batch_size), 1)
    momentum = objective.ema_momentum(config.ema_epochs, steps_per_epoch)
    if not model.trainable_weights:  # an ensemble of trained, frozen members: only its threshold is chosen
        logging.info("%s has no trainable weights: nothing to fit", config.architecture)
        return {
            "early_stopping_metric": metric_name,
            "best_validation_value": None,
            "best_epoch": 0,
            "epochs_run": 0,
            "train_seconds": 0.0,
            "train_images_per_second": 0.0,
            "train_examples": sum(counts),
            "parameters": int(model.count_params()),
            "ema_momentum": None,
        }
    best_value, best_weights, done, best_epoch, epochs_run = -math.inf, None, 0, 0, 0
    started = time.monotonic()
    for epochs, learning_rate, unfreeze_from in _stages(
        model, config.architecture, config.epochs, config.learning_rate
    ):
        if unfreeze_from:
            models.unfreeze_top(model, unfreeze_from)
        schedule = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=max(epochs * steps_per_epoch, 1), alpha=0.05
        )
        optimizer = (
            keras.optimizers.Adam(schedule, use_ema=True, ema_momentum=momentum)
            if momentum
            else keras.optimizers.Adam(schedule)
        )
        model.compile(optimizer=optimizer, loss=loss, metrics=[keras.metrics.AUC(name="auc")])
        stopper = keras.callbacks.EarlyStopping(
            monitor=monitor, mode=mode, restore_best_weights=True, patience=config.early_stopping_patience
        )
        averaging = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if momentum else []
        history = model.fit(
            train_data,
            validation_data=validation_data,
            epochs=done + epochs,
            initial_epoch=done,
            class_weight=weights,
            callbacks=[*averaging, stopper, keras.callbacks.TensorBoard(log_dir=log_dir)],
            verbose=2,
        )
        epochs_run += len(history.epoch)
        done += epochs
        stage_value = -math.inf if stopper.best is None else sign * stopper.best  # None: a stage of zero epochs
        if stage_value >= best_value:  # equal: a stage whose metric never registered (NaN) keeps its weights
            best_value, best_weights = stage_value, model.get_weights()
            best_epoch = stopper.best_epoch + 1 if stopper.best is not None else best_epoch  # 1-based, absolute
    model.set_weights(best_weights)
    seconds = time.monotonic() - started
    return {
        "early_stopping_metric": metric_name,
        "best_validation_value": sign * best_value,
        "best_epoch": best_epoch,
        "epochs_run": epochs_run,
        "train_seconds": round(seconds, 1),
        "train_images_per_second": round(epochs_run * sum(counts) / seconds, 2) if seconds > 0 else 0.0,
        "train_examples": sum(counts),
        "parameters": int(model.count_params()),
        "ema_momentum": momentum,
    }


def run_fn(fn_args: FnArgs) -> None:
    """TFX Trainer entry point: train on `train`, select on `eval`, export the SavedModel and Keras weights.

    Under a distribution (trainer/distribute.py) the model trains on the global batch at the scaled learning
    rate; then the chief alone chooses the threshold, fits the OOD guard and exports, while the other workers
    wait for it."""
    # The strategy first: MultiWorkerMirroredStrategy must configure TensorFlow before anything (such as the
    # registry checks of from_dict) starts it. An unknown distribution plans as none, then from_dict refuses it.
    where = distribute.plan(
        fn_args.custom_config.get("distribution", TrainerConfig.distribution),
        fn_args.custom_config.get("worker_timeout_seconds", TrainerConfig.worker_timeout_seconds),
    )
    requested = TrainerConfig.from_dict(fn_args.custom_config)  # a bad setting fails now, not after training
    keras.utils.set_random_seed(requested.seed)
    config = dataclasses.replace(
        requested,
        batch_size=where.global_batch(requested.batch_size),
        learning_rate=where.learning_rate(requested.learning_rate),
    )
    with where.strategy.scope():
        model = build_model(config, fn_args.base_model)
        train_data = distribute.shard_by_data(
            inputs.make_dataset(
                fn_args.train_files,
                config.image_size,
                config.batch_size,
                training=True,
                seed=config.seed,
                augment=config.augment,
                horizontal_flip=config.horizontal_flip,
                cache=config.cache,
                crop_min_area=config.crop_min_area,
                acquisition=config.acquisition_augment,
            )
        )
        validation = distribute.shard_by_data(
            inputs.make_dataset(
                fn_args.eval_files, config.image_size, config.batch_size, training=False, cache=config.cache
            )
        )
        counts = inputs.label_counts(fn_args.train_files)
        logging.info("training %s on %d NORMAL / %d PNEUMONIA images", config.architecture, *counts)
        training = train(model, config, train_data, validation, counts, fn_args.model_run_dir)
    training.update(where.summary(requested.distribution, requested.batch_size, requested.learning_rate))
    if not where.is_chief:
        distribute.barrier(where)  # returns once the chief has exported
        return
    if where.workers > 1:  # predictions on one worker's copy: no collective, so no peer has to join them
        trained, model = model, models.build(config.architecture, config.image_size, **config.model_config)
        model.set_weights(trained.get_weights())
    export(model, config, training, fn_args, validation)
    distribute.barrier(where)


def export(model: keras.Model, config: TrainerConfig, training: Dict[str, Any], fn_args: FnArgs, validation) -> None:
    """Chooses the threshold and fits the OOD guard on `validation`, then writes the SavedModel and Keras
    weights."""
    # The OOD guard's Gaussians come from the training images without augmentation; its threshold from the
    # validation pass that also tunes the model's threshold.
    plain_train = inputs.make_dataset(fn_args.train_files, config.image_size, config.batch_size, training=False)
    guard, probabilities, labels = ood.fit_model(
        model,
        plain_train,
        validation,
        config.ood_percentile,
        layer_name=models.architecture(config.architecture).gradcam_layer,
    )
    chosen = threshold.choose(labels, probabilities, config.threshold_policy)
    logging.info(
        "best validation %s %.4f at epoch %d; threshold %.4f (%s): validation sensitivity %.3f, "
        "specificity %.3f; OOD threshold %.3f",
        training["early_stopping_metric"],
        training["best_validation_value"],
        training["best_epoch"],
        chosen.value,
        chosen.policy,
        chosen.sensitivity,
        chosen.specificity,
        guard.threshold,
    )
    signatures.export(
        model,
        fn_args.serving_model_dir,
        config.image_size,
        chosen,
        fn_args.model_run_dir,
        config.architecture,
        _normalised(config.model_config),
        training,
        guard=guard,
    )
    weights_path = keras_weights_path(fn_args.serving_model_dir)
    tf.io.gfile.makedirs(os.path.dirname(weights_path))
    model.save_weights(weights_path)  # Keras stages a remote path (gs://) in a local file and copies it

"""The Trainer's module file: `run_fn` trains the configured architecture and exports it."""
import logging

import keras
import numpy as np
from tfx.components.trainer.fn_args_utils import FnArgs

from trainer import inputs, models, signatures, threshold


def class_weights(normal: int, pneumonia: int) -> dict:
    """Inverse-frequency weights: each class contributes equally to the loss."""
    total = normal + pneumonia
    return {0: total / (2.0 * max(normal, 1)), 1: total / (2.0 * max(pneumonia, 1))}


def run_fn(fn_args: FnArgs) -> None:
    config = fn_args.custom_config
    keras.utils.set_random_seed(config["seed"])
    image_size, batch_size = config["image_size"], config["batch_size"]

    train = inputs.make_dataset(fn_args.train_files, image_size, batch_size, training=True, seed=config["seed"])
    validation = inputs.make_dataset(fn_args.eval_files, image_size, batch_size, training=False)
    normal, pneumonia = inputs.label_counts(fn_args.train_files)
    logging.info("training on %d NORMAL / %d PNEUMONIA images", normal, pneumonia)

    model = models.build(config["architecture"], image_size, **config.get("model_config", {}))
    model.compile(
        optimizer=keras.optimizers.Adam(config["learning_rate"]),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(name="auc")],
    )
    model.fit(
        train,
        validation_data=validation,
        epochs=config["epochs"],
        class_weight=class_weights(normal, pneumonia),
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=config["early_stopping_patience"],
                                          restore_best_weights=True),
            keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir),
        ],
        verbose=2,
    )

    labels = np.concatenate([y for _, y in validation.as_numpy_iterator()])
    probabilities = model.predict(validation, verbose=0).reshape(-1)
    chosen = threshold.choose(labels, probabilities, config["threshold_policy"])
    logging.info("threshold %.4f (%s): validation sensitivity %.3f, specificity %.3f",
                 chosen.value, chosen.policy, chosen.sensitivity, chosen.specificity)
    signatures.export(model, fn_args.serving_model_dir, image_size, chosen, fn_args.model_run_dir,
                      config["architecture"])

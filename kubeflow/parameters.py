"""Names the compiled pipeline shares with `schedule` and kubeflow/Dockerfile (importable without TFX)."""

DATA_ROOT_PARAMETER = "data_root"  # ImportExampleGen's input_base
TRAINER_CONFIG_PARAMETER = "trainer_config"  # the Trainer's whole custom_config, as JSON
# Where kubeflow/Dockerfile puts the project (its WORKDIR): compiled paths point there.
IMAGE_PROJECT_DIR = "/opt/pneumonia"

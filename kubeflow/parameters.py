"""Names of the compiled pipeline's runtime parameters, shared by compile and schedule (no TFX import)."""
DATA_ROOT_PARAMETER = "data_root"  # ImportExampleGen's input_base
TRAINER_CONFIG_PARAMETER = "trainer_config"  # the Trainer's whole custom_config, as JSON

"""The Evaluator's baseline where no TFX Resolver can run (open-source Kubeflow): the latest served version."""

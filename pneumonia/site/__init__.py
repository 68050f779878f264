"""Site: fitting a deployed model to the hospital that runs it (threshold calibration, prior adjustment) and
averaging several models into an ensemble."""

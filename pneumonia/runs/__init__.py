"""Runs: the run store over ML Metadata, and running a pipeline and returning its outputs."""

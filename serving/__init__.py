"""pneumonia-pipeline."""

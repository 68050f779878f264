"""Data: image sources, the patient and calibration carves, and the Beam `prepare` job that writes the
TFRecords the pipeline reads, with its audit report."""

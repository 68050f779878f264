"""Monitoring: watch a served model from its request logs (`pneumonia monitor`).

Reads the PredictionLog files `pneumonia serve` and the DICOM node write (local or in a bucket), cuts them into
windows and compares each with the served version's validation reference: volume, OOD and class shares, score
drift (Kolmogorov-Smirnov, Jensen-Shannon), image-statistics drift (TFDV against a schema of drift
comparators), the prevalence (Saerens EM) and label-free estimates of accuracy, sensitivity and specificity
(CBPE); with labels, the realised figures beside them. Writes alerts, the figures per window and an HTML page.
"""

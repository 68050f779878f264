"""pneumonia-pipeline's command-line package, in layers that point one way:

- `cli/`: argparse and printing only;
- `analysis/`: compare, ablation, policies, k-shot, errors, tables, and the RESULTS writer;
- `site/`: fitting a deployed model to a site (calibration) and ensembles;
- `monitoring/`: watching a served model from its request logs (drift, label-free estimates, alerts);
- `runs/`: the run store over ML Metadata, and running a pipeline and returning its outputs;
- `data/`: sources, the patient and calibration carves, and the Beam `prepare` job.

cli -> analysis/site/monitoring -> runs/data -> pipeline/components/serving/trainer; nothing imports cli
(tests/layers_test.py checks it).
"""

"""pneumonia-pipeline: a TFX pipeline that trains, validates, evaluates and serves chest X-ray classifiers."""

from setuptools import find_packages, setup

setup(
    name="pneumonia-pipeline",
    version="0.1.0",
    description="TFX pipeline for chest X-ray pneumonia classification, served over TF Serving's gRPC API.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.11",
    packages=find_packages(include=["pneumonia*", "pipeline*", "components*", "trainer*", "serving*", "kubeflow*"]),
    package_data={"pipeline": ["schema/*.pbtxt"], "pneumonia": ["monitoring/*.pbtxt"], "serving": ["web/*"]},
    install_requires=[
        "tfx>=1.16,<1.17",
        "tensorflow>=2.16,<2.17",
        "tf-keras>=2.16,<2.17",
        "tensorflow-model-analysis>=0.47,<0.48",
        "tensorflow-data-validation>=1.16,<1.17",
        "tensorflow-transform>=1.16,<1.17",
        "tfx-bsl>=1.16,<1.17",
        "ml-metadata>=1.16,<1.17",
        "tensorflow-serving-api>=2.16,<2.17",
        "apache-beam[gcp]>=2.50,<3",
        "dill",
        "protobuf>=3.20,<4",
        "kfp>=2.5,<2.6",
        "Pillow>=9",
        "PyYAML>=6",
        "matplotlib>=3.7",
        "prometheus_client>=0.20",
    ],
    extras_require={"test": ["pytest>=7"]},
    entry_points={"console_scripts": ["pneumonia=pneumonia.cli:main"]},
)

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="dmlrs",
    version="0.1.0",
    description="Deep metric learning for remote-sensing scene retrieval (SNCA-CE, HR-S2DML, CDNE, t-RNSL, SRL)",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["dmlrs", "dmlrs.*"]),
    package_data={"dmlrs.data": ["*.json"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy>=1.24",
        "scikit-learn>=1.3",
        "tensorboard>=2.14",
        "tqdm>=4.60",
        "Pillow>=9.0",
        "matplotlib>=3.7",
        "PyYAML>=5.1",  # --config files and configs/<paper>/<row>.yaml
    ],
    extras_require={"test": ["pytest>=7"], "pml": ["pytorch-metric-learning"],
                    "faiss": ["faiss-cpu"]},
)

from setuptools import find_packages, setup

setup(
    name="tfdnadet",
    version="0.1.0",
    description="Attribute images to the GAN architecture that made them (DNA-Det, AAAI 2022) with TensorFlow/Keras.",
    packages=find_packages(include=["tfdnadet", "tfdnadet.*"]),
    # configs/ at the top level is a link to tfdnadet/configs, which installs with the package
    package_data={"tfdnadet.configs": ["*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "tensorflow==2.21.0",
        "keras==3.15.1",
        "tensorboard==2.21.0",
        "numpy>=1.26,<3",
        "pillow==13.0.0",
        "scikit-learn==1.9.1",
        "scikit-image==0.26.0",
        # stage 1's median blur (cv2.medianBlur): exact and 15-100x faster than TensorFlow ops
        "opencv-python-headless==5.0.0.93",
        "typer==0.29.1",
        "pyyaml==6.0.3",
        "matplotlib==3.11.2",
        # TF Serving's own protos: warm-up requests (PredictionLog) and models.config (ModelServerConfig)
        "tensorflow-serving-api==2.21.0",
    ],
    extras_require={
        # Reading the official PyTorch checkpoints (tfdnadet import-torch); the tests check parity with it.
        "torch": ["torch==2.13.0"],
        "test": ["pytest==9.0.3", "pytest-xdist==3.8.0", "torch==2.13.0"],
    },
    entry_points={"console_scripts": ["tfdnadet=tfdnadet.cli:main"]},
)

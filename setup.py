"""passl_tl: token labeling (LV-ViT) and friends for PaddlePaddle."""
from setuptools import find_packages, setup

ONNX = ["paddle2onnx>=2.0", "onnxruntime>=1.16"]  # ONNX export (tools/export_model.py --onnx) and ONNX Runtime

setup(
    name="passl_tl",
    version="0.1.0",
    description="Vision transformers trained with token labeling (LV-ViT) on PaddlePaddle",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["passl_tl", "passl_tl.*"]),
    package_data={"passl_tl": ["data/*.txt"]},  # bundled class names (ImageNet-1k)
    python_requires=">=3.9",
    install_requires=["numpy", "pyyaml", "visualdl", "opencv-python", "Pillow"],
    extras_require={
        # GPU users install paddlepaddle-gpu themselves (see README) and skip this extra.
        "cpu": ["paddlepaddle>=3.0"],
        "onnx": ONNX,
        # What the tests need besides the package: scipy is a label-warp test's reference, and with the ONNX
        # packages the ONNX export tests run instead of skipping.
        "test": ["pytest>=7", "scipy", *ONNX],
    },
)

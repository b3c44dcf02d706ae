from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
for line in (here / "defectkit" / "__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        exec(line, version)

setup(
    name="defectkit",
    version=version["__version__"],
    description="One PyTorch framework, driven by YAML configs, for industrial defect inspection",
    long_description=(here / "README.md").read_text(encoding="utf-8") if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["defectkit", "defectkit.*"]),
    install_requires=[l.strip() for l in (here / "requirements.txt").read_text().splitlines()
                      if l.strip() and not l.startswith("#")],
    extras_require={"dev": ["pytest", "tensorboard"], "onnx": ["onnx", "onnxruntime"]},
)

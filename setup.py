from setuptools import find_packages, setup

setup(
    name="vidtx",
    version="0.1.0",
    description="JAX/Flax video recognition: video ViTs, masked video modeling, TPU-first.",
    packages=find_packages(include=["vidtx", "vidtx.*"]),
    python_requires=">=3.11",
    # Ranges are the versions tested together.
    install_requires=[
        "absl-py>=2.1",
        "av>=18.1,<19",  # PyAV: video decoding in vidtx.data.video_files
        "clu>=0.0.12",
        "flax>=0.12.8,<0.13",
        "jax>=0.10.2,<0.11",
        "ml-collections>=1.1",
        "numpy>=2.0",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "pillow>=10.0",
        "tensorboard>=2.21,<2.22",  # clu's summary writer; tensorflow-cpu no longer pulls it
        "tensorflow-cpu>=2.21,<2.22",  # tf.data input pipelines only
        "tensorflow-datasets>=4.9.10,<5",  # data.name="tfds:<name>"
    ],
    extras_require={
        # The notebooks are executed by tests/test_notebooks.py.
        # pytest-xdist: the README's test command runs two workers.
        "test": ["pytest>=8", "pytest-xdist>=3.6", "nbclient>=0.10", "nbformat>=5.10",
                 "ipykernel>=6.29", "matplotlib>=3.9"],
        # Parity tests and weight converters: PyTorch, torchvision and HF transformers, run on
        # the CPU. These wheels are PyPI's CUDA builds (~3 GB with their NVIDIA libraries):
        # torchvision's wheel needs them, and fails to import beside the CPU-only torch build.
        # Their triton crashes a process that loaded TensorFlow first: tests/conftest.py keeps
        # it from loading (nothing here needs it). pytorchvideo (an sdist, pure Python) is the
        # reference of the X3D, SlowFast, Slow and I3D parity tests.
        "torch": ["torch==2.14.1", "torchvision==0.29.1", "transformers==4.57.6",
                  "pytorchvideo==0.1.5"],
    },
)

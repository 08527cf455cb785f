"""Partially personalized federated learning on TensorFlow Federated.

Importing the package imports TensorFlow without its CUDA start-up noise on
machines without a GPU (`tf_startup`).
"""

from partial_personalization import tf_startup

tf_startup.import_tensorflow()

"""ModelOps: train, register, serve, canary and drift-monitor scikit-learn models on Kubernetes."""

GROUP = "modelops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

__version__ = "0.1.0"

"""Other tools the operator's objects are mirrored to (optional, off by default): MLflow."""

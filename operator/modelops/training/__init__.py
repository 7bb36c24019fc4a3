"""The trainer that runs inside a TrainingRun's Job pod (``python -m modelops train``)."""

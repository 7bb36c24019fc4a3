"""Kopf handlers, one module per kind: read spec -> call pure planners -> apply -> write status."""

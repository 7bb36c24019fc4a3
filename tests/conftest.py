"""Shared fixtures: real servers on free loopback ports, stopped after use."""

from __future__ import annotations

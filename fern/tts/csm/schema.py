"""Schemas of the CSM presets of the tts config group (see fern.config.schema)."""

from __future__ import annotations

SCHEMAS: dict[str, dict[str, type]] = {}

"""Errors a user can act on. run.py prints their message as one line and exits non-zero."""

from __future__ import annotations


class FernError(Exception):
    """Base class: the message alone must tell the user what is wrong and what to do."""


class AudioInputError(FernError):
    """Input audio is missing, empty, corrupt or in a format we cannot convert."""


class MissingWeightsError(FernError):
    """Model weights are not on this machine and could not be fetched."""


class MissingSecretError(FernError):
    """A required API key is not set in the environment."""


class ServiceError(FernError):
    """A remote service (e.g. Gemini) failed or could not be reached."""


class ConfigValueError(FernError):
    """A config value is syntactically valid but unusable (wrong path, bad range...)."""


class LlmStreamError(ServiceError):
    """An LLM stream failed (slow to start, stalled, refused, cut off); ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class AudioDeviceError(FernError):
    """A microphone or speaker cannot be used: none there, no such device, busy, or a setting it does not support."""


class EchoCancellerError(FernError):
    """The chosen echo canceller is not installed on this machine."""

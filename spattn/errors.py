"""The exceptions spattn raises on bad input. Every one is a :class:`SpattnError`."""

from __future__ import annotations


class SpattnError(ValueError):
    """Base class of every error spattn raises because of its caller's input.

    Subclasses ``ValueError`` so that generic handlers keep working; catch ``SpattnError`` to
    catch exactly spattn's own complaints.
    """


class PatternSyntaxError(SpattnError):
    """The pattern text does not parse. The message shows the text with a caret."""


class PatternNameError(SpattnError):
    """An unknown name, a wrong arity or keyword, a recursive preset, a type mismatch."""


class LoweringError(SpattnError):
    """A pattern cannot be lowered at this sequence length (an argument or index out of range)."""


class ResourceError(SpattnError):
    """A request would allocate more memory than the configured budget allows."""


class ShapeError(SpattnError):
    """Tensors given to attention have the wrong shape, dtype or device."""


class ConfigError(SpattnError):
    """A YAML configuration file is malformed."""

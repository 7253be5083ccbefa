"""The spattn pattern language: ``spattn.lark`` (the grammar) and ``prelude.spattn`` (presets
written in the language itself). Shipped as the package ``spattn.grammar``."""

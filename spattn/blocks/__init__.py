"""Block-level lowering: which (query block, key block) tiles a pattern touches, which it
covers fully, and the element mask inside the others.

In: a canonical pattern node and sizes. Out: :class:`BlockLayout` (:func:`to_blocks`, the GPU
backend's input), :func:`mask_mod` and FlexAttention ``BlockMask`` interop. Modules:
:mod:`.classify` (closed-form tile labels from the primitive table, undecided tiles settled by
one element evaluation per class), :mod:`.layout` (the layout format and builder),
:mod:`.flex` (FlexAttention), :mod:`.packed` (the same over documents).
"""

from __future__ import annotations

from .flex import mask_mod
from .layout import BlockLayout, to_blocks
from .packed import PackedLayout, packed_blocks, packed_mask_mod

__all__ = ["BlockLayout", "to_blocks", "mask_mod", "PackedLayout", "packed_blocks",
           "packed_mask_mod"]

"""The channel widths of a convolutional stem, shared by both backends and the weight converters."""

from __future__ import annotations


def stem_channels(embed_dim: int, convs: int, width: int = 0) -> list[int]:
    """The output channels of a conv stem's ``convs`` stride-2 convolutions.

    ``width`` 0: they double up to ``embed_dim / 2``, at least 16 each (16, 32, 64 for a
    width of 128 and patch 8). ``width`` C: C, 2C, 4C, ...
    """
    if width:
        return [width * 2**i for i in range(convs)]
    return [max(16, embed_dim // 2 ** (convs - i)) for i in range(convs)]

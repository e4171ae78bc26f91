"""SequenceLayers' convolutions: Conv1D here; Conv2D and DepthwiseConv1D are trax_sl's own.

`Conv1D` is SequenceLayers' (its `padding` modes, `strides`, `groups`,
`activation`), built on the convolution every trax_sl convolution is, so it
streams the same way. Trax's `tl.Conv1d` (lower-case d, `stride=`, lax's
'SAME') is a different layer.
"""

from __future__ import annotations

from collections.abc import Callable

import trax_sl.layers as tl
from trax_sl import checks
from trax_sl.layers.convolution import Convolution
from trax_sl.sl import common

Conv2D = tl.Conv2D
DepthwiseConv1D = tl.DepthwiseConv1D


class Conv1D(Convolution):
    """SequenceLayers' 1-D convolution over time.

    n_in=1, n_out=1; `[batch, time, channels]` -> `[batch, time / strides,
    filters]`. `padding`: 'valid', 'same', 'causal_valid',
    'reverse_causal_valid', 'causal', 'reverse_causal' or 'semicausal', with
    SequenceLayers' rules (see `trax_sl.layers.convolution`). Weights
    `(kernel [kernel_size, channels / groups, filters], bias [filters])`, or
    the kernel alone with `use_bias=False`.

    Predict mode: the state holds the last `buffer_width` input steps and their mask.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int,
        strides: int = 1,
        dilation_rate: int = 1,
        padding: str = "valid",
        groups: int = 1,
        use_bias: bool = True,
        activation: Callable | None = None,
        kernel_init=common.LECUN_NORMAL,
        bias_init=common.zeros,
        name: str | None = None,
        mode: str = "train",
    ):
        checks.check_positive("Conv1D", kernel_size=kernel_size, strides=strides, dilation_rate=dilation_rate)
        checks.check_mode_name("Conv1D", padding=padding)
        super().__init__(
            "Conv1D",
            (kernel_size,),
            padding=padding,
            trax_same=False,
            filters=filters,
            strides=(strides,),
            dilation_rate=(dilation_rate,),
            dimension_numbers=("NWC", "WIO", "NWC"),
            kernel_initializer=kernel_init,
            bias_initializer=bias_init,
            use_bias=use_bias,
            groups=groups,
            activation=activation,
            mode=mode,
            name=name,
        )

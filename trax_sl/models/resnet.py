"""Residual networks for images (Trax's): Resnet50 and WideResnet, with their blocks.

Names, arguments, defaults, layer trees and weights trees are Trax's
(`trax.models.resnet`). Images are `[batch, height, width, channels]`; the
blocks are lists of layers (as in Trax), to be placed in a `Serial`.

These are image classifiers: their convolutions and pooling mix rows of the
image, which is its first spatial axis (what a Conv calls time), so they are
meant for plain image arrays, layer-wise.
"""

from __future__ import annotations

from trax_sl import checks
from trax_sl.layers import activation_fns, base, combinators, convolution, core, normalization, pooling


def ConvBlock(kernel_size, filters, strides, norm, non_linearity, mode="train") -> list:  # noqa: N802
    """Returns ResNet's striding bottleneck block: a list of layers `[b, h, w, c] -> [b, h', w', filters[2]]`.

    n_in=1, n_out=1. `Residual(main, shortcut=shortcut)` then
    `non_linearity()`, where main is Conv(filters[0], 1x1, strides), norm,
    non-linearity, Conv(filters[1], kernel_size x kernel_size, 'SAME'), norm,
    non-linearity, Conv(filters[2], 1x1), norm; and the shortcut is
    Conv(filters[2], 1x1, strides), norm. Each norm is `norm(mode=mode)`.
    """
    ks = kernel_size
    filters1, filters2, filters3 = filters
    main = [
        convolution.Conv(filters1, (1, 1), strides),
        norm(mode=mode),
        non_linearity(),
        convolution.Conv(filters2, (ks, ks), padding="SAME"),
        norm(mode=mode),
        non_linearity(),
        convolution.Conv(filters3, (1, 1)),
        norm(mode=mode),
    ]
    shortcut = [convolution.Conv(filters3, (1, 1), strides), norm(mode=mode)]
    return [combinators.Residual(main, shortcut=shortcut), non_linearity()]


def IdentityBlock(kernel_size, filters, norm, non_linearity, mode="train") -> list:  # noqa: N802
    """Returns ResNet's bottleneck block that keeps the shape: a list of layers `[b, h, w, c] -> same`.

    n_in=1, n_out=1. `Residual(main)` then `non_linearity()`, with main as in
    `ConvBlock` without strides; `filters[2]` must equal the input channels.
    """
    ks = kernel_size
    filters1, filters2, filters3 = filters
    main = [
        convolution.Conv(filters1, (1, 1)),
        norm(mode=mode),
        non_linearity(),
        convolution.Conv(filters2, (ks, ks), padding="SAME"),
        norm(mode=mode),
        non_linearity(),
        convolution.Conv(filters3, (1, 1)),
        norm(mode=mode),
    ]
    return [combinators.Residual(main), non_linearity()]


def Resnet50(  # noqa: N802
    d_hidden: int = 64,
    n_output_classes: int = 1001,
    mode: str = "train",
    norm=normalization.BatchNorm,
    non_linearity=activation_fns.Relu,
) -> base.Layer:
    """Returns ResNet-50 (https://arxiv.org/abs/1512.03385): images `[batch, h, w, c]` -> logits `[batch, n_output_classes]`.

    n_in=1, n_out=1. ToFloat, Conv(d_hidden, 7x7, stride 2, 'SAME'), norm,
    non-linearity, MaxPool(3x3, stride 2), then four stages of bottleneck
    blocks (1 ConvBlock + 2, 3, 5, 2 IdentityBlocks; filters `m * (d_hidden,
    d_hidden, 4 * d_hidden)` with m = 1, 2, 4, 8; the first stage does not
    stride), AvgPool(7x7), Flatten, Dense(n_output_classes). Images must be
    large enough for the final 7x7 pooling (about 200 pixels a side; Trax's
    test uses 256).

    Args:
      d_hidden: channels of the first hidden layer (multiplied later).
      n_output_classes: number of output classes.
      mode: 'train', 'eval' or 'predict', passed to every norm.
      norm: the normalization layer class, called as `norm(mode=mode)`, e.g.
        BatchNorm or FilterResponseNorm.
      non_linearity: the non-linearity layer class, called with no arguments:
        Relu with BatchNorm, ThresholdedLinearUnit with FilterResponseNorm.

    Predict mode: not streamable (the pooling and Flatten mix image rows);
    mode='predict' classifies whole images as 'eval' does.
    """
    checks.check_positive("Resnet50", d_hidden=d_hidden, n_output_classes=n_output_classes)

    def Resnet50ConvBlock(filter_multiplier=1, strides=(2, 2)):  # noqa: N802
        filters = [filter_multiplier * dim for dim in (d_hidden, d_hidden, 4 * d_hidden)]
        return ConvBlock(3, filters, strides, norm, non_linearity, mode)

    def Resnet50IdentityBlock(filter_multiplier=1):  # noqa: N802
        filters = [filter_multiplier * dim for dim in (d_hidden, d_hidden, 4 * d_hidden)]
        return IdentityBlock(3, filters, norm, non_linearity, mode)

    return combinators.Serial(
        core.ToFloat(),
        convolution.Conv(d_hidden, (7, 7), (2, 2), "SAME"),
        norm(mode=mode),
        non_linearity(),
        pooling.MaxPool(pool_size=(3, 3), strides=(2, 2)),
        Resnet50ConvBlock(strides=(1, 1)),
        [Resnet50IdentityBlock() for _ in range(2)],
        Resnet50ConvBlock(2),
        [Resnet50IdentityBlock(2) for _ in range(3)],
        Resnet50ConvBlock(4),
        [Resnet50IdentityBlock(4) for _ in range(5)],
        Resnet50ConvBlock(8),
        [Resnet50IdentityBlock(8) for _ in range(2)],
        pooling.AvgPool(pool_size=(7, 7)),
        core.Flatten(),
        core.Dense(n_output_classes),
        name="Resnet50",
    )


def WideResnetBlock(channels, strides=(1, 1), bn_momentum=0.9, mode="train") -> list:  # noqa: N802
    """Returns WideResnet's pre-activation block: a list of layers `[b, h, w, c] -> [b, h', w', channels]`.

    n_in=1, n_out=1. BatchNorm, Relu, Conv(channels, 3x3, strides, 'SAME'),
    BatchNorm, Relu, Conv(channels, 3x3, 'SAME'); each BatchNorm with
    `momentum=bn_momentum` and `mode`.
    """
    return [
        normalization.BatchNorm(momentum=bn_momentum, mode=mode),
        activation_fns.Relu(),
        convolution.Conv(channels, (3, 3), strides, padding="SAME"),
        normalization.BatchNorm(momentum=bn_momentum, mode=mode),
        activation_fns.Relu(),
        convolution.Conv(channels, (3, 3), padding="SAME"),
    ]


def WideResnetGroup(n, channels, strides=(1, 1), bn_momentum=0.9, mode="train") -> list:  # noqa: N802
    """Returns a group of WideResnet blocks: a list of layers `[b, h, w, c] -> [b, h', w', channels]`.

    n_in=1, n_out=1. As in Trax: `Residual(WideResnetBlock(channels,
    strides), shortcut=Conv(channels, 3x3, strides, 'SAME'))`, then one
    `Residual` around the other `n - 1` blocks together (Trax's tree: a
    single residual connection around all of them, not one per block).
    """
    shortcut = [convolution.Conv(channels, (3, 3), strides, padding="SAME")]
    return [
        combinators.Residual(
            WideResnetBlock(channels, strides, bn_momentum=bn_momentum, mode=mode), shortcut=shortcut
        ),
        combinators.Residual(
            [WideResnetBlock(channels, (1, 1), bn_momentum=bn_momentum, mode=mode) for _ in range(n - 1)]
        ),
    ]


def WideResnet(  # noqa: N802
    n_blocks: int = 3,
    widen_factor: int = 1,
    n_output_classes: int = 10,
    bn_momentum: float = 0.9,
    mode: str = "train",
) -> base.Layer:
    """Returns WideResnet (https://arxiv.org/abs/1605.07146): images `[batch, h, w, c]` -> logits `[batch, n_output_classes]`.

    n_in=1, n_out=1. ToFloat, Conv(16, 3x3, 'SAME'), three WideResnetGroups
    of `n_blocks` blocks with `16, 32, 64 * widen_factor` channels (the
    second and third stride 2), BatchNorm, Relu, AvgPool(8x8), Flatten,
    Dense(n_output_classes). Made for 32x32 images (CIFAR), which the 8x8
    pooling reduces to one position.

    Args:
      n_blocks: blocks per group; the network has 6 * n_blocks + 4 layers.
      widen_factor: widening factor of each group (1: a plain ResNet).
      n_output_classes: number of output classes.
      bn_momentum: momentum of every BatchNorm.
      mode: 'train', 'eval' or 'predict', passed to every BatchNorm.

    Predict mode: not streamable (the pooling and Flatten mix image rows);
    mode='predict' classifies whole images as 'eval' does.
    """
    checks.check_positive(
        "WideResnet", n_blocks=n_blocks, widen_factor=widen_factor, n_output_classes=n_output_classes
    )
    return combinators.Serial(
        core.ToFloat(),
        convolution.Conv(16, (3, 3), padding="SAME"),
        WideResnetGroup(n_blocks, 16 * widen_factor, bn_momentum=bn_momentum, mode=mode),
        WideResnetGroup(n_blocks, 32 * widen_factor, (2, 2), bn_momentum=bn_momentum, mode=mode),
        WideResnetGroup(n_blocks, 64 * widen_factor, (2, 2), bn_momentum=bn_momentum, mode=mode),
        normalization.BatchNorm(momentum=bn_momentum, mode=mode),
        activation_fns.Relu(),
        pooling.AvgPool(pool_size=(8, 8)),
        core.Flatten(),
        core.Dense(n_output_classes),
        name="WideResnet",
    )

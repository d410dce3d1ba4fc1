"""ResNet: a small residual CNN for spectrogram chunks, the modern recipe's model (0.9 M
parameters; a 128-band 5 s chunk costs about 0.2 G multiply-adds, so a 2-core CPU trains on
some thousand chunks a minute).

Residual blocks (He et al. 2016) with batch normalisation, widening as the time-frequency
map halves, then global average and max pooling over the whole map, so any chunk length
and any number of bands work. No normalisation of its own: with `--normalize` the trainer
puts one in front (saved in the model). A model file may also define
`compile_args(settings) -> dict` (see train/recipe.py and the README); this one uses the
trainer's options (AdamW, label smoothing, warm-up and cosine decay in the modern recipe).
"""

import keras
from keras import layers

WIDTHS = (32, 64, 128, 192)  # channels of the four stages; each stage after the first halves
DROPOUT = 0.3


def residual_block(x, width: int, stride: int):
    """conv3x3-BN-ReLU-conv3x3-BN plus the input (projected by a 1x1 conv when the shape
    changes), then ReLU."""
    shortcut = x
    if stride != 1 or x.shape[-1] != width:
        shortcut = layers.Conv2D(width, 1, strides=stride, use_bias=False)(x)
        shortcut = layers.BatchNormalization()(shortcut)
    x = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.Activation("relu")(layers.Add()([x, shortcut]))


def build_model(input_shape: tuple, n_classes: int) -> keras.Model:
    """input_shape: (n_bins, chunk_frames, 1), channels last; any sizes.

    | layer | output (bins, frames) of a (128, 247) chunk |
    | stem: conv 3x3 / 2, BN, ReLU; max pool 2 | 32 x (32, 62) |
    | residual block | 32 x (32, 62) |
    | residual block / 2 | 64 x (16, 31) |
    | residual block / 2 | 128 x (8, 16) |
    | residual block / 2 | 192 x (4, 8) |
    | global average and max pooling, concatenated; dropout 0.3 | 384 |
    | dense softmax | n_classes |

    Returns a model mapping (batch, *input_shape) raw or normalised log spectrogram chunks
    to (batch, n_classes) softmax probabilities.
    """
    inputs = keras.Input(input_shape)
    # stem: a quarter of the resolution at once, which keeps a 2-core CPU within budget
    x = layers.Conv2D(WIDTHS[0], 3, strides=2, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.MaxPooling2D(2)(x)
    for stage, width in enumerate(WIDTHS):
        x = residual_block(x, width, stride=1 if stage == 0 else 2)
    x = layers.Concatenate()([layers.GlobalAveragePooling2D()(x), layers.GlobalMaxPooling2D()(x)])
    x = layers.Dropout(DROPOUT)(x)
    # float32 even under mixed precision: a float16 softmax loses small probabilities
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="ResNet")

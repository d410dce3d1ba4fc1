"""AlexNet-style CNN of Tóth & Czeba, BirdCLEF 2016 (36.07 M parameters at 50 classes).

Copy this file to train/model-MyNet.py, edit the layers, and pass its path to
train/train_model.py --model: the trainer needs only `build_model`.
"""

import keras
from keras import layers


def build_model(input_shape: tuple, n_classes: int) -> keras.Model:
    """input_shape: (n_bins, chunk_frames, 1) = (200, 310, 1), channels last.

    Returns a model mapping (batch, *input_shape) spectrogram chunks to (batch, n_classes)
    softmax probabilities.
    """
    init = "lecun_uniform"
    return keras.Sequential(
        [
            keras.Input(input_shape),
            layers.Conv2D(
                96, (16, 16), strides=6, activation="relu", kernel_initializer="glorot_normal"
            ),
            layers.BatchNormalization(axis=-1),  # over channels (the original: over time)
            layers.MaxPooling2D(2),
            layers.Conv2D(256, 3, activation="relu", kernel_initializer=init),
            layers.BatchNormalization(axis=-1),
            layers.MaxPooling2D(2),
            layers.Conv2D(384, 3, padding="same", activation="relu", kernel_initializer=init),
            layers.Conv2D(384, 3, padding="same", activation="relu", kernel_initializer=init),
            layers.Conv2D(256, 3, padding="same", activation="relu", kernel_initializer=init),
            layers.BatchNormalization(axis=-1),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(4096, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(4096, activation="relu"),
            layers.Dropout(0.5),
            # float32 even under mixed precision: a float16 softmax loses small probabilities
            layers.Dense(n_classes, activation="softmax", dtype="float32"),
        ],
        name="AlexNet",
    )

"""A small seeded image backbone for tests and benchmarks (32 px in, 16 out).

A module-level factory, so that Apache Beam workers can build it
themselves (`functools.partial(tiny_backbone, seed=0)` pickles).
"""

import keras


def tiny_backbone(seed=0, image_size=32, features=16):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((image_size, image_size, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(features),
        ],
        name="tiny_backbone",
    )

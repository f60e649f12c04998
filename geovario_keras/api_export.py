"""Registration of public classes for Keras serialization."""

import keras

PACKAGE = "geovario_keras"


def register(cls):
    """Register `cls` for `.keras` serialization under this package."""
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)

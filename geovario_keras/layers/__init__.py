"""Keras layers of geovario-keras."""

from geovario_keras.layers.clip_image import CLIPImageFeatures
from geovario_keras.layers.clip_image import clip_preprocess
from geovario_keras.layers.contrastive_head import ContrastiveHead
from geovario_keras.layers.equal_earth import EqualEarthProjection
from geovario_keras.layers.fourier import RandomFourierFeatures
from geovario_keras.layers.geodesic_noise import GeodesicNoise
from geovario_keras.layers.gps_gallery import GPSGallery
from geovario_keras.layers.gps_gallery import ReferenceSet
from geovario_keras.layers.gps_queue import GPSQueue
from geovario_keras.layers.image_encoder import ImageEncoder
from geovario_keras.layers.location_encoder import LocationEncoder
from geovario_keras.layers.mlp_location_encoder import MLPLocationEncoder
from geovario_keras.layers.siren import SirenDense
from geovario_keras.layers.spherical_harmonics import SphericalHarmonics
from geovario_keras.layers.spherical_harmonics import (
    SphericalHarmonicsLocationEncoder,
)

__all__ = [
    "CLIPImageFeatures",
    "ContrastiveHead",
    "EqualEarthProjection",
    "GPSGallery",
    "GeodesicNoise",
    "GPSQueue",
    "ImageEncoder",
    "LocationEncoder",
    "MLPLocationEncoder",
    "RandomFourierFeatures",
    "ReferenceSet",
    "SirenDense",
    "SphericalHarmonics",
    "SphericalHarmonicsLocationEncoder",
    "clip_preprocess",
]

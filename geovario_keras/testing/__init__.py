"""Helpers for tests and benchmarks (not imported by `geovario_keras`).

- `reference_geoclip`: the reference PyTorch GeoCLIP, executed from the
  files of the `geoclip` 1.3.0 wheel (needs torch).
- `scipy_harmonics`: real spherical harmonics from
  `scipy.special.sph_harm_y`, the reference of `SphericalHarmonics`.
- `synthetic_features`: finished feature shards of random rows, for
  `gv.data.geotagged_features` without a corpus.
- `tiny_clip`: a random CLIP checkpoint written by `transformers`, the
  reference of `gv.pretrained.clip_image_backbone` (needs transformers).
"""

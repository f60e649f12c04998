"""Multi-crop views of images, for `predict_gps(..., crops=True)`."""

import numpy as np


def _check(images, size):
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(
            "`images` must be an array of shape (N, H, W, C); got shape "
            f"{images.shape}."
        )
    h, w = images.shape[1:3]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"`size` must be an int >= 1; got {size!r}.")
    if size > min(h, w):
        raise ValueError(
            f"`size` must be <= the image height and width ({h} x {w}); "
            f"got {size}."
        )
    return images, h, w


def five_crop(images, size):
    """The four corner crops and the centre crop of each image.

    Args:
        images: array `(N, H, W, C)`.
        size: int. Side of the square crops, at most `min(H, W)`.

    Returns:
        Array `(N, 5, size, size, C)`: top-left, top-right, bottom-left,
        bottom-right, centre (torchvision's `FiveCrop` order).

    Example:

    >>> x = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
    >>> five_crop(x, 2)[0, :, :, :, 0].reshape(5, 4).tolist()[4]
    [5.0, 6.0, 9.0, 10.0]
    """
    images, h, w = _check(images, size)
    top, left = (h - size) // 2, (w - size) // 2
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size)]
    views = [images[:, i : i + size, j : j + size] for i, j in corners]
    views.append(images[:, top : top + size, left : left + size])
    return np.stack(views, axis=1)


def ten_crop(images, size):
    """`five_crop` of each image and of its horizontal mirror.

    Returns:
        Array `(N, 10, size, size, C)`: the five crops, then the same five
        of the left-right mirrored image (torchvision's `TenCrop`).
    """
    images, _, _ = _check(images, size)
    mirrored = images[:, :, ::-1]
    return np.concatenate(
        [five_crop(images, size), five_crop(mirrored, size)], axis=1
    )

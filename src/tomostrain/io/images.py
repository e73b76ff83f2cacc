"""Single 2D images (a probe image, a reference pattern): .npy, .tif/.tiff, HDF5."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FileFormatError
from ._files import check_npy_size, existing_file, list_datasets, open_h5, reader_errors, real_dtype


@reader_errors("image")
def read_image(path, dataset: str | None = None) -> np.ndarray:
    """A 2D image as float32 ``(ky, kx)``; HDF5 files need ``dataset`` unless they hold one 2D dataset."""
    path = existing_file(Path(path), "image")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        check_npy_size(path)
        try:
            image = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise FileFormatError(f"{path}: not a readable .npy file ({exc})") from None
    elif suffix in (".tif", ".tiff"):
        import tifffile

        try:
            image = tifffile.imread(path)
        except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds on bad files
            raise FileFormatError(f"{path}: not a readable TIFF file ({exc})") from None
    elif suffix in (".h5", ".hdf5", ".hdf", ".emd"):
        with open_h5(path) as h5:
            names = [dataset] if dataset else [n for n in list_datasets(h5) if h5[n].ndim == 2]
            if len(names) != 1 or names[0] not in h5:
                raise FileFormatError(f"{path}: expected one 2D image dataset (give dataset=), found {names}")
            image = h5[names[0]][...]
    else:
        raise FileFormatError(f"{path}: unknown image format {suffix!r} (use .npy, .tif or .h5)")
    if image.ndim != 2:
        raise FileFormatError(f"{path}: expected a 2D image, got shape {image.shape}")
    real_dtype(image.dtype, f"image {path}")
    if not np.isfinite(image).all():
        raise FileFormatError(f"{path}: the image contains NaN or Inf")
    return np.asarray(image, dtype=np.float32)

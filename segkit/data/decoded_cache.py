"""A split's decoded images and class-index masks in two flat memory-mapped files.

Decoding a 360x480 PNG frame and its label costs about 12 ms on one core; training on a
small CPU then spends a noticeable share of each step (and of the same cores) on decoding.
:class:`DecodedCache` stores every sample of one split once, decoded, so reading a sample
is a slice of a memory map. :class:`~segkit.data.folder.FolderDataset` decides when to build
or open one (``decoded_cache=True``); this module holds the file format and the safe write.

Layout of one cache, a folder ``<cache_dir>/decoded/<Dataset>-<split>-<digest>/``::

    images.u8    uint8 bytes: every image [H, W, 3] in sample order, C-contiguous
    masks.bin    every class-index mask [H, W], each in the narrowest integer type that
                 holds its values (uint8 for CamVid), starting at a multiple of 8 bytes
    index.json   the key it was built from, and per sample [H, W, 3, image offset,
                 mask offset, stored mask dtype, returned mask dtype]

Per-sample offsets let one split hold images of different sizes (VOC). Masks are stored
*after* the dataset's label mapping, so reading one is a slice and a cast back to the dtype
the file path returns: both paths give the transform the same arrays.

Safety: a cache is built in a temporary folder next to its final one, flushed to disk, then
renamed into place in one step, so a reader sees a complete cache or none; a killed build
leaves only a temporary folder, removed by the next build. Processes building the same cache
at once (DDP ranks, two runs) queue on a lock file: one builds, the others open its result.
Where file locks are unavailable, each builds and the rename still keeps the cache whole.
``open`` accepts a folder only if its stored key equals the expected one and its files have
the recorded sizes; anything else is rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no flock; the atomic rename alone keeps caches whole
    fcntl = None  # type: ignore[assignment]

IMAGES, MASKS, INDEX = "images.u8", "masks.bin", "index.json"
MASK_ALIGN = 8  # bytes; keeps every wider-than-uint8 mask view aligned
STORAGE_DTYPES = (np.uint8, np.uint16, np.int16, np.int32)  # tried in this order


def storage_dtype(mask: np.ndarray) -> np.dtype:
    """The narrowest integer dtype holding every value of ``mask`` (its own dtype otherwise)."""
    if mask.dtype.kind not in "iub" or mask.size == 0:
        return mask.dtype if mask.size else np.dtype(np.uint8)
    low, high = int(mask.min()), int(mask.max())
    for dtype in STORAGE_DTYPES:
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    return mask.dtype


def _normalised(key: dict[str, Any]) -> Any:
    """``key`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(key, sort_keys=True))


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextmanager
def build_lock(folder: Path) -> Iterator[bool]:
    """Hold an exclusive lock for building ``folder``; yields whether a lock is held.

    Other processes asking for the same folder wait here until the holder is done.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield False
        return
    with open(folder.parent / f".{folder.name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (some network mounts)
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class DecodedCache:
    """Read access to one built cache (see the module docstring).

    Built by :meth:`build`, found again by :meth:`open`. The memory maps are opened on the
    first :meth:`read` in each process and never pickled, so a DataLoader worker (forked or
    spawned) receives only the small index and maps the files itself.

    Args:
        folder: the cache folder.
        entries: per sample ``[H, W, C, image offset, mask offset, stored dtype, dtype]``.
    """

    def __init__(self, folder: Path, entries: list[list[Any]]) -> None:
        self.folder = Path(folder)
        self.entries = entries
        self._images: np.ndarray | None = None
        self._masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self) -> dict[str, Any]:
        # pickling a memmap would copy the whole split into every worker
        return {**self.__dict__, "_images": None, "_masks": None}

    @classmethod
    def open(cls, folder: Path, key: dict[str, Any]) -> DecodedCache | None:
        """The cache in ``folder`` if it was built from ``key`` and is whole, else ``None``."""
        try:
            index = json.loads((Path(folder) / INDEX).read_text())
            whole = (
                index.get("key") == _normalised(key)
                and (Path(folder) / IMAGES).stat().st_size == index["image_bytes"]
                and (Path(folder) / MASKS).stat().st_size == index["mask_bytes"]
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return cls(folder, index["entries"]) if whole else None

    @classmethod
    def build(
        cls,
        folder: Path,
        key: dict[str, Any],
        samples: Iterable[tuple[np.ndarray, np.ndarray]],
        remove_stale: bool = False,
    ) -> DecodedCache:
        """Write ``samples`` (image uint8 ``[H, W, 3]``, mask ``[H, W]``) as the cache ``folder``.

        Args:
            folder: the cache folder to publish.
            key: what the samples were decoded from (stored; :meth:`open` compares it).
            samples: every sample in index order.
            remove_stale: first delete the temporary folders of earlier builds of ``folder``
                (killed ones); only safe while holding :func:`build_lock`.

        Raises:
            ValueError: an image is not uint8 ``[H, W, 3]`` or its mask not ``[H, W]``.
            Whatever iterating ``samples`` raises; the temporary folder is removed first.
        """
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        for stale in folder.parent.glob(f".{folder.name}.*.tmp") if remove_stale else ():
            shutil.rmtree(stale, ignore_errors=True)
        temporary = folder.parent / f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        temporary.mkdir()
        try:
            entries = []
            with open(temporary / IMAGES, "wb") as images, open(temporary / MASKS, "wb") as masks:
                for image, mask in samples:
                    if image.dtype != np.uint8 or image.ndim != 3 or mask.shape != image.shape[:2]:
                        raise ValueError(
                            f"the decoded cache stores uint8 [H, W, 3] images with [H, W] "
                            f"masks; got {image.dtype} {image.shape} and {mask.shape}"
                        )
                    stored = storage_dtype(mask)
                    entries.append(
                        [*image.shape, images.tell(), masks.tell(), stored.str, mask.dtype.str]
                    )
                    images.write(np.ascontiguousarray(image).tobytes())
                    masks.write(np.ascontiguousarray(mask.astype(stored)).tobytes())
                    masks.write(b"\0" * (-masks.tell() % MASK_ALIGN))
                image_bytes, mask_bytes = images.tell(), masks.tell()
            index = {
                "key": _normalised(key),
                "entries": entries,
                "image_bytes": image_bytes,
                "mask_bytes": mask_bytes,
            }
            (temporary / INDEX).write_text(json.dumps(index))
            for name in (IMAGES, MASKS, INDEX):
                _fsync(temporary / name)  # the data is on disk before the rename publishes it
            cls._publish(temporary, folder, key)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        return cls(folder, entries)

    @classmethod
    def _publish(cls, temporary: Path, folder: Path, key: dict[str, Any]) -> None:
        """Rename ``temporary`` to ``folder`` in one step, replacing a damaged ``folder``."""
        try:
            os.rename(temporary, folder)
            return
        except OSError:
            if not folder.exists():
                raise
        if cls.open(folder, key) is not None:  # built meanwhile by a process without the lock
            shutil.rmtree(temporary, ignore_errors=True)
            return
        aside = folder.parent / f".{folder.name}.{os.getpid()}.damaged.tmp"
        os.rename(folder, aside)
        os.rename(temporary, folder)
        shutil.rmtree(aside, ignore_errors=True)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._images is None or self._masks is None:
            # plain ndarray views of read-only maps (np.asarray drops the memmap subclass)
            self._images = np.asarray(np.memmap(self.folder / IMAGES, np.uint8, mode="r"))
            self._masks = np.asarray(np.memmap(self.folder / MASKS, np.uint8, mode="r"))
        return self._images, self._masks

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index``: image uint8 ``[H, W, 3]`` (a read-only view of the map, like a
        decoded PIL array) and mask ``[H, W]`` in the dtype it was stored from (a copy)."""
        images, masks = self._arrays()
        height, width, channels, image_at, mask_at, stored, dtype = self.entries[index]
        image = images[image_at : image_at + height * width * channels]
        stored = np.dtype(stored)
        mask = masks[mask_at : mask_at + height * width * stored.itemsize].view(stored)
        return image.reshape(height, width, channels), mask.reshape(height, width).astype(dtype)

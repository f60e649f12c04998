"""Reading a local geotagged corpus: its layouts and its rows.

`PRESETS` names the published layouts (a CSV per split and an image
folder); `CorpusReader` yields a split's usable rows with their images
and counts every skipped row by reason. The `geotagged_images` tfds builder
and the features extraction (`gv.data.features`) both read through it, so
they keep and skip exactly the same rows. No tensorflow-datasets here.
"""

import collections
import concurrent.futures
import csv
import dataclasses
import hashlib
import itertools
import os
import threading

import numpy as np

LABELS = ("country", "region", "sub_region", "city")
_INDEX_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Preset:
    """Column layout of a geotagged-image corpus.

    Attributes:
        csv: CSV file name per split (`{split}` is replaced).
        splits: split names.
        id: column of the image id / relative path.
        lat, lon: coordinate columns (degrees).
        image: image path template, relative to the manual dir (`{id}`,
            `{split}`); when that file is missing, the image is looked up
            by file name anywhere under `image_root`.
        image_root: folder searched by file name.
        labels: map of our label names to CSV columns.
    """

    csv: str
    splits: tuple
    id: str
    lat: str
    lon: str
    image: str
    image_root: str
    labels: dict = dataclasses.field(default_factory=dict)


def _geoestimation(csv_name, split):
    """A metadata CSV of TIBHannover's GeoEstimation (`IMG_ID, LAT, LON`)."""
    return Preset(
        csv=csv_name,
        splits=(split,),
        id="IMG_ID",
        lat="LAT",
        lon="LON",
        image="images/{id}",
        image_root="images",
    )


# OSV5M: the Hugging Face release (train.csv / test.csv, images/<split>/).
# Im2GPS3k, YFCC26k/4k, MP-16: the metadata CSVs of TIBHannover's
# GeoEstimation (`IMG_ID, AUTHOR, LAT, LON, ...`), as used by GeoCLIP.
PRESETS = {
    "osv5m": Preset(
        csv="{split}.csv",
        splits=("train", "test"),
        id="id",
        lat="latitude",
        lon="longitude",
        image="images/{split}/{id}.jpg",
        image_root="images",
        labels={
            "country": "country",
            "region": "region",
            "sub_region": "sub-region",
            "city": "city",
        },
    ),
    "im2gps3k": _geoestimation("im2gps3k_places365.csv", "test"),
    "yfcc26k": _geoestimation("yfcc25600_places365.csv", "test"),
    "yfcc4k": _geoestimation("yfcc4k_places365.csv", "test"),
    "mp16": _geoestimation("mp16_places365.csv", "train"),
}


def corpus_fingerprint(preset, manual_dir):
    """10 hex digits identifying a corpus folder and the state of its CSVs.

    Hashes the folder's absolute path and, for each CSV the preset reads,
    its name, size and modification time (nanoseconds).
    """
    root = os.path.realpath(os.fspath(manual_dir))
    digest = hashlib.sha1(root.encode("utf-8"))
    spec = PRESETS[preset]
    for split in spec.splits:
        path = os.path.join(root, spec.csv.format(split=split))
        if os.path.isfile(path):
            stat = os.stat(path)
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:10]


class CorpusReader:
    """The usable rows of a corpus in the layout of one of `PRESETS`.

    Rows whose coordinate is missing or out of range, or whose image is
    missing, ambiguous or unreadable, are skipped and counted per reason.

    Args:
        preset: a key of `PRESETS`.
        root: the corpus folder.
        image_size: int or None. Resize images to a square of this many
            pixels (bilinear); None keeps them as they are.
    """

    def __init__(self, preset, root, image_size=None):
        if preset not in PRESETS:
            raise ValueError(
                f"`preset` must be one of {sorted(PRESETS)}; got {preset!r}."
            )
        self.name = preset
        self.preset = PRESETS[preset]
        self.root = os.fspath(root)
        self.image_size = image_size
        self._index = None

    def csv_path(self, split):
        return os.path.join(self.root, self.preset.csv.format(split=split))

    def splits(self):
        """The preset's splits whose CSV exists, or a `FileNotFoundError`."""
        found = [
            s for s in self.preset.splits if os.path.isfile(self.csv_path(s))
        ]
        if not found:
            expected = [
                self.preset.csv.format(split=s) for s in self.preset.splits
            ]
            raise FileNotFoundError(
                f"No CSV of the '{self.name}' preset in manual_dir "
                f"{self.root!r}: expected one of {expected}."
            )
        return found

    def find_image(self, split, image_id, named):
        """`(path, None)`, or `(None, reason)` when no image can be used.

        A row's image is at the path its preset names. If it is not there,
        a file of the same name anywhere under the image root is taken
        (corpora are often re-sharded), unless that name is ambiguous or
        the file is the named image of another row (`named()`, read from
        the CSV only when a fallback is needed): a row never borrows another
        row's image.
        """
        preset = self.preset
        path = os.path.join(
            self.root, preset.image.format(id=image_id, split=split)
        )
        if os.path.isfile(path):
            return path, None
        index = self._image_index()
        name = os.path.basename(str(image_id))
        hits = index.get(name) or index.get(name + ".jpg") or []
        if hits:
            taken = named()
            hits = [h for h in hits if os.path.normpath(h) not in taken]
        if len(hits) > 1:
            return None, "ambiguous_image"
        return (hits[0], None) if hits else (None, "missing_image")

    def _image_index(self):
        """File name -> paths under the image root (built on first use,
        by one thread)."""
        with _INDEX_LOCK:
            return self._build_image_index()

    def _build_image_index(self):
        if self._index is None:
            index = collections.defaultdict(list)
            root = os.path.join(self.root, self.preset.image_root)
            for folder, _, files in os.walk(root):
                for f in files:
                    index[f].append(os.path.join(folder, f))
            self._index = index
        return self._index

    def read_image(self, path):
        """The image as uint8 RGB `(H, W, 3)`, resized if asked."""
        from PIL import Image

        with Image.open(path) as img:
            img = img.convert("RGB")
            if self.image_size:
                size = (self.image_size, self.image_size)
                img = img.resize(size, Image.BILINEAR)
            return np.asarray(img)

    def _named_paths(self, split):
        """The image path every row of the CSV names (normalised)."""
        preset = self.preset
        with open(self.csv_path(split), newline="", encoding="utf-8") as f:
            return {
                os.path.normpath(
                    os.path.join(
                        self.root, preset.image.format(id=i, split=split)
                    )
                )
                for i in (row.get(preset.id) for row in csv.DictReader(f))
                if i
            }

    def csv_rows(self, split):
        """`(n, row)` of every CSV row (`n` from 0), header checked."""
        path, preset = self.csv_path(split), self.preset
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            needed = [preset.id, preset.lat, preset.lon]
            missing = [c for c in needed if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(
                    f"{path!r} must start with a header naming the columns "
                    f"{needed} of the '{self.name}' preset; missing "
                    f"{missing} in the first line {reader.fieldnames}."
                )
            yield from enumerate(reader)

    def row_offsets(self, split, every):
        """Byte offsets of the CSV rows `0, every, 2 * every, ...` and the
        number of rows, in one pass (`rows(..., start_offset=...)` then
        reads a range without the rows before it). Assumes one row per
        line (no line breaks inside quoted fields); blank lines are not
        rows, as for `csv.DictReader`."""
        offsets, n = [], 0
        with open(self.csv_path(split), "rb") as f:
            f.readline()  # the header
            while True:
                pos = f.tell()
                line = f.readline()
                if not line:
                    break
                if not line.strip(b"\r\n"):
                    continue
                if n % every == 0:
                    offsets.append(pos)
                n += 1
        return offsets, n

    def _csv_rows_from(self, split, start, offset):
        import io

        with open(self.csv_path(split), newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        with open(self.csv_path(split), "rb") as raw:
            raw.seek(offset)
            text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
            yield from enumerate(csv.DictReader(text, fieldnames=header), start)

    def count_rows(self, split):
        """The number of CSV rows (usable or not) of `split`."""
        return sum(1 for _ in self.csv_rows(split))

    def examples(self, split, skipped=None):
        """`(n, example)` of the usable rows of `split` (`n`: CSV row).

        `example`: `image` (uint8), `gps` (float32 latitude, longitude),
        `id` and the `LABELS` (str). Skipped rows are counted by reason in
        the `collections.Counter` `skipped`.
        """
        skipped = collections.Counter() if skipped is None else skipped
        for n, example, reason in self.rows(split):
            if reason:
                skipped[reason] += 1
            else:
                yield n, example

    def rows(
        self,
        split,
        include=None,
        start=0,
        start_offset=None,
        stop=None,
        workers=1,
        transform=None,
    ):
        """`(n, example, None)` or `(n, None, reason)` for every CSV row.

        Rows `n` for which `include(n)` is False are passed over unread
        (no image is opened). With `start_offset` (from `row_offsets`),
        reading begins at row `start` at that byte offset; `stop` ends
        before row `stop`. `transform(image)`, when given, is applied to
        each image where it is read. With `workers > 1`, images are read
        (and transformed) by that many threads, a bounded window of rows
        ahead, in the CSV's order. See `examples` for `example`.
        """
        named_paths = []  # read on the first row whose image is elsewhere
        lock = threading.Lock()

        def named():
            with lock:
                if not named_paths:
                    named_paths.append(self._named_paths(split))
            return named_paths[0]

        rows = (
            self.csv_rows(split)
            if start_offset is None
            else self._csv_rows_from(split, start, start_offset)
        )
        wanted = (
            (n, row)
            for n, row in itertools.takewhile(
                lambda item: stop is None or item[0] < stop, rows
            )
            if include is None or include(n)
        )

        def one(item):
            n, row = item
            example, reason = self._example(split, row, named)
            if example is not None and transform is not None:
                example["image"] = transform(example["image"])
            return n, example, reason

        if workers <= 1:
            yield from map(one, wanted)
            return
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            window = collections.deque()
            for item in wanted:
                window.append(pool.submit(one, item))
                if len(window) >= 4 * workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()

    def _example(self, split, row, named):
        """`(example, None)` for a usable row, else `(None, reason)`."""
        preset = self.preset
        try:
            lat, lon = float(row[preset.lat]), float(row[preset.lon])
        except (KeyError, TypeError, ValueError):
            return None, "bad_coordinate"
        if not (abs(lat) <= 90 and abs(lon) <= 180):  # NaN too
            return None, "out_of_range_coordinate"
        image_id = row.get(preset.id)
        if not image_id:
            return None, "missing_image"
        image_path, reason = self.find_image(split, image_id, named)
        if reason:
            return None, reason
        try:
            image = self.read_image(image_path)
        except Exception:  # PIL raises many types on bad files
            return None, "unreadable_image"
        return {
            "image": image,
            "gps": np.array([lat, lon], np.float32),
            "id": str(image_id),
            **{
                k: str(row.get(preset.labels.get(k, ""), "") or "")
                for k in LABELS
            },
        }, None

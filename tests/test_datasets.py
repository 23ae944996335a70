"""Dataset readers on tiny synthetic copies of each official format (offline, CPU)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipcbm.pipeline import classnames
from clipcbm.pipeline.datasets import (
    DATASETS,
    DatasetError,
    ImageDataset,
    UnreadableImageError,
    UnsafePickleError,
    build_dataset,
)
from clipcbm.pipeline.datasets import cifar as cifar_mod
from clipcbm.pipeline.datasets import download as dl
from tests._dataset_factories import (
    color,
    make_cifar10,
    make_cifar100,
    make_cifar_archive,
    make_csv,
    make_cub,
    make_imagefolder,
    make_imagenet,
    make_places365,
    write_image,
)

# --- built-in class lists ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "n"),
    [("cifar10", 10), ("cifar100", 100), ("cub200", 200), ("places365", 365), ("imagenet", 1000)],
)
def test_builtin_lists_have_official_length_and_unique_names(name, n):
    names = classnames.builtin_classes(name)
    assert len(names) == n == len(classnames.official_labels(name))
    assert len({c.casefold() for c in names}) == n
    assert all(c == c.strip() and c and "_" not in c for c in names)


def test_builtin_names_are_prompt_ready():
    assert classnames.builtin_classes("cub200")[0] == "Black footed Albatross"
    places = classnames.builtin_classes("places365")
    assert places[0] == "airfield"
    assert places[classnames.official_labels("places365").index("/b/bakery/shop")] == "bakery shop"
    assert classnames.builtin_classes("cifar100")[1] == "aquarium fish"
    imagenet = classnames.builtin_classes("imagenet")
    assert imagenet[:3] == ["tench", "goldfish", "great white shark"]
    # OpenAI's list repeats these two names; WordNet lemmas tell them apart
    assert [imagenet[i] for i in (657, 744, 836, 837)] == [
        "missile",
        "projectile",
        "sunglass",
        "sunglasses",
    ]


def test_builtin_files_keep_official_numbering():
    wnids = classnames.imagenet_wnids()
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141"
    cub = (Path(classnames.__file__).parent / "cub200.txt").read_text().splitlines()
    assert [line.split(" ")[0] for line in cub] == [str(i) for i in range(1, 201)]
    assert all(line.split(" ")[1].startswith(f"{i:03d}.") for i, line in enumerate(cub, 1))
    places = (Path(classnames.__file__).parent / "places365.txt").read_bytes()
    assert hashlib.md5(places).hexdigest() == "06c963b85866bd0649f97cb43dd16673"  # official file
    with pytest.raises(ValueError, match="no built-in class list 'mnist'"):
        classnames.builtin_classes("mnist")


def test_disambiguate_keeps_unique_names_and_splits_duplicates():
    names = ["missile", "cat", "missile", "Cat", "dog"]
    alts = [["missile"], [], ["projectile", "missile"], [], []]
    assert classnames.disambiguate(names, alts) == [
        "missile",
        "cat",
        "projectile",
        "Cat (2)",
        "dog",
    ]
    assert classnames.disambiguate(["a", "a", "a"]) == ["a", "a (2)", "a (3)"]
    assert classnames.disambiguate(["a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="2 names but 1 alternative"):
        classnames.disambiguate(["a", "b"], [[]])


# --- CIFAR ----------------------------------------------------------------------------------


def test_cifar10_splits_ids_labels_and_pixels(tmp_path):
    root = make_cifar10(tmp_path, n_train=12, n_test=5)
    train = build_dataset("cifar10", root, "train")
    test = build_dataset("cifar10", root, "test")
    assert (len(train), len(test)) == (12, 5)
    assert train.ids[:3] == ["00000", "00001", "00002"] and train.ids[-1] == "00011"
    assert train.labels.dtype == np.int64 and train.labels.tolist() == [i % 10 for i in range(12)]
    assert train.classes == classnames.builtin_classes("cifar10")
    assert (train.split, train.source_split, test.source_split) == ("train", "train", "test")
    # rows are channel-planar: pixel (y, x) of channel c sits at c * 1024 + y * 32 + x
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        row = pickle.load(f, encoding="bytes")[b"data"][1]
    image = train.load(1)
    assert image.mode == "RGB" and image.size == (32, 32)
    assert image.getpixel((5, 2)) == tuple(int(row[c * 1024 + 2 * 32 + 5]) for c in range(3))


def test_cifar_reads_python2_pickles_like_the_official_files(tmp_path):
    make_cifar10(tmp_path, n_train=6, n_test=3, python2=True)
    blob = (tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes()
    assert b"cnumpy.core.multiarray\n_reconstruct" in blob and b"U\x04data" in blob
    test = build_dataset("cifar10", tmp_path, "test")
    assert test.labels.tolist() == [0, 1, 2] and test.classes[0] == "airplane"
    row = pickle.loads(blob, encoding="latin1")["data"][2]
    assert test.load(2).getpixel((31, 31)) == tuple(int(row[c * 1024 + 1023]) for c in range(3))


def test_cifar100_uses_fine_labels_and_accepts_the_batch_folder_as_root(tmp_path):
    make_cifar100(tmp_path, n_train=7, n_test=3)
    ds = build_dataset("cifar100", tmp_path / "cifar-100-python", "train")
    assert ds.labels.tolist() == list(range(7))  # coarse labels would be 0, 0, 0, ...
    assert len(ds.classes) == 100 and ds.classes[1] == "aquarium fish"


def test_cifar_missing_root_names_the_expected_layout(tmp_path):
    (tmp_path / "something_else").mkdir()
    with pytest.raises(
        DatasetError, match=r"cifar-10-batches-py/data_batch_1 .*--download.*something_else"
    ):
        build_dataset("cifar10", tmp_path, "train")
    with pytest.raises(DatasetError, match="does not exist"):
        build_dataset("cifar10", tmp_path / "nope", "train")


def test_cifar_incomplete_folder_and_wrong_meta_are_refused(tmp_path):
    make_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    meta = folder / "batches.meta"
    with open(meta, "wb") as f:
        names = [b"plane", *[s.encode() for s in classnames.official_labels("cifar10")[1:]]]
        pickle.dump({b"label_names": names}, f, protocol=2)
    with pytest.raises(
        DatasetError, match="class 0 is 'plane', the official cifar10 list has 'airplane'"
    ):
        build_dataset("cifar10", tmp_path, "train")
    (folder / "test_batch").unlink()
    with pytest.raises(DatasetError, match="lacks test_batch"):
        build_dataset("cifar10", tmp_path, "test")


class _Exploit:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    make_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Exploit(marker), b"labels": []}, f)
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle (posix|nt)\.system"):
        build_dataset("cifar10", tmp_path, "train")
    assert not marker.exists()
    payload = pickle.dumps(__import__("collections").OrderedDict(a=1))
    with pytest.raises(UnsafePickleError, match="collections.OrderedDict"):
        cifar_mod.RestrictedUnpickler(io.BytesIO(payload)).load()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_restricted_unpickler_reads_numpy_arrays(protocol):
    data = {
        b"data": np.arange(6, dtype=np.uint8).reshape(2, 3),
        b"n": np.int64(7),
        b"labels": [1, 2],
    }
    blob = pickle.dumps(data, protocol=protocol)
    got = cifar_mod.RestrictedUnpickler(io.BytesIO(blob), encoding="latin1").load()
    np.testing.assert_array_equal(got[b"data"], data[b"data"])
    assert got[b"n"] == 7 and got[b"labels"] == [1, 2]


def _fake_fetch(source: Path):
    def fetch(url: str, dest: Path) -> None:
        shutil.copyfile(source, dest)

    return fetch


def test_download_with_wrong_md5_is_refused_before_extraction(tmp_path, monkeypatch):
    archive = make_cifar_archive(tmp_path / "build", tmp_path / "cifar-10-python.tar.gz")
    monkeypatch.setattr(dl, "fetch", _fake_fetch(archive))
    root = tmp_path / "data"
    with pytest.raises(DatasetError, match="md5 mismatch .*not extracted"):
        build_dataset("cifar10", root, "train", download=True)
    assert list(root.iterdir()) == []  # no archive, no temp file, nothing extracted


def test_download_with_matching_md5_extracts_and_reads(tmp_path, monkeypatch):
    archive = make_cifar_archive(tmp_path / "build", tmp_path / "cifar-10-python.tar.gz")
    monkeypatch.setattr(dl, "fetch", _fake_fetch(archive))
    spec = replace(cifar_mod.CIFAR10, md5=dl.md5sum(archive))
    monkeypatch.setitem(cifar_mod.SPECS, "cifar10", spec)
    root = tmp_path / "data"
    ds = build_dataset("cifar10", root, "test", download=True)
    assert len(ds) == 5 and (root / "cifar-10-python.tar.gz").is_file()
    assert sorted(p.name for p in root.iterdir()) == [
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
    ]
    # a second call finds the extracted folder and does not download again
    monkeypatch.setattr(dl, "fetch", None)
    assert build_dataset("cifar10", root, "test", download=True).fingerprint() == ds.fingerprint()


def test_download_failures_leave_nothing_behind(tmp_path, monkeypatch):
    def broken(url, dest):
        Path(dest).write_bytes(b"partial")
        raise OSError("connection reset")

    monkeypatch.setattr(dl, "fetch", broken)
    with pytest.raises(DatasetError, match="connection reset.*download it by hand"):
        build_dataset("cifar100", tmp_path, "train", download=True)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(DatasetError, match="exists but its md5 is .*delete the file"):
        build_dataset("cifar100", tmp_path, "train", download=True)


def test_extract_refuses_paths_leaving_the_folder(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    (tmp_path / "out").mkdir()
    with pytest.raises(DatasetError, match="refusing to extract '../evil.txt'"):
        dl.extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


# --- CUB, Places365, ImageNet -------------------------------------------------------------


@pytest.mark.parametrize("inside", [False, True])
def test_cub_official_split_and_zero_based_labels(tmp_path, inside):
    make_cub(tmp_path, classes=(0, 1, 199), per_class=3)  # ids 1..9, odd ids are train
    root = tmp_path / "CUB_200_2011" if inside else tmp_path
    train, test = build_dataset("cub200", root, "train"), build_dataset("cub200", root, "test")
    assert (len(train), len(test)) == (5, 4)
    assert train.labels.tolist() == [0, 0, 1, 199, 199]
    assert test.labels.tolist() == [0, 1, 1, 199]
    assert train.ids[0] == "001.Black_footed_Albatross/Black_footed_Albatross_0000_1.jpg"
    assert train.classes[199] == "Common Yellowthroat"
    assert train.load(0).getpixel((0, 0)) == pytest.approx(color(1), abs=3)


def test_cub_wrong_root_and_wrong_classes(tmp_path):
    with pytest.raises(DatasetError, match=r"cub200: expected .*images\.txt.*CUB_200_2011"):
        build_dataset("cub200", tmp_path, "train")
    make_cub(tmp_path)
    classes = tmp_path / "CUB_200_2011" / "classes.txt"
    classes.write_text("1 001.Albatross\n")
    with pytest.raises(DatasetError, match="lists 1 classes, the official cub200 list has 200"):
        build_dataset("cub200", tmp_path, "train")


@pytest.mark.parametrize("large", [False, True])
def test_places365_train_and_val(tmp_path, large):
    make_places365(tmp_path, n_train=4, n_test=3, large=large)
    train, test = (
        build_dataset("places365", tmp_path, "train"),
        build_dataset("places365", tmp_path, "test"),
    )
    prefix = "data_large" if large else "data_256"
    assert train.ids[0] == f"{prefix}/a/airfield/00000001.jpg"
    assert train.labels.tolist() == [0, 3, 6, 9]
    assert (test.split, test.source_split) == ("test", "val")
    assert test.labels.tolist() == [364, 363, 362]
    assert test.ids[2] == f"{'val_large' if large else 'val_256'}/Places365_val_00000003.jpg"
    assert test.load(2).getpixel((3, 3)) == pytest.approx(color(102), abs=3)


def test_places365_missing_parts_are_named(tmp_path):
    with pytest.raises(
        DatasetError, match=r"places365_train_standard\.txt .*data_256/ or .*data_large/"
    ):
        build_dataset("places365", tmp_path, "train")
    make_places365(tmp_path, categories=False)  # the category list is optional
    assert len(build_dataset("places365", tmp_path, "train")) == 4
    shutil.rmtree(tmp_path / "val_256")
    with pytest.raises(DatasetError, match=r"places365_val\.txt .*val_256/"):
        build_dataset("places365", tmp_path, "test")


def test_imagenet_standard_indices_for_a_subset_of_classes(tmp_path):
    make_imagenet(tmp_path, class_indices=(1, 500, 999), per_class=2)
    train, test = (
        build_dataset("imagenet", tmp_path, "train"),
        build_dataset("imagenet", tmp_path, "test"),
    )
    assert train.labels.tolist() == [1, 1, 500, 500, 999, 999]
    assert (test.source_split, test.ids[0]) == ("val", "val/n01443537/ILSVRC2012_val_00000007.JPEG")
    assert train.classes[1] == "goldfish" and len(train.classes) == 1000


def test_imagenet_unknown_wnid_and_flat_val_are_errors(tmp_path):
    make_imagenet(tmp_path, class_indices=(0,), per_class=1)
    write_image(tmp_path / "train" / "n99999999" / "x.JPEG")
    with pytest.raises(DatasetError, match=r"n99999999 is not one of the 1000 ILSVRC-2012 wnids"):
        build_dataset("imagenet", tmp_path, "train")
    shutil.rmtree(tmp_path / "val")
    write_image(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(
        DatasetError, match="holds 1 images directly: sort them into one folder per class"
    ):
        build_dataset("imagenet", tmp_path, "test")


# --- imagefolder and csv ------------------------------------------------------------------


def test_imagefolder_extensions_order_and_shared_class_index(tmp_path):
    make_imagefolder(tmp_path, classes=("cat", "dog"), splits=("train",), per_class=2)
    make_imagefolder(tmp_path, classes=("dog",), splits=("test",), per_class=1)
    write_image(tmp_path / "train" / "cat" / "UPPER.JPG")
    write_image(tmp_path / "train" / "cat" / "b.PnG")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "train" / "cat" / "._hidden.png")
    train, test = (
        build_dataset("imagefolder", tmp_path, "train"),
        build_dataset("imagefolder", tmp_path, "test"),
    )
    assert train.ids == [
        "train/cat/000.png",
        "train/cat/001.png",
        "train/cat/UPPER.JPG",
        "train/cat/b.PnG",
        "train/dog/000.png",
        "train/dog/001.png",
    ]
    assert train.labels.tolist() == [0, 0, 0, 0, 1, 1]
    assert test.classes == ["cat", "dog"] and test.labels.tolist() == [1]  # dog keeps index 1


def test_imagefolder_classes_file_and_missing_split(tmp_path):
    make_imagefolder(tmp_path, classes=("cat", "dog"))
    order = tmp_path / "classes.txt"
    order.write_text("dog\ncat\nbird\n")
    ds = build_dataset("imagefolder", tmp_path, "train", classes_file=order)
    assert ds.classes == ["dog", "cat", "bird"] and ds.labels.tolist() == [1, 1, 0, 0]
    order.write_text("dog\n")
    with pytest.raises(DatasetError, match="class folder\\(s\\) cat .* are not in"):
        build_dataset("imagefolder", tmp_path, "train", classes_file=order)
    with pytest.raises(
        DatasetError, match=r"expected .*/val/<class>/<image files>; found in .*test/, train/"
    ):
        build_dataset("imagefolder", tmp_path, "val")


def test_csv_manifest_with_names_indices_and_absolute_paths(tmp_path):
    manifest = make_csv(tmp_path / "m" / "list.csv", labels=("cat", "dog", "cat", "bird"))
    ds = build_dataset("csv", manifest, "holdout")
    assert (ds.split, ds.source_split) == ("holdout", "holdout")
    assert ds.classes == ["bird", "cat", "dog"] and ds.labels.tolist() == [1, 2, 1, 0]
    assert ds.ids[0] == "images/000.png" and ds.load(3).getpixel((0, 0)) == color(3)
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\nbird\n")
    absolute = write_image(tmp_path / "elsewhere" / "x.png", 9)
    manifest.write_text(f"path,label\nimages/000.png,1\nimages/001.png,cat\n{absolute},2\n")
    ds = build_dataset("csv", manifest, "test", classes_file=classes)
    assert ds.labels.tolist() == [1, 0, 2] and ds.load(2).getpixel((0, 0)) == color(9)
    manifest.write_text("path,label\nimages/000.png,1\nimages/001.png,3\n")
    ds = build_dataset("csv", manifest, "test")
    assert ds.classes == ["0", "1", "2", "3"] and ds.labels.tolist() == [1, 3]


def test_csv_errors_name_the_line_and_the_layout(tmp_path):
    manifest = make_csv(tmp_path / "list.csv")
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    manifest.write_text("path,label\na.png,cat\nb.png,horse\n")
    with pytest.raises(
        DatasetError, match="line 3: label 'horse' is neither a class name nor an index in 0..1"
    ):
        build_dataset("csv", manifest, "test", classes_file=classes)
    manifest.write_text("file,class\na.png,cat\n")
    with pytest.raises(
        DatasetError, match="expected a header with columns path,label, found \\['file', 'class'\\]"
    ):
        build_dataset("csv", manifest, "test")
    with pytest.raises(DatasetError, match="expected a manifest CSV file with columns path,label"):
        build_dataset("csv", tmp_path / "missing.csv", "test")


# --- loading, identity, pickling, options -------------------------------------------------


def test_unreadable_images_raise_unreadable_image_error(tmp_path):
    make_imagefolder(tmp_path, classes=("a",), splits=("train",), per_class=4, ext=".jpg")
    folder = tmp_path / "train" / "a"
    full = (folder / "000.jpg").read_bytes()
    (folder / "000.jpg").write_bytes(full[: len(full) // 2])  # truncated
    (folder / "001.jpg").write_bytes(b"\x00garbage" * 20)  # not an image
    ds = build_dataset("imagefolder", tmp_path, "train")
    (folder / "002.jpg").unlink()  # vanished after indexing
    with pytest.raises(UnreadableImageError, match=r"(?i)000\.jpg: OSError: .*truncated"):
        ds.load(0)
    with pytest.raises(UnreadableImageError, match=r"001\.jpg: UnidentifiedImageError"):
        ds.load(1)
    with pytest.raises(UnreadableImageError, match=r"002\.jpg: file not found") as info:
        ds.load(2)
    assert "not found" in info.value.reason
    assert ds.load(3).mode == "RGB"


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "I;16"])
def test_any_pixel_mode_loads_as_rgb(tmp_path, mode):
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    image = Image.new(mode, (5, 4))
    if mode == "P":
        image.info["transparency"] = 0
    image.save(folder / ("x.jpg" if mode == "CMYK" else "x.png"))
    loaded = build_dataset("imagefolder", tmp_path, "train").load(0)
    assert loaded.mode == "RGB" and loaded.size == (5, 4)


def test_fingerprint_tracks_content_not_location(tmp_path):
    make_imagefolder(tmp_path / "a")
    ds = build_dataset("imagefolder", tmp_path / "a", "train")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = build_dataset("imagefolder", tmp_path / "b", "train")
    assert moved.fingerprint() == ds.fingerprint() and len(ds.fingerprint()) == 64
    moved.labels = moved.labels[::-1].copy()
    assert moved.fingerprint() != ds.fingerprint()
    assert build_dataset("imagefolder", tmp_path / "a", "test").fingerprint() != ds.fingerprint()
    described = json.loads(json.dumps(ds.describe()))
    assert described == {
        "name": "imagefolder",
        "split": "train",
        "source_split": "train",
        "root": str(tmp_path / "a"),
        "n": 4,
        "n_classes": 2,
        "fingerprint": ds.fingerprint(),
        "id_kind": "path",
    }


def test_datasets_pickle_round_trip(tmp_path):
    made = {
        "cifar10": make_cifar10(tmp_path / "c"),
        "cub200": make_cub(tmp_path / "cub"),
        "places365": make_places365(tmp_path / "p"),
        "imagenet": make_imagenet(tmp_path / "i"),
        "imagefolder": make_imagefolder(tmp_path / "f"),
        "csv": make_csv(tmp_path / "m" / "list.csv"),
    }
    for name, root in made.items():
        ds = build_dataset(name, root, "train")
        copy = pickle.loads(pickle.dumps(ds))
        assert isinstance(copy, ImageDataset) and copy.fingerprint() == ds.fingerprint()
        np.testing.assert_array_equal(
            np.asarray(copy.load(len(copy) - 1)), np.asarray(ds.load(len(ds) - 1))
        )


def test_build_dataset_option_errors(tmp_path):
    assert set(DATASETS) == {
        "cifar10",
        "cifar100",
        "cub200",
        "places365",
        "imagenet",
        "imagefolder",
        "csv",
    }
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'; choose one of cifar10, "):
        build_dataset("mnist", tmp_path, "train")
    with pytest.raises(DatasetError, match="--download is available for cifar10, cifar100 only"):
        build_dataset("imagenet", tmp_path, "train", download=True)
    make_cifar10(tmp_path)
    with pytest.raises(DatasetError, match="cifar10 has splits 'train', 'test'.*got 'val'"):
        build_dataset("cifar10", tmp_path, "val")
    with pytest.raises(DatasetError, match="split must be a plain name"):
        build_dataset("imagefolder", tmp_path, "../x")


def test_classes_file_renames_builtin_classes(tmp_path):
    make_cifar10(tmp_path)
    names = tmp_path / "names.txt"
    names.write_text("".join(f"kind {i}\n" for i in range(10)))
    ds = build_dataset("cifar10", tmp_path, "train", classes_file=names)
    assert ds.classes[3] == "kind 3"
    names.write_text("a\nb\n")
    with pytest.raises(DatasetError, match="has 2 class names, cifar10 has 10"):
        build_dataset("cifar10", tmp_path, "train", classes_file=names)
    names.write_text("same\n" * 10)
    with pytest.raises(DatasetError, match="class names must be unique.*'same' \\(class 1\\)"):
        build_dataset("cifar10", tmp_path, "train", classes_file=names)

"""Wrong input is never used silently (issue 17, item 3): 16-bit and other non-8-bit images,
concepts and class prompts longer than the text tower's context, non-finite text embeddings."""

from __future__ import annotations

import logging
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipcbm import cli
from clipcbm.cache import open_cache, write_cache
from clipcbm.cache.errors import CacheCorruptError
from clipcbm.pipeline.datasets import UnreadableImageError
from clipcbm.pipeline.datasets.base import open_rgb, to_rgb
from clipcbm.pipeline.encoder import ClipEncoder, TextTooLongError, check_context
from tests import _dataset_factories as fx

runner = CliRunner()

# a 16-bit ramp over the whole range, and values that are not multiples of 257 (the high byte)
RAMP = np.concatenate([np.arange(256) * 257, [1, 255, 256, 0x80FF, 0xFF00, 65534]]).astype(
    np.uint16
)
GREY16 = np.tile(RAMP, (24, 1))[:, :256]  # (24, 256): every 8-bit value once per row
WANT8 = (GREY16 >> 8).astype(np.uint8)


def _cli(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


def _png16(arr: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 48-bit RGB): 0 grey, 2 RGB, 4 grey+alpha,
    6 RGBA."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))  # fmt: skip


def _save(im: Image.Image, path: Path, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt)
    return path


# ------------------------------------------------------------------------- (a) image decoding


def test_16bit_grey_png_decodes_to_its_high_byte_not_to_white(tmp_path):
    path = _save(Image.fromarray(GREY16), tmp_path / "g.png", "PNG")
    with Image.open(path) as im:
        assert im.mode == "I;16"  # what Pillow opens a 16-bit grey PNG as
        clipped = np.asarray(im.convert("RGB"))
    assert (clipped == 255).mean() > 0.99  # the bug: Pillow's own conversion clips
    rgb = np.asarray(open_rgb(path))
    assert rgb.dtype == np.uint8 and rgb.shape == (24, 256, 3)
    np.testing.assert_array_equal(rgb, np.repeat(WANT8[..., None], 3, axis=2))
    assert (rgb == 255).mean() < 0.01


def test_every_16bit_grey_mode_and_container_decodes_alike(tmp_path):
    want = np.repeat(WANT8[..., None], 3, axis=2)
    big = Image.frombytes("I;16B", (256, 24), GREY16.astype(">u2").tobytes())
    assert big.mode == "I;16B"
    np.testing.assert_array_equal(np.asarray(to_rgb(big)), want)
    # saved from I;16B, a PNG reopens as I;16; a TIFF keeps I;16; a 16-bit PGM opens as mode I
    files = [
        _save(big, tmp_path / "b.png", "PNG"),
        _save(Image.fromarray(GREY16), tmp_path / "g.tif", "TIFF"),
        tmp_path / "g.pgm",
    ]
    files[2].write_bytes(b"P5\n256 24\n65535\n" + GREY16.astype(">u2").tobytes())
    with Image.open(files[2]) as im:
        assert im.mode == "I"
    for path in files:
        np.testing.assert_array_equal(np.asarray(open_rgb(path)), want, err_msg=str(path))


def test_48bit_rgb_and_16bit_alpha_pngs_match_the_grey_decoding(tmp_path):
    """Pillow opens these as RGB/RGBA keeping the high byte; a grey picture stored as 16-bit grey
    or as 48-bit RGB gives the same pixels."""
    rgb16 = np.stack([GREY16, GREY16[:, ::-1], 65535 - GREY16], axis=-1)
    rgb8, grey8 = (rgb16 >> 8).astype(np.uint8), np.repeat(WANT8[..., None], 3, axis=2)
    cases = {
        "rgb48.png": (_png16(rgb16, 2), rgb8),
        "rgba64.png": (_png16(np.concatenate([rgb16, GREY16[..., None]], -1), 6), rgb8),
        "ga32.png": (_png16(np.stack([GREY16, GREY16], -1), 4), grey8),
        "grey48.png": (_png16(np.stack([GREY16] * 3, -1), 2), grey8),
    }
    for name, (data, want) in cases.items():
        (tmp_path / name).write_bytes(data)
        np.testing.assert_array_equal(np.asarray(open_rgb(tmp_path / name)), want, err_msg=name)
    grey = _save(Image.fromarray(GREY16), tmp_path / "grey16.png", "PNG")
    np.testing.assert_array_equal(open_rgb(grey), open_rgb(tmp_path / "grey48.png"))


@pytest.mark.parametrize(
    ("make", "mode", "what"),
    [
        (lambda: Image.fromarray(GREY16.astype(np.float32) / 65535), "F", "32-bit float"),
        (lambda: Image.fromarray(GREY16.astype(np.int32) * 1000), "I", "32-bit integer"),
        (lambda: Image.new("LAB", (8, 8), (50, 10, 20)), "LAB", "CIELAB"),
    ],
)
def test_modes_without_an_agreed_8bit_scale_are_unreadable_with_the_reason(
    tmp_path, make, mode, what
):
    path = _save(make(), tmp_path / "x.tif", "TIFF")
    with Image.open(path) as im:
        assert im.mode == mode
    with pytest.raises(UnreadableImageError) as e:
        open_rgb(path)
    reason = e.value.reason
    assert str(path) in reason and f"Pillow mode {mode!r}" in reason and what in reason
    assert "convert the file to 8-bit RGB" in reason


def test_mode_I_outside_16bit_range_is_refused():
    im = Image.fromarray(np.array([[0, 70000]], dtype=np.int32))
    im.format = "PNG"  # as if a PNG had opened as mode I
    with pytest.raises(UnreadableImageError, match="outside 0..65535"):
        to_rgb(im, "x.png")


def test_8bit_modes_convert_as_before():
    for mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"):
        im = Image.new(mode, (4, 3))
        np.testing.assert_array_equal(np.asarray(to_rgb(im)), np.asarray(im.convert("RGB")))
    p = Image.new("P", (2, 2))
    p.info["transparency"] = 0
    assert to_rgb(p).mode == "RGB"


def _embed(model, root, out, concepts, *extra):
    return _cli("embed", "--dataset", "imagefolder", "--root", root, "--out", out, "--concepts",
                concepts, "--model", model, "--device", "cpu", "--workers", "0",
                "--batch-size", "4", "--no-progress", *extra)  # fmt: skip


@pytest.fixture
def concepts(tmp_path) -> Path:
    path = tmp_path / "concepts.txt"
    path.write_text("red fur\nfour legs\nwings\nwheels\n")
    return path


def test_embed_stores_a_16bit_png_as_its_8bit_twin_and_refuses_a_float_tiff(
    tiny_clip_dir, concepts, tmp_path
):
    root = fx.make_imagefolder(tmp_path / "data")
    grey = np.tile(RAMP[:256], (48, 1)).T[:, :48]  # (256, 48) vertical ramp: crops keep detail
    twin = (grey >> 8).astype(np.uint8)
    _save(Image.fromarray(grey), root / "test" / "cat" / "000.png", "PNG")
    _save(Image.fromarray(twin).convert("RGB"), root / "test" / "cat" / "001.png", "PNG")
    _save(Image.fromarray(grey.astype(np.float32)), root / "test" / "dog" / "000.tif", "TIFF")
    out = tmp_path / "c.zarr"
    res = _embed(tiny_clip_dir, root, out, concepts)
    assert res.exit_code == 0, res.output
    with open_cache(out) as c:
        d = c.split("test")
        ids = d.ids.tolist()
        row = {i: k for k, i in enumerate(ids)}
        assert d.ok[row["test/cat/000.png"]] and d.ok[row["test/cat/001.png"]]
        np.testing.assert_allclose(d.image_emb[row["test/cat/000.png"]],
                                   d.image_emb[row["test/cat/001.png"]], atol=1e-6)  # fmt: skip
        assert not d.ok[row["test/dog/000.tif"]]
        (failure,) = c.split_attrs("test")["failures"]
    assert failure["id"] == "test/dog/000.tif"
    assert "Pillow mode 'F'" in failure["reason"] and "32-bit float" in failure["reason"]


# ------------------------------------------------------------------------- (b) text length

LONG = "x" * 10_000  # the tiny CLIP's tokenizer: one token a character, + BOS and EOS


def test_check_context_names_the_first_text_and_counts_the_rest():
    texts = ["a", LONG, "b", LONG]
    with pytest.raises(TextTooLongError) as e:
        check_context(texts, [3, 10_002, 3, 10_002], 77, truncate=False,
                      what=lambda i: f"concept {i}")  # fmt: skip
    msg = str(e.value)
    assert msg.startswith(f"concept 1 {'x' * 60!r}... has 10002 tokens, more than the model's "
                          "context of 77; shorten it or pass --truncate")  # fmt: skip
    assert msg.endswith("(keeps the first 76 tokens and EOS); 1 more text is too long")
    with pytest.raises(TextTooLongError, match="; 2 more texts are too long$"):
        check_context([LONG] * 3, [10_002] * 3, 77, truncate=False)
    assert check_context(texts, [3, 10_002, 3, 10_002], 77, truncate=True) == [1, 3]
    assert check_context(["a"], [3], 77, truncate=False) == []


def test_embed_refuses_a_too_long_concept_before_any_image(
    tiny_clip_dir, concepts, tmp_path, monkeypatch
):
    concepts.write_text(f"red fur\nfour legs\n{LONG}\nwheels\n")
    root = fx.make_imagefolder(tmp_path / "data")

    def no_images(*a, **k):
        raise AssertionError("an image was embedded before the text check")

    monkeypatch.setattr(ClipEncoder, "encode_images", no_images)
    res = _embed(tiny_clip_dir, root, tmp_path / "c.zarr", concepts)
    assert res.exit_code == 2, res.output + repr(res.exception)
    line = " ".join(res.output.split())
    assert "error: concept 2 'xxxx" in line and "..." in line
    assert "has 10002 tokens, more than the model's context of 77" in line
    assert "shorten it or pass --truncate" in line and "Traceback" not in res.output
    # refused before the cache was created: the fixed concept list simply runs
    assert not (tmp_path / "c.zarr").exists()
    monkeypatch.undo()
    concepts.write_text("red fur\nfour legs\nshort again\nwheels\n")
    res = _embed(tiny_clip_dir, root, tmp_path / "c.zarr", concepts)
    assert res.exit_code == 0, res.output


def test_embed_refuses_a_too_long_class_prompt(tiny_clip_dir, concepts, tmp_path):
    templates = tmp_path / "t.txt"
    templates.write_text("a photo of a {}.\na photo of a {} " + "very " * 20 + "big.\n")
    root = fx.make_imagefolder(tmp_path / "data")
    res = _embed(tiny_clip_dir, root, tmp_path / "c.zarr", concepts, "--templates", templates)
    assert res.exit_code == 2, res.output
    line = " ".join(res.output.split())
    assert "error: class prompt 1 (class 'cat', template 1) 'a photo of a cat very" in line
    assert "more than the model's context of 77" in line and "1 more text is too long" in line


def test_embed_truncate_cuts_with_a_warning_and_changes_the_identity(
    tiny_clip_dir, concepts, tmp_path, caplog
):
    root = fx.make_imagefolder(tmp_path / "data")
    plain = tmp_path / "plain.zarr"
    assert _embed(tiny_clip_dir, root, plain, concepts).exit_code == 0
    with open_cache(plain) as c:
        assert "truncate" not in c.metadata["identity"]  # existing caches keep their fingerprint
    # --truncate is part of what the cache is: the same --out is not silently reused
    res = _embed(tiny_clip_dir, root, plain, concepts, "--truncate")
    assert res.exit_code == 2 and "truncate" in res.output and "--overwrite" in res.output

    cut_same = "x" * 5_000 + "y" * 5_000  # the same first 75 tokens as LONG
    concepts.write_text(f"red fur\n{LONG}\n{cut_same}\nwheels\n")
    out = tmp_path / "cut.zarr"
    with caplog.at_level(logging.WARNING, logger="clipcbm.pipeline.encoder"):
        res = _embed(tiny_clip_dir, root, out, concepts, "--truncate")
    assert res.exit_code == 0, res.output
    warned = [r.getMessage() for r in caplog.records if r.name == "clipcbm.pipeline.encoder"]
    assert len(warned) == 1 and "--truncate: 2 text(s)" in warned[0]
    assert "context of 77 tokens" in warned[0]
    with open_cache(out) as c:
        assert c.metadata["identity"]["truncate"] is True
        emb = c.concept_emb()
    np.testing.assert_allclose(emb[1], emb[2], atol=1e-6)  # both cut to the first 75 x
    assert not np.allclose(emb[0], emb[1])
    # the same cut as `attribute --truncate`: BOS + the first 75 tokens + EOS
    from clipcbm.pipeline.attribution.maps import token_ids

    enc = ClipEncoder.load(str(tiny_clip_dir), device="cpu")
    ids = torch.tensor([token_ids(enc.tokenizer, LONG, 77, True)])
    with torch.inference_mode():
        feats = enc.model.get_text_features(input_ids=ids, attention_mask=torch.ones_like(ids))
    from clipcbm.pipeline.encoder import projected, unit_rows

    np.testing.assert_allclose(emb[1], unit_rows(projected(feats))[0][0].numpy(), atol=1e-5)


def test_attribute_and_embed_share_the_rule():
    """attribute's token_ids raises embed's TextTooLongError with the same message."""
    from clipcbm.pipeline.attribution.maps import token_ids

    class Tok:
        def __call__(self, text, **kw):
            return {"input_ids": [0, *range(len(text)), 1]}

    with pytest.raises(TextTooLongError, match="text 'xxx.*has 10002 tokens.*--truncate"):
        token_ids(Tok(), LONG, 77, False)
    ids = token_ids(Tok(), LONG, 77, True)
    assert len(ids) == 77 and ids[-1] == 1 and ids[0] == 0


# ------------------------------------------------------------------------- (c) text embeddings

CONCEPTS = ["red fur", "four legs", "wings", "wheels", "stripes", "a tail"]
CLASSES = ["cat", "dog", "bird"]


def _arrays(seed=0, e=8, n_train=48, n_test=24):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(CLASSES), e))

    def split(n):
        labels = rng.integers(0, len(CLASSES), n)
        return {"image_emb": centers[labels] + 0.3 * rng.normal(size=(n, e)), "labels": labels}

    return {
        "splits": {"train": split(n_train), "test": split(n_test)},
        "concepts": CONCEPTS,
        "classes": CLASSES,
        "concept_emb": rng.normal(size=(len(CONCEPTS), e)),
        "class_emb": centers,
        "shard_rows": 16,
        "chunk_rows": 8,
    }


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A healthy cache with a probe head, a CBM head and an SAE fitted on it."""
    tmp = tmp_path_factory.mktemp("text_emb")
    cache = write_cache(tmp / "c.zarr", **_arrays())
    for loss, extra in (("probe", ["--probe-max-iter", "5"]), ("sparse", ["--max-steps", "5"])):
        res = _cli("fit-head", "--cache", cache, "--out", tmp / loss, "--loss", loss,
                   "--no-progress", "--device", "cpu", *extra)  # fmt: skip
        assert res.exit_code == 0, res.output
    res = _cli("fit-sae", "--cache", cache, "--out", tmp / "sae", "--expansion", "2", "--k", "2",
               "--max-steps", "5", "--no-progress", "--device", "cpu")  # fmt: skip
    assert res.exit_code == 0, res.output
    return tmp, cache


def _commands(tmp: Path, cache: Path, out: Path) -> dict[str, list]:
    """Every stage-two command that reads the cache's text embeddings (sae-inspect names latents
    from the SAE's own table; fit-adapter and knn-eval read images only)."""
    return {
        "fit-head probe": ["fit-head", "--cache", cache, "--out", out / "h1", "--loss", "probe",
                           "--no-progress", "--device", "cpu", "--probe-max-iter", "5"],
        "fit-head sparse": ["fit-head", "--cache", cache, "--out", out / "h2", "--loss", "sparse",
                            "--no-progress", "--device", "cpu", "--max-steps", "5"],
        "cms-eval": ["cms-eval", "--cache", cache, "--split", "test", "--no-progress",
                     "--out", out / "cms"],
        "evaluate": ["evaluate", "--cache", cache, "--head", tmp / "sparse", "--out",
                     out / "ev.json"],
        "explain": ["explain", "--cache", cache, "--head", tmp / "sparse", "--index", "0",
                    "--out", out / "x.png"],
        "compare": ["compare", "--cache", cache, "--out", out / "cmp", "--no-progress",
                    "--max-steps", "5", "--method", "zero-shot", "--method", "cms"],
        "fit-sae": ["fit-sae", "--cache", cache, "--out", out / "sae", "--expansion", "2", "--k",
                    "2", "--max-steps", "5", "--no-progress", "--device", "cpu"],
        "sae-eval": ["sae-eval", "--sae", tmp / "sae", "--cache", cache, "--no-progress",
                     "--out", out / "se"],
    }  # fmt: skip


def _damage(src: Path, dst: Path, name: str, row: int, value: float) -> Path:
    """Copy the cache and set text/`name`[row, 0] = value with zarr (checksums now disagree)."""
    import zarr

    shutil.copytree(src, dst)
    arr = zarr.open_group(str(dst), mode="r+")["text"][name]
    data = arr[:]
    data[row, 0] = value
    arr[:] = data
    return dst


@pytest.mark.parametrize(
    ("name", "row", "value", "label", "kind"),
    [("concept_emb", 2, np.inf, "wings", "inf"), ("class_emb", 1, np.nan, "dog", "NaN")],
)
def test_non_finite_text_embeddings_are_refused_by_every_stage_two_command(
    fitted, tmp_path, name, row, value, label, kind
):
    tmp, healthy = fitted
    cache = _damage(healthy, tmp_path / "bad.zarr", name, row, value)
    want = f"text/{name} row {row} ('{label}') holds non-finite values ({kind})"
    for what, args in _commands(tmp, cache, tmp_path / "out").items():
        res = _cli(*args, "--no-verify")
        line = " ".join(res.output.split())
        assert res.exit_code == 2, f"{what}: {res.output} {res.exception!r}"
        assert want in line and "--overwrite" in line, f"{what}: {res.output}"
        assert "Traceback" not in res.output
        # with checksums on, the poked value is caught first as damage: also exit 2
        res = _cli(*args)
        assert res.exit_code == 2 and "text/" + name in res.output, f"{what}: {res.output}"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.safetensors"))


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_non_finite_text_with_matching_checksums_is_refused_with_verify_on(tmp_path):
    """An embed that stored inf (fp16 overflow) has consistent checksums: the value check still
    refuses it, whatever --verify says."""
    arrays = _arrays()
    arrays["concept_emb"][4, 3] = np.inf  # write_cache normalises: the row becomes NaN
    cache = write_cache(tmp_path / "c.zarr", **arrays)
    with open_cache(cache) as c, pytest.raises(CacheCorruptError, match=r"row 4 \('stripes'\)"):
        c.concept_emb()
    with open_cache(cache) as c:
        assert np.isfinite(c.class_emb()).all()
    res = _cli("cms-eval", "--cache", cache, "--split", "test", "--no-progress", "--out",
               tmp_path / "cms")  # fmt: skip
    assert res.exit_code == 2 and "text/concept_emb row 4 ('stripes')" in res.output


def test_the_check_names_the_count_when_several_rows_are_bad(tmp_path):
    arrays = _arrays()
    arrays["concept_emb"][[1, 3, 5], 0] = np.nan
    cache = write_cache(tmp_path / "c.zarr", **arrays)
    with open_cache(cache, verify=False) as c, pytest.raises(CacheCorruptError) as e:
        c.concept_emb()
    assert "row 1 ('four legs')" in str(e.value) and "3 of 6 rows" in str(e.value)

"""Reading images into uint8 H×W×3 RGB arrays, choosing image sets, and resizing them as every part
of onnxlens does."""
import glob
import struct
from pathlib import Path

import cv2
import numpy as np

from engine.errors import ImageError, InputShapeError, UsageError

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
DEFAULT_MAX_PIXELS = 50_000_000
MAX_PIXELS = DEFAULT_MAX_PIXELS  # largest image decoded (width × height); `onnxlens --max-pixels N` sets it
LAYOUTS = ("HWC", "CHW")
RESIZE_POLICIES = ("squash", "shorter-side+center-crop")


def read_image(path):
    """Read an image file (any format OpenCV decodes, any path, unicode included) as uint8 RGB.

    Gray images come back with three equal channels and alpha is dropped.

    >>> read_image("cat.png").shape
    (96, 96, 3)
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise ImageError(f"cannot read image '{path}': {err.strerror or err}; check the path") from err
    size = header_size(data[:65536].tobytes())
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise ImageError(f"image '{path}' is {size[1]}×{size[0]} ({size[0] * size[1] / 1e6:.0f} MP), above the limit of "
                         f"{MAX_PIXELS / 1e6:g} MP: shrink it, or raise the limit with onnxlens --max-pixels N")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise ImageError(f"'{path}' is not an image OpenCV can decode: pass PNG, JPEG, BMP, TIFF or WebP files")
    return np.ascontiguousarray(bgr[..., ::-1])


def header_size(head):
    """(height, width) that a PNG, JPEG, BMP or WebP file declares in its first bytes ``head``,
    read without decoding it; None for other formats or a header too short or malformed.

    >>> header_size(open("cat.png", "rb").read(64))
    (96, 96)
    """
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return height, width
    if head[:2] == b"BM" and len(head) >= 26:
        width, height = struct.unpack("<ii", head[18:26])
        return abs(height), abs(width)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        return _webp_size(head)
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(head)
    return None


def _webp_size(head):
    chunk = head[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(head[27:30], "little"), 1 + int.from_bytes(head[24:27], "little")
    if chunk == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return 1 + ((bits >> 14) & 0x3FFF), 1 + (bits & 0x3FFF)
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", head[26:30])
        return height & 0x3FFF, width & 0x3FFF
    return None


def _jpeg_size(head):
    """The size in a JPEG's first start-of-frame segment (markers C0–CF but C4, C8, CC)."""
    at = 2
    while at + 9 <= len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", head[at + 5:at + 9])
            return height, width
        if marker in (0x01,) or 0xD0 <= marker <= 0xD9:  # markers without a length
            at += 2
            continue
        at += 2 + struct.unpack(">H", head[at + 2:at + 4])[0]
    return None


def image_files(specs, recursive=False):
    """The image files named by ``specs``: files, folders (their image files; with ``recursive``,
    those of every sub-folder too) and glob patterns (``**`` spans folders), in the order given,
    each folder or pattern sorted (a file named twice is taken twice, as given). The one rule by which every command
    chooses its images; raises UsageError naming a spec that matches no image.

    >>> image_files(["dog.png", ".", "*.png"])
    [PosixPath('dog.png'), PosixPath('cat.png'), PosixPath('dog.png'), PosixPath('cat.png'), PosixPath('dog.png')]
    """
    specs = [specs] if isinstance(specs, (str, Path)) else list(specs)
    found = []
    for spec in map(str, specs):
        path = Path(spec)
        if path.is_dir():
            candidates = path.rglob("*") if recursive else path.iterdir()
            chosen = sorted(p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not chosen:
                more = "" if recursive else " (recursive=True adds its sub-folders)"
                raise UsageError(f"no image files in folder '{spec}'{more}: it needs {', '.join(IMAGE_SUFFIXES)} files")
        elif glob.has_magic(spec) and not path.exists():
            chosen = sorted(Path(p) for p in glob.glob(spec, recursive=True)
                            if p.lower().endswith(IMAGE_SUFFIXES) and Path(p).is_file())
            if not chosen:
                raise UsageError(f"no image file matches '{spec}': check the pattern (quote it so the shell "
                                 "leaves it to onnxlens)")
        else:
            chosen = [path]  # a file (read_image says clearly if it is missing or not an image)
        found += chosen
    return found


def mask_files(images, specs, recursive=False):
    """One mask file per image, chosen from ``specs`` (as :func:`image_files`): the mask with the
    image's file name (any image suffix, optionally ending ``_mask``), else the masks in order when
    there are as many as images. Raises UsageError otherwise.

    >>> Path("masks").mkdir()
    >>> for name in ("cat.png", "dog_mask.png"): _ = cv2.imwrite(f"masks/{name}", np.zeros((8, 8), np.uint8))
    >>> mask_files(["cat.png", "dog.png"], ["masks/"])
    [PosixPath('masks/cat.png'), PosixPath('masks/dog_mask.png')]
    """
    masks = image_files(specs, recursive)
    by_stem = {}
    for mask in masks:
        by_stem.setdefault(mask.stem.removesuffix("_mask"), mask)
    stems = [Path(image).stem for image in images]
    if all(stem in by_stem for stem in stems):
        return [by_stem[stem] for stem in stems]
    if len(masks) == len(images):
        return masks
    missing = next(stem for stem in stems if stem not in by_stem)
    raise UsageError(f"{len(images)} images but {len(masks)} masks, and none named like '{missing}': give one "
                     "mask per image, named as the image (or NAME_mask.png)")


def image_list(images, layout="HWC"):
    """A path, an image, a batch of images or a sequence of paths and images, as a list of paths
    and uint8 H×W×C arrays. Images may be numpy arrays, torch tensors (anything with
    ``.detach().cpu().numpy()``, not imported) or PIL images; ``layout`` says where arrays and
    tensors keep their channels: "HWC" (H×W×C, N×H×W×C) or "CHW" (C×H×W, N×C×H×W, as torch does).

    >>> len(image_list(np.zeros((4, 8, 8, 3), np.uint8)))
    4
    >>> image_list(np.zeros((2, 3, 8, 8), np.uint8), layout="CHW")[0].shape
    (8, 8, 3)
    """
    if layout not in LAYOUTS:
        raise UsageError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if isinstance(images, (str, Path)):
        return [images]
    array = _as_array(images)
    if array is not None:
        if array.ndim == 4:
            return [_to_hwc(a, layout) for a in array]
        return [_to_hwc(array, layout)]  # one image; a 2-D or 5-D array is reported by as_rgb
    return [item if isinstance(item, (str, Path)) else _to_hwc(_as_array(item, strict=True), layout)
            for item in images]


def _as_array(value, strict=False):
    """``value`` as a numpy array when it is an array, a tensor or a PIL image, else None (strict: the
    value itself, for as_rgb to report)."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, duck-typed
        return value.detach().cpu().numpy()
    if hasattr(value, "getbands") and hasattr(value, "convert"):  # a PIL image
        return np.asarray(value.convert("RGB"))
    return value if strict else None


def _to_hwc(array, layout):
    array = np.asarray(array)
    if layout == "CHW" and array.ndim == 3:
        return np.ascontiguousarray(array.transpose(1, 2, 0))
    return array


def as_rgb(image):
    """Return ``image`` as a uint8 H×W×3 RGB array: a path is read, an array is checked.

    >>> as_rgb(np.zeros((8, 8, 3), np.uint8)).shape
    (8, 8, 3)
    """
    if isinstance(image, (str, Path)):
        return read_image(image)
    array = np.asarray(image)
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:
        return array
    shown = "×".join(map(str, array.shape)) or "()"
    if array.ndim == 2:
        hint = "a 2-D array is a grey image: make it H×W×3 with np.repeat(a[..., None], 3, axis=2)"
    elif array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[2] not in (1, 3):
        hint = "it looks channels-first: pass layout=\"CHW\""
    elif array.dtype.kind == "f":
        hint = "convert float images to uint8, e.g. (x * 255).round().clip(0, 255).astype(np.uint8)"
    else:
        hint = "pass uint8 H×W×3 RGB arrays (layout=\"CHW\" for C×H×W), PIL images or file paths"
    raise InputShapeError(f"images are uint8 H×W×3 RGB arrays or file paths, got a {array.dtype} array of shape "
                          f"{shown}: {hint}")


def resize(image, size, policy="squash"):
    """Resize an H×W×C image to ``size=(H, W)``: INTER_AREA when shrinking, else INTER_LINEAR.

    ``policy``: "squash" scales each axis on its own; "shorter-side+center-crop" scales both
    axes by one factor so the image covers ``size``, then crops the centre (torchvision's
    Resize + CenterCrop; the part of the image it keeps is :func:`visible_part`).

    >>> resize(np.zeros((96, 128, 3), np.uint8), (64, 64), policy="shorter-side+center-crop").shape
    (64, 64, 3)
    """
    if policy not in RESIZE_POLICIES:
        raise UsageError(f"unknown resize policy '{policy}': use {' or '.join(RESIZE_POLICIES)}")
    if policy != "squash":
        image = visible_part(image, size)
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    shrinking = height <= image.shape[0] and width <= image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def visible_part(image, size, policy="shorter-side+center-crop"):
    """The centred part of ``image`` with the aspect ratio of ``size`` (H, W): what a model sees of
    it under ``policy`` (the whole image for "squash" or no ``size``). Explanations are drawn over it.

    >>> visible_part(np.zeros((100, 200, 3), np.uint8), (64, 64)).shape
    (100, 100, 3)
    """
    if policy == "squash" or size is None:
        return image
    height, width = image.shape[:2]
    scale = max(size[0] / height, size[1] / width)
    keep_h, keep_w = min(height, round(size[0] / scale)), min(width, round(size[1] / scale))
    top, left = (height - keep_h) // 2, (width - keep_w) // 2
    return image[top:top + keep_h, left:left + keep_w]

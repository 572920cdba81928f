"""Real image conversions for the sandbox, shared by every provider dialect. Pillow does the work
so that outputs are genuine files (a PDF starts with %PDF, a JPEG opens in any viewer), and the
failure modes a provider shows are reproduced: an unreadable input fails the conversion, and a
format pair the sandbox cannot convert is reported as unsupported rather than faked."""

from __future__ import annotations

import io
from collections.abc import Mapping

from PIL import Image, ImageSequence, UnidentifiedImageError

CONVERSION_FAILED = "CONVERSION_FAILED"
UNSUPPORTED_CONVERSION = "UNSUPPORTED_CONVERSION"

# File extension -> Pillow format name.
INPUT_FORMATS = {
    "png": "PNG",
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "webp": "WEBP",
    "gif": "GIF",
    "tif": "TIFF",
    "tiff": "TIFF",
    "bmp": "BMP",
}
OUTPUT_FORMATS = {**INPUT_FORMATS, "pdf": "PDF"}

# Modes each writer accepts; anything else is converted first.
_WRITABLE_MODES = {
    "PNG": {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"},
    "JPEG": {"L", "RGB", "CMYK"},
    "WEBP": {"RGB", "RGBA"},
    "GIF": {"1", "L", "P"},
    "TIFF": {"1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "I;16", "F"},
    "BMP": {"1", "L", "P", "RGB", "RGBA"},
    "PDF": {"1", "L", "RGB", "CMYK"},
}
# Formats whose writer keeps every frame of an animated or multi-page input.
_MULTI_FRAME = {"GIF", "TIFF", "WEBP", "PDF"}


class ConversionError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def extension(filename: str) -> str:
    return filename.rsplit(".", 1)[-1].lower() if "." in filename else ""


def output_filename(input_filename: str, output_format: str) -> str:
    stem = input_filename.rsplit(".", 1)[0] if "." in input_filename else input_filename
    return f"{stem}.{output_format.lower()}"


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )


def _writable(image: Image.Image, target: str) -> Image.Image:
    modes = _WRITABLE_MODES[target]
    if image.mode in modes:
        return image
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        if "RGBA" in modes:
            return rgba
        # Formats without alpha get transparent areas on white, as viewers show them,
        # instead of whatever colour the transparent pixels happen to hold.
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if image.mode.startswith("I") or image.mode == "F":
        image = image.convert("L") if "L" in modes else image
    return image if image.mode in modes else image.convert("RGB")


def _resized(image: Image.Image, width: int | None, height: int | None) -> Image.Image:
    if not width and not height:
        return image
    # One side given: keep the aspect ratio, as providers' width/height options do.
    w = width or max(1, round(image.width * (height or 0) / image.height))
    h = height or max(1, round(image.height * (width or 0) / image.width))
    return image.resize((w, h))


def _positive_int(options: Mapping[str, object], name: str) -> int | None:
    value = options.get(name)
    if value is None:
        return None
    text = str(value)
    if isinstance(value, bool) or not isinstance(value, int | str) or not text.isdigit() \
            or int(text) < 1:
        raise ConversionError(CONVERSION_FAILED, f"option {name} must be a positive integer")
    return int(text)


def convert_pages(
    data: bytes,
    input_format: str,
    output_format: str,
    options: Mapping[str, object] | None = None,
    *,
    split: bool,
) -> list[bytes]:
    """Convert `data` to `output_format`: one file, or with `split` one file per page when a
    paged input (a multi-page TIFF, an animated GIF) goes to a format holding one page (PNG,
    JPEG, BMP), as CloudConvert turns each page of a document into an image of its own;
    without it such a format gets the first page only.

    Options understood: `quality` (jpg/webp, 1-100), `width`, `height` (pixels)."""
    source, target = input_format.lower(), output_format.lower()
    if source not in INPUT_FORMATS or target not in OUTPUT_FORMATS:
        raise ConversionError(
            UNSUPPORTED_CONVERSION,
            f"Conversion from {source or 'unknown format'} to {target} is not supported "
            f"(inputs: {', '.join(sorted(INPUT_FORMATS))}; "
            f"outputs: {', '.join(sorted(OUTPUT_FORMATS))})",
        )
    options = options or {}
    quality = _positive_int(options, "quality")
    width, height = _positive_int(options, "width"), _positive_int(options, "height")
    pillow_format = OUTPUT_FORMATS[target]
    try:
        with Image.open(io.BytesIO(data)) as image:
            frames = [
                _writable(_resized(frame.copy(), width, height), pillow_format)
                for frame in ImageSequence.Iterator(image)
            ]
            save_options: dict[str, object] = {}
            if quality is not None and pillow_format in ("JPEG", "WEBP"):
                save_options["quality"] = min(quality, 100)
            if pillow_format not in _MULTI_FRAME:
                pages = [[frame] for frame in (frames if split else frames[:1])]
            else:
                pages = [frames]
            files = []
            for page in pages:
                out = io.BytesIO()
                if len(page) > 1:
                    page[0].save(out, pillow_format, save_all=True, append_images=page[1:],
                                 **save_options)
                else:
                    page[0].save(out, pillow_format, **save_options)
                files.append(out.getvalue())
    except UnidentifiedImageError as exc:
        # Pillow names the BytesIO object in its message; say what it means instead.
        raise ConversionError(
            CONVERSION_FAILED, f"cannot identify image file (not a readable {source} image)"
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise ConversionError(CONVERSION_FAILED, f"{type(exc).__name__}: {exc}") from exc
    return files

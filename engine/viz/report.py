"""Self-contained HTML reports: inline CSS, images as PNG data URIs, no script, no network.

Every piece of text is escaped with ``html.escape`` unless it is :class:`Html` made by the
functions here (names and labels come from untrusted model files).

>>> body = [paragraph("8 images"), table([["circle", 0.97]], ["class", "accuracy"])]
>>> write_report("out/index.html", "audit", [section("Predictions", body, seconds=0.4)])
'out/index.html'
"""
import base64
import html
from dataclasses import dataclass

import cv2
import numpy as np

from engine.data.files import write_text

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c9d0dc;font-size:13px}
nav{padding:10px 28px;background:#e8ebf0;font-size:13px}nav a{margin-right:14px;color:#24519d;text-decoration:none}
main{padding:10px 28px 40px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;margin:16px 0;padding:12px 18px}
h2{font-size:18px;margin:4px 0 10px}h3{font-size:15px;margin:14px 0 6px}
.time{float:right;font-size:12px;color:#6b7280;font-weight:normal}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px;font-size:14px}
table{border-collapse:collapse;font-size:13px;margin:6px 0;max-width:100%}
th,td{border:1px solid #dde1e7;padding:3px 8px;text-align:left;overflow-wrap:anywhere}
th{background:#f0f2f5}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
figure{display:inline-block;margin:4px 8px 8px 0;vertical-align:top;max-width:100%}
figure img{display:block;max-width:100%;height:auto}img.pixels{image-rendering:pixelated}
figcaption{font-size:12px;color:#374151;max-width:260px;overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-width:100%}.gallery{display:flex;flex-wrap:wrap}
table.images{table-layout:fixed;width:100%}table.images td{padding:2px;text-align:center}
table.images figure{margin:0;display:block}table.images img{width:100%}
code{font-size:12px}
"""


class Html(str):
    """Markup built by this module (already escaped); anything else is escaped when placed."""


def escape(value):
    """``value`` as HTML: :class:`Html` unchanged, anything else converted to text and escaped.

    >>> escape("<script>alert(1)</script>")
    '&lt;script&gt;alert(1)&lt;/script&gt;'
    """
    return value if isinstance(value, Html) else Html(html.escape(str(value), quote=True))


def join(parts):
    """Concatenate blocks and texts (texts escaped).

    >>> join([heading("CAM"), "a < b"])
    '<h3>CAM</h3>a &lt; b'
    """
    return Html("".join(escape(p) for p in parts))


def paragraph(text):
    """A paragraph of text (or of Html).

    >>> paragraph("200 images, 8 classes")
    '<p>200 images, 8 classes</p>'
    """
    return Html(f"<p>{escape(text)}</p>")


def note(text):
    """A highlighted remark, e.g. why a section does not apply to this model.

    >>> note("no labels: accuracy needs --labels or --synth")
    '<p class="note">no labels: accuracy needs --labels or --synth</p>'
    """
    return Html(f'<p class="note">{escape(text)}</p>')


def heading(text):
    """A sub-heading inside a section.

    >>> heading("Confusion matrix")
    '<h3>Confusion matrix</h3>'
    """
    return Html(f"<h3>{escape(text)}</h3>")


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def number_format(values):
    """One format for the fractional numbers of a column: 4 decimals (2 from 100 up) when every
    non-zero value lies in [0.001, 10⁵), else scientific with 4 significant digits; integers
    (counts) stay whole.

    >>> number_format([0.008065, 5.339e-05])(0.008065), number_format([0.5, 12.25])(0.5)
    ('8.065e-03', '0.5000')
    """
    sizes = [abs(float(v)) for v in values if isinstance(v, (float, np.floating)) and np.isfinite(v) and v != 0]
    if sizes and (min(sizes) < 1e-3 or max(sizes) >= 1e5):
        decimal = lambda v: f"{float(v):.3e}"  # noqa: E731
    else:
        decimal = lambda v: f"{float(v):.{4 if not sizes or max(sizes) < 100 else 2}f}"  # noqa: E731
    return lambda v: f"{int(v)}" if isinstance(v, (int, np.integer)) else decimal(v)


def words(header):
    """A snake_case header as words ("iou_mean" → "iou mean"); other text unchanged.

    >>> words("agreement_std"), words("top-1 IoU")
    ('agreement std', 'top-1 IoU')
    """
    text = str(header)
    return text.replace("_", " ") if "_" in text and " " not in text and not isinstance(header, Html) else header


def table(rows, headers):
    """A table; numbers are right-aligned, with one format per column (:func:`number_format`),
    None and NaN are blank, snake_case headers become words.

    >>> print(table([["circle", 0.97, 40]], ["class", "accuracy", "images"]))  # doctest: +ELLIPSIS
    <div class="scroll"><table><thead><tr><th>class</th>...<td class="num">0.9700</td><td class="num">40</td></tr></tbody></table></div>
    """
    rows = [list(row) for row in rows]
    formats = [number_format([row[c] for row in rows if c < len(row)]) for c in range(len(headers))]

    def cell(value, column):
        if isinstance(value, (bool, np.bool_)):
            return f"<td>{'yes' if value else 'no'}</td>"
        if _is_number(value):
            text = formats[column](value) if np.isfinite(float(value)) else ""
            return f'<td class="num">{text}</td>'
        return f"<td>{escape('' if value is None else value)}</td>"

    return _grid(rows, [words(h) for h in headers], cell)


def _grid(rows, headers, cell, kind="", style=""):
    """A table that fits its section; ``cell(value, column)`` renders one ``<td>``."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v, c) for c, v in enumerate(row)) + "</tr>" for row in rows)
    attrs = (f' class="{kind}"' if kind else "") + (f' style="{style}"' if style else "")
    return Html(f'<div class="scroll"><table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>')


def data_uri(rgb):
    """A uint8 H×W×3 RGB (or H×W gray) image as a ``data:image/png;base64,...`` URI.

    >>> data_uri(np.zeros((2, 2, 3), np.uint8))[:22]
    'data:image/png;base64,'
    """
    image = np.asarray(rgb, np.uint8)
    ok, png = cv2.imencode(".png", image[..., ::-1] if image.ndim == 3 else image)
    if not ok:
        raise ValueError(f"cannot encode an image of shape {image.shape} as PNG")
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")


def image(rgb, caption=None, width=None, alt=None):
    """An embedded image with an optional caption; ``width`` scales its display (CSS pixels), an
    image scaled up shows its pixels sharp. Never wider than its container. ``alt``: its text
    alternative (default: the caption).

    >>> print(image(images[0], caption="gradcam: star 0.98", width=128))  # doctest: +ELLIPSIS
    <figure><img src="data:image/png;base64,...
    """
    rgb = np.asarray(rgb, np.uint8)
    alt = escape(alt if alt is not None else caption if caption is not None else "image")
    style = f' width="{int(width)}"' if width else ""
    pixels = ' class="pixels"' if width and width > rgb.shape[1] else ""
    caption_html = f"<figcaption>{escape(caption)}</figcaption>" if caption is not None else ""
    return Html(f'<figure><img src="{data_uri(rgb)}" alt="{alt}"{style}{pixels}>{caption_html}</figure>')


def gallery(items, width=None):
    """Images side by side, wrapping onto more lines as the page narrows: ``items`` are (rgb,
    caption) pairs.

    >>> gallery([(images[0], "input"), (images[1], "gradcam")], width=128).count("<img")
    2
    """
    return Html('<div class="gallery">' + "".join(image(rgb, caption, width) for rgb, caption in items) + "</div>")


def rows_of_images(rows, headers, width=None):
    """A table whose cells are images: ``rows`` of (rgb or text) cells, e.g. one image per row and
    one method per column. Its columns share the section's width: images shrink below ``width``
    (CSS pixels) rather than overflow.

    >>> rows_of_images([list(images[:3])], ["image", "gradcam", "scorecam"], width=96).count("<img")
    3
    """
    def cell(value, column):
        if isinstance(value, np.ndarray):
            return f"<td>{image(value, width=width)}</td>"
        return f"<td>{escape('' if value is None else value)}</td>"

    # no wider than the images need: the columns shrink with the section, never grow past ``width``
    return _grid(rows, headers, cell, kind="images", style=f"max-width:{len(headers) * (int(width) + 6)}px" if width
                 else "")


@dataclass(frozen=True)
class Section:
    """One report section: its title, anchor, body and the seconds it took to compute."""

    title: str
    body: Html
    seconds: float | None = None
    anchor: str = ""

    def html(self):
        anchor = self.anchor or _anchor(self.title)
        timing = f'<span class="time">{self.seconds:.2f} s</span>' if self.seconds is not None else ""
        return f'<section id="{escape(anchor)}"><h2>{escape(self.title)}{timing}</h2>{self.body}</section>'


def _anchor(title):
    return "".join(c if c.isascii() and c.isalnum() else "-" for c in str(title).lower())


def section(title, body, seconds=None, anchor=None):
    """A :class:`Section` from a title and a list of blocks (texts are escaped).

    >>> section("Saliency", [note("no gradients reach the input")], seconds=0.0)
    Section(title='Saliency', body='<p class="note">no gradients reach the input</p>', seconds=0.0, anchor='saliency')
    """
    return Section(str(title), join(body), seconds, anchor or _anchor(title))


def render(title, sections, subtitle=None):
    """The whole page: ``sections`` with a table of contents at the top.

    >>> page = render("onnxlens audit", [section("Model", [paragraph("resnet")])])
    """
    nav = "".join(f'<a href="#{escape(s.anchor or _anchor(s.title))}">{escape(s.title)}</a>' for s in sections)
    sub = f"<p>{escape(subtitle)}</p>" if subtitle else ""
    body = "".join(s.html() for s in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{escape(title)}</h1>{sub}</header><nav>{nav}</nav><main>{body}</main></body></html>\n")


def write_report(path, title, sections, subtitle=None):
    """Render and write the page atomically; returns the path.

    >>> write_report("audit/index.html", "onnxlens audit", [section("Model", [paragraph("resnet")])])
    'audit/index.html'
    """
    write_text(path, render(title, sections, subtitle))
    return path

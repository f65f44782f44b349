"""The audit: every section computed in turn, timed, and written as one self-contained HTML page.

>>> from engine.audit.inputs import from_synth
>>> [timing.status for _, timing in (run_section(title, fn, Context(model, from_synth(4), Options()))
...                                  for title, fn in SECTIONS[:2])]
['ok', 'ok']
"""
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine.audit.sections import SECTIONS, Context, NotApplicable, Options
from engine.errors import OnnxlensError
from engine.viz.report import note, section, table, write_report


@dataclass(frozen=True)
class Timing:
    """How one section went: ``status`` is "ok", "not applicable" or "not available"."""

    title: str
    seconds: float
    status: str
    reason: str = ""


def run_section(title, fn, ctx):
    """Compute one section; returns (report Section, Timing). A section that does not apply, or
    that the model cannot support (an engine user error), shows the reason instead of content.

    >>> def nothing(ctx): raise NotApplicable("no concept masks")
    >>> done, timing = run_section("Dissection", nothing, None)
    >>> timing.status, timing.reason
    ('not applicable', 'no concept masks')
    """
    start = time.perf_counter()
    try:
        blocks, status, reason = fn(ctx), "ok", ""
    except NotApplicable as err:
        status, reason = "not applicable", str(err)
        blocks = [note(f"Not applicable: {reason}")]
    except OnnxlensError as err:
        status, reason = "not available", str(err)
        blocks = [note(f"Not available for this model: {reason}")]
    seconds = time.perf_counter() - start
    return section(title, blocks, seconds), Timing(title, seconds, status, reason)


def outcome(timings, path):
    """One line for stderr naming the sections that failed ("not available"), or None when none
    did; an OnnxlensError (exit 2) when no section ran at all, though the page is written.

    >>> outcome([Timing("Model", 0.1, "ok"), Timing("Saliency", 0.2, "not available", "NaN")], "a/index.html")
    'audit: 1 of 2 sections failed (Saliency): each says why in a/index.html'
    """
    failed = [t.title for t in timings if t.status == "not available"]
    if not any(t.status == "ok" for t in timings):
        raise OnnxlensError(f"no section of the audit ran ({len(failed)} failed, {len(timings) - len(failed)} not "
                            f"applicable): each says why in {path}")
    if failed:
        return f"audit: {len(failed)} of {len(timings)} sections failed ({', '.join(failed)}): each says why in {path}"
    return None


def audit(model, data, out, options=None, extra=(), log=None, scale=None, progress=None):
    """Write ``out/index.html`` for ``model`` on the image set ``data`` (``engine.audit.inputs``).

    ``options``: section sizes (:class:`Options`); ``extra``: more (title, fn(ctx) → blocks)
    sections appended before the timing; ``log``: called with each finished :class:`Timing`;
    ``scale``: run the dataset sections in shards on Ray (:class:`engine.scale.Scale`);
    ``progress``: write "audit [3/12] Saliency …" to stderr as each section starts (None: when
    stderr is a terminal). Returns the path of the page and the timings.

    >>> from engine.audit.inputs import from_synth
    >>> small = Options(gallery=2, embed=8, dissect=8, classviz_steps=2, faithfulness=4, robustness=4, classes=1,
    ...                 cam_methods=("gradcam",), saliency_methods=("vanilla",))
    >>> path, timings = audit(model, from_synth(8), "audit-out", small)
    >>> path, {t.status for t in timings}
    (PosixPath('audit-out/index.html'), {'ok'})
    """
    ctx = Context(model, data, options or Options(), scale=scale)
    sections, timings = [], []
    todo = (*SECTIONS, *extra)
    progress = sys.stderr.isatty() if progress is None else progress
    for k, (title, fn) in enumerate(todo):
        if progress:
            print(f"audit [{k + 1}/{len(todo)}] {title} …", file=sys.stderr, flush=True)
        done, timing = run_section(title, fn, ctx)
        sections.append(done)
        timings.append(timing)
        if log is not None:
            log(timing)
    total = sum(t.seconds for t in timings)
    sections.append(section("Timing", [table([[t.title, t.seconds, t.status] for t in timings]
                                             + [["total", total, ""]], ["section", "seconds", "status"])]))
    origin = "generated Shapes-world images" if data.scene is not None else "images"
    subtitle = f"{model.path.name} · {len(data)} {origin} · {total:.1f} s"
    path = write_report(Path(out) / "index.html", f"onnxlens audit: {model.path.name}", sections, subtitle)
    return Path(path), timings

"""onnxlens command line: parse, call the engine, print or write, map user errors to exit 2.

Installed as the console script ``onnxlens``; also runnable from a checkout as
``python cli.py ...`` on machines where nothing is installed.
"""
import re
import sys

import click

from engine.errors import OnnxlensError, UsageError
from engine.progress import Progress


class Group(click.Group):
    """A click group that turns user errors into one line on stderr and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OnnxlensError as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {err}", err=True)
            ctx.exit(2)


@click.group(cls=Group)
@click.option("--debug", is_flag=True, help="Show the full traceback of errors.")
@click.version_option("0.1.0", prog_name="onnxlens")
@click.pass_context
def main(ctx, debug):
    """Explain and inspect CNNs exported to ONNX; augment images fast."""
    ctx.obj = {"debug": debug}


# --- data commands ------------------------------------------------------------------------


def _size(text):
    """'HxW' → (H, W)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text or "")
    if not match:
        raise UsageError(f"--size '{text}' is not HxW: write it like 96x96")
    return int(match.group(1)), int(match.group(2))


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the dataset into.")
@click.option("--n", "n", default=1000, show_default=True, type=click.IntRange(min=1), help="Number of images.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="World seed.")
@click.option("--size", default="96x96", show_default=True, help="Image size HxW.")
def synth(out, n, seed, size):
    """Generate Shapes-world images with concept label maps in the Broden layout."""
    from engine.data import broden, synth as world

    with Progress(total=n, label="synth") as bar:
        broden.write_concepts(out, world.batches(n, seed=seed, size=_size(size)), progress=bar)
    click.echo(f"wrote {n} images with shape/color/texture/background label maps to {out}")


# --- model commands -----------------------------------------------------------------------


# --- gradient engine commands -------------------------------------------------------------


# --- explanation commands -----------------------------------------------------------------


# --- analysis commands --------------------------------------------------------------------


# --- augmentation commands ----------------------------------------------------------------


# --- audit commands -----------------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())

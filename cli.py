"""onnxlens command line: parse, call the engine, print or write, map user errors to exit 2.

Installed as the console script ``onnxlens``; also runnable from a checkout as
``python cli.py ...`` on machines where nothing is installed.
"""
import sys

import click

from engine.errors import OnnxlensError


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


# --- model commands -----------------------------------------------------------------------


# --- gradient engine commands -------------------------------------------------------------


# --- explanation commands -----------------------------------------------------------------


# --- analysis commands --------------------------------------------------------------------


# --- augmentation commands ----------------------------------------------------------------


# --- audit commands -----------------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())

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
@main.command()
@click.argument("images", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--ops", "spec", default="rotate:-30..30,hflip",
              help='Comma-separated ops, e.g. "rotate:30,hflip,cutmix:1.0"; a number is fixed, '
                   "lo..hi a range, key=value names a parameter.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**64 - 1))
@click.option("--out", "out_dir", default="out/augment", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--bench", is_flag=True, help="Print the throughput table instead (no IMAGES).")
@click.option("--bench-images", default=64, show_default=True, type=click.IntRange(2, 4096),
              help="Number of 256×256 benchmark images.")
def augment(images, spec, seed, out_dir, threads, bench, bench_images):
    """Augment IMAGES into --out (plus a before/after grid.png), or --bench the engine."""
    from engine.augment import bench as bench_mod
    from engine.augment.pipeline import augment_files
    from engine.errors import UsageError

    if bench:
        click.echo(bench_mod.format_table(bench_mod.table(n=bench_images)))
        return
    if not images:
        raise UsageError("give IMAGES to augment, or --bench")
    written, mix = augment_files(images, spec, out_dir, seed=seed, threads=threads)
    for path, weights in zip(written, mix):
        parts = [f"{w:.2f}×{images[j]}" for j, w in enumerate(weights) if w > 0]
        click.echo(f"{path}  ({' + '.join(parts)})" if len(parts) > 1 else str(path))
    click.echo(str(written[-1]))



# --- audit commands -----------------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())

"""onnxlens command line: parse, call the engine, print or write, map user errors to exit 2.

Installed as the console script ``onnxlens``; also runnable from a checkout as
``python cli.py ...`` on machines where nothing is installed.
"""
import functools
import glob
import json
import sys
from pathlib import Path

import click
import numpy as np

from engine.data.files import (check_out_file, check_out_folder, output_set, write_image, write_json,
                               write_text)
from engine import __version__
from engine.errors import OnnxlensError, UsageError
from engine.explain import attribution
from engine.explain import methods as cam_methods
from engine.progress import Progress


class Group(click.Group):
    """A click group that turns user errors into one line on stderr and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OnnxlensError as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {_cli_words(str(err))}", err=True)
            ctx.exit(2)
        except click.UsageError as err:  # a bad option value: one line too, not click's usage block
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {' '.join(err.format_message().split())}", err=True)
            ctx.exit(2)


class FiniteFloat(click.FloatRange):
    """A click float type that also refuses NaN and ±inf, saying the accepted range.

    >>> FiniteFloat(min=0).convert("0.5", None, None)
    0.5
    """

    name = "finite float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not np.isfinite(number):
            self.fail(f"{value!r} is not a finite number (accepted: {self._describe_range()})", param, ctx)
        return number

    def _describe_range(self):
        return "any finite number" if self.min is None and self.max is None else super()._describe_range()


SEED = click.IntRange(0, 2**32 - 1)


# The engine names Python arguments in its messages; a CLI user reads the options that set them.
CLI_SPELLINGS = {
    "input_size=(H, W)": "--size HxW",
    "extra_inputs={name: array}": "--input NAME=VALUE|FILE.npy",
    "recursive=True": "--recursive",
    "preprocess=": "--preprocess",
    'layout="CHW"': "channels-first images",
}


def _cli_words(message):
    """An engine message with its Python argument names replaced by the CLI options that set them.

    >>> _cli_words("give an input size: input_size=(H, W)")
    'give an input size: --size HxW'
    """
    for api, option in CLI_SPELLINGS.items():
        message = message.replace(api, option)
    return message


@click.group(cls=Group)
@click.option("--debug", is_flag=True, help="Show the full traceback of errors.")
@click.option("--max-pixels", type=click.IntRange(min=1), metavar="N",
              help="Refuse images larger than N pixels before decoding them (default 50000000).")
@click.version_option(__version__, prog_name="onnxlens")
@click.pass_context
def main(ctx, debug, max_pixels):
    """Explain and inspect CNNs exported to ONNX; augment images fast."""
    ctx.obj = {"debug": debug}
    from engine.data import images

    images.MAX_PIXELS = max_pixels or images.DEFAULT_MAX_PIXELS


_provider_option = click.option("--provider", default="auto", show_default=True,
                                help="ONNX Runtime execution provider (auto: CUDA when available).")


def _options(*decorators):
    """Click argument/option decorators as one decorator, applied in the order written (as --help lists them)."""
    def apply(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command
    return apply


def _scale_options(command):
    """``--ray [ADDRESS]``, ``--workers N``, ``--shard-size K``, handed to the command as one
    ``scale`` argument (an ``engine.scale.Scale``, or None for the plain single-process run)."""
    @functools.wraps(command)
    def run(*args, ray_address, workers, shard_size, **kwargs):
        from engine.scale import Scale

        return command(*args, scale=Scale.from_options(ray_address, workers, shard_size), **kwargs)

    return _options(
        click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
                     help="Run on Ray: alone, a local cluster on this machine; 'auto', the running cluster "
                          "(`ray start --head`); or its address. Results equal the single-process run."),
        click.option("--workers", type=click.IntRange(min=1), help="Ray workers (default: one per cluster CPU)."),
        click.option("--shard-size", type=click.IntRange(min=1), metavar="K",
                     help="Images per shard, rounded up to whole batches (default: 32 batches on Ray)."),
    )(run)


# --- the option vocabulary: one decorator per group, the same words in every command -------------


def _parse_size(ctx, param, value):
    """Click callback: 'HxW' → (H, W)."""
    if value is None:
        return None
    try:
        height, width = (int(v) for v in value.lower().replace("×", "x").split("x"))
        if height < 1 or width < 1:
            raise ValueError
    except ValueError:
        raise UsageError(f"--size '{value}' is not HxW: write it like 64x64") from None
    return height, width


def _out_folder(ctx, param, value):
    """Click callback: refuse an unusable --out folder before the work starts."""
    if value is not None:
        check_out_folder(value)
    return value


def _out_image(ctx, param, value):
    """Click callback: refuse an unusable --out image file (or suffix) before the work starts."""
    check_out_file(value)
    return value


def _out_model_file(ctx, param, value):
    """Click callback: refuse an unusable --out model file before the work starts."""
    if value is not None:
        check_out_file(value, image=False)
    return value


_input_size_option = click.option("--size", callback=_parse_size, metavar="HxW",
                                  help="Input size for models with dynamic spatial dims.")


def _parse_inputs(ctx, param, values):
    """Click callback: repeated NAME=VALUE|FILE.npy → {name: array}."""
    from engine.runtime.feeds import parse

    return dict(parse(value) for value in values)


_extra_input_option = click.option(
    "--input", "inputs", multiple=True, callback=_parse_inputs, metavar="NAME=VALUE|FILE.npy",
    help="A model input besides the image: a number, comma-separated numbers or a .npy file; repeatable.")

_labels_option = click.option("--labels", "labels_file", metavar="FILE",
                              help="Class names: one per line, or a JSON list (default: the model's metadata).")


def _preprocess_options(command):
    """--preprocess PRESET, --mean, --std, --channel-order, --resize, handed to the command as one
    ``preprocess`` mapping for ``Model(preprocess=...)`` (None when no option is given: the
    model's metadata, else the default guess)."""
    from engine.data.preprocess import CHANNEL_ORDERS, PRESETS, RESIZE_POLICIES

    @functools.wraps(command)
    def run(*args, preset, mean, std, channel_order, resize, **kwargs):
        given = {"preset": preset, "mean": mean, "std": std, "channel_order": channel_order, "resize": resize}
        given = {key: value for key, value in given.items() if value is not None}
        return command(*args, preprocess=given or None, **kwargs)

    return _options(
        click.option("--preprocess", "preset", type=click.Choice(list(PRESETS)),
                     help="Pixel scaling: imagenet ((x/255 − mean)/std), unit (x/255), symmetric (x/127.5 − 1), "
                          "raw (0–255). Default: the model's metadata, else imagenet (a guess)."),
        click.option("--mean", metavar="R,G,B", help="Per-channel mean on the 0–1 scale (replaces the preset's)."),
        click.option("--std", metavar="R,G,B", help="Per-channel std on the 0–1 scale (replaces the preset's)."),
        click.option("--channel-order", type=click.Choice(list(CHANNEL_ORDERS), case_sensitive=False),
                     help="Channel order the model takes (default: metadata, else RGB)."),
        click.option("--resize", type=click.Choice(list(RESIZE_POLICIES)),
                     help="How images reach the input size: squash (default) or shorter-side+center-crop."),
    )(run)


def _model_options(labels=True):
    """The options of a command that runs a model: --size, --provider, --threads, --timeout (sets
    engine.runtime.session.RUN_TIMEOUT), the preprocessing group, --labels FILE (unless the
    command's --labels means something else) and --input, handed to the command as one ``load``
    dict: ``_load(path, **load)``."""
    def decorate(command):
        @functools.wraps(command)
        def run(*args, size, provider, threads, preprocess, inputs, timeout, labels_file=None, **kwargs):
            from engine.runtime import session

            session.RUN_TIMEOUT = timeout or None
            load = {"inputs": inputs, "input_size": size, "provider": provider, "threads": threads,
                    "preprocess": preprocess}
            if labels:
                load["labels"] = labels_file
            return command(*args, load=load, **kwargs)

        return _options(
            _input_size_option, _provider_option,
            click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime threads (default: its own)."),
            click.option("--timeout", default=600, show_default=True, type=FiniteFloat(min=0), metavar="SECONDS",
                         help="Stop a model run (one batch) that takes longer than this (0: no limit)."),
            _preprocess_options, *([_labels_option] if labels else []), _extra_input_option,
        )(run)
    return decorate


def _images_argument(required=True):
    """IMAGES...: files, folders and glob patterns, with --recursive for the folders' sub-folders,
    handed to the command as a list of files (engine.data.images.image_files; [] when none given)."""
    def decorate(command):
        @functools.wraps(command)
        def run(*args, images, recursive, **kwargs):
            from engine.data.images import image_files

            return command(*args, images=image_files(images, recursive) if images else [], **kwargs)

        return _options(
            click.argument("images", nargs=-1, required=required),
            click.option("--recursive", is_flag=True, help="Also take the images in sub-folders of folder IMAGES."),
        )(run)
    return decorate


def _batch_size_option(default):
    """--batch-size N (Images per pass), with --batch as a hidden deprecated spelling."""
    def decorate(command):
        @functools.wraps(command)
        def run(*args, batch_size, old_batch, **kwargs):
            return command(*args, batch_size=old_batch or batch_size, **kwargs)

        return _options(
            click.option("--batch-size", default=default, show_default=True, type=click.IntRange(min=1),
                         help="Images per pass."),
            click.option("--batch", "old_batch", type=click.IntRange(min=1), hidden=True,
                         help="Deprecated spelling of --batch-size."),
        )(run)
    return decorate


_masks_option = click.option("--masks", multiple=True, metavar="DIR|FILE|GLOB",
                             help="Object masks (non-zero = object), one per image, named as the image; repeatable.")


def _load(path, inputs=None, **options):
    """The Model of a command: MODEL with its --input values and the command's other options."""
    from engine.api import Model  # looked up at call time: tests swap engine.api.Model

    return Model(path, extra_inputs=inputs, **options)


# --- data commands ------------------------------------------------------------------------


@main.command()
@click.option("--out", required=True, callback=_out_folder, help="Folder to write the dataset into.")
@click.option("--n", "n", default=1000, show_default=True, type=click.IntRange(min=1), help="Number of images.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="World seed.")
@click.option("--size", default="96x96", show_default=True, callback=_parse_size, help="Image size HxW.")
def synth(out, n, seed, size):
    """Generate Shapes-world images with concept label maps in the Broden layout."""
    from engine.data import broden, synth as world

    with Progress(total=n, label="synth") as bar:
        broden.write_concepts(out, world.batches(n, seed=seed, size=size), progress=bar)
    click.echo(f"wrote {n} images to {Path(out) / 'images' / 'shapes'} and their shape/color/texture/background "
               f"label maps to {Path(out) / 'images' / broden.LABEL_MAPS}")


# --- model commands -----------------------------------------------------------------------


def _dims(shape):
    return "?" if shape is None else "×".join("?" if d is None else str(d) for d in shape)


def _table(rows, headers):
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [headers, *rows])


@main.command()
@click.argument("model")
@click.option("--layer", "layer_name", metavar="NAME", help="Show only this layer.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@_model_options()
def inspect(model, layer_name, as_json, load):
    """Show a model's inputs, outputs, opset, producer, op histogram and layer catalog.

    Outputs made by a Softmax are noted (gradients of probabilities; --logits explains the logits).
    Per layer: whether gradients reach it (every op from it to the output has a rule), its
    receptive field and stride in input pixels ("all" where it sees the whole image), and a *
    on the default layer for gradient-based explanations. The preprocessing line says where each
    setting came from (metadata, option or default guess) and warns on a guess."""
    from engine.explain.outputs import softmax_input

    model = _load(model, **load)
    info = model.summary()
    info["layers"] = model.layer_details()
    for output in info["outputs"]:
        output["softmax_of"] = softmax_input(model.proto, output["name"])
    if layer_name is not None:
        chosen = model.layer(layer_name).name  # a tensor or a module's last 4-D tensor
        info["layers"] = [layer for layer in info["layers"] if layer["name"] == chosen]
    if as_json:
        click.echo(json.dumps(info, indent=2, ensure_ascii=False))
        return
    image = info["image_input"]
    labels = info["labels"]
    click.echo(f"model     {info['path']}\nproducer  {info['producer'] or '?'}  (IR {info['ir_version']}, opset "
               + ", ".join(f"{d} {v}" for d, v in info["opset"].items()) + ")")
    click.echo(f"image     {image['name']}  {image['layout']} {image['dtype']} {_dims(image['shape'])}  "
               f"dynamic: {''.join(image['dynamic']) or 'none'}  size: {_dims(image['size'])}")
    click.echo(f"preproc   {_provenance(info['preprocess'])}")
    click.echo(f"          labels: {len(labels) if labels else 'none'}  "
               f"gradients w.r.t. {image['gradients'] or 'none (the pixels are not only cast to float)'}\n")
    if info["preprocess"]["guessed"]:
        guessed = " and ".join(key.replace("_", " ") for key in info["preprocess"]["guessed"])
        pronoun = "them" if len(info["preprocess"]["guessed"]) > 1 else "it"
        click.echo(f"warning: '{model.path.name}' does not record its {guessed}: onnxlens guessed {pronoun}; if wrong, "
                   "pass --preprocess/--channel-order (or --mean/--std) or write them into the model "
                   "with `onnxlens tag`", err=True)
    rows = [("input", t["name"], t["dtype"], _dims(t["shape"])) for t in info["inputs"]]
    rows += [("output", t["name"], t["dtype"], _dims(t["shape"])) for t in info["outputs"]]
    click.echo(_table(rows, ("", "name", "dtype", "shape")) + "\n")
    for t in info["outputs"]:
        if t["softmax_of"]:
            click.echo(f"note: output '{t['name']}' is a Softmax: gradients are of probabilities; "
                       f"--logits explains its input '{t['softmax_of']}'\n")
    click.echo("ops  " + ", ".join(f"{op} {n}" for op, n in info["ops"].items()) + "\n")
    rows = [(("* " if layer["default"] else "  ") + layer["name"], layer["module"] or "-", layer["op"],
             _dims(layer["shape"]), "yes" if layer["gradients"] is True else layer["gradients"],
             _dims(layer["field"]) if layer["field"] else "all", _dims(layer["stride"]) if layer["stride"] else "-")
            for layer in info["layers"]]
    headers = ("  layer", "module", "op", "shape", "gradients", "field", "stride")
    if not any(layer["module"] for layer in info["layers"]):  # the file records no torch modules
        headers, rows = headers[:1] + headers[2:], [row[:1] + row[2:] for row in rows]
    click.echo(_table(rows, headers))


def _provenance(preprocess):
    """'imagenet (default guess)  RGB (metadata) ...': each setting with where it came from."""
    shown = lambda v: ",".join(f"{x:g}" for x in v) if isinstance(v, list) else v  # noqa: E731
    return "  ".join(f"{key.replace('_', ' ')} {shown(preprocess[key])} ({preprocess['sources'][key]})"
                     for key in preprocess["sources"] if key in preprocess)


@main.command()
@click.argument("model")
@_images_argument()
@click.option("--top", default=5, show_default=True, type=click.IntRange(min=1), help="Classes per image.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per image.")
@_batch_size_option(32)
@_model_options()
def predict(model, images, top, as_json, batch_size, load):
    """Rank the classes of each image (scores are probabilities)."""
    model = _load(model, **load)
    predictions = model.predict([str(p) for p in images], top=top, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in predictions], indent=2, ensure_ascii=False))
        return
    for p in predictions:
        click.echo(p.image)
        for t in p.top:
            click.echo(f"  {t.score:7.4f}  {t.label if t.label is not None else '#' + str(t.index)}  [{t.index}]")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@_preprocess_options
@_labels_option
@click.option("--out", metavar="FILE", callback=_out_model_file,
              help="Write a new tagged file instead (default: in place, the old file kept as MODEL.bak).")
def tag(model, preprocess, labels_file, out):
    """Write preprocessing settings and class names into MODEL's metadata (read by every command)."""
    from engine.data.tags import tag as write_tags

    written, backup = write_tags(model, out=out, preprocess=preprocess, labels=labels_file)
    click.echo(f"wrote {written}" + (f" (the previous file is kept as {backup})" if backup else ""))


# --- gradient engine commands -------------------------------------------------------------


# --- explanation commands -----------------------------------------------------------------


def _explain_target(value, model):
    """--target: the vocabulary of engine.explain.targets (top, a class index or label, several
    classes separated by commas, box:K, box:x1,y1,x2,y2, char:K, text, region:..., mask:FILE,
    channel:K)."""
    from engine.explain.targets import parse

    return parse(value, model.labels)


def _echo_summary(summary, as_json):
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for item in summary:
        p, t = item["predicted"], item["target"]
        name = lambda d: d["label"] or "#" + str(d["index"])  # noqa: E731
        if item["empty"]:
            hint = " or --logits (probabilities saturate)" if item["output"].get("probabilities") else ""
            click.echo(f"warning: {item['image']}: the map is zero everywhere (the target does not reach layer "
                       f"{', '.join(item['layers']) or 'input'}, or its gradient vanishes there): try another "
                       f"--layer or --target{hint}", err=True)
        if p is not None:
            probs = " (probabilities: --logits explains the logits)" if item["output"].get("probabilities") else ""
            click.echo(f"{item['image']}: predicted {name(p)} ({p['probability']:.3f}), "
                       f"explained {name(t)}{probs} -> {item['overlay']}")
        elif "box" in t:
            click.echo(f"{item['image']}: explained box {t['rank']} {name(t)} score {t['score']:.3f} at "
                       f"{', '.join(f'{v:g}' for v in t['box'])} -> {item['overlay']}")
        elif "anchor" in t:
            click.echo(f"{item['image']}: explained anchor {t['anchor']} (rank {t['rank']}) of "
                       f"{item['output']['name']} {name(t)} score "
                       f"{t['score']:.3f} -> {item['overlay']}")
        elif "text" in t:
            what = f"character {t['char']} ({name(t)})" if "char" in t else "the whole string"
            click.echo(f"{item['image']}: read '{t['text']}', explained {what} -> {item['overlay']}")
        elif "pixels" in t:
            where = f"region {','.join(f'{v:g}' for v in t['region'])}" if "region" in t else f"{t['pixels']} cells"
            click.echo(f"{item['image']}: explained class {name(t)} over {where} -> {item['overlay']}")
        else:
            click.echo(f"{item['image']}: explained the output mask -> {item['overlay']}")


_explain_options = _options(
    click.argument("model"),
    _images_argument(),
    click.option("--target", default="top", show_default=True,
                 help="top, a class index or label (several: comma-separated, one per image), box:K, "
                      "box:x1,y1,x2,y2, char:K, text, region:x1,y1,x2,y2, mask:FILE, channel:K, "
                      "class:K@region:... (boxes and regions in model-input pixels)."),
    click.option("--output-kind", type=click.Choice(["classifier", "dense", "yolov8", "yolov5", "boxes", "scores",
                                                      "sequence"]),
                 help="Read the explained output as this kind instead of the one inferred from its shape."),
    click.option("--output", "output_name", metavar="NAME",
                 help="The output (or any tensor) to explain; first by default."),
    click.option("--logits", is_flag=True, help="Explain the logits before a final Softmax, not the probabilities."),
    click.option("--blank", default=0, show_default=True, type=click.IntRange(min=0),
                 help="CTC blank class of sequence outputs."),
    click.option("--out", required=True, metavar="DIR", callback=_out_folder,
                 help="Folder for overlays, the .npz and summary.json."),
    _batch_size_option(16),
    click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
    _model_options(),
)


def _saliency_method(ctx, param, value):
    """Check a saliency method name (a table entry, or one smoothed) before the model loads."""
    try:
        attribution.method(value)
    except UsageError as err:
        raise click.BadParameter(str(err)) from None
    return value


@main.command()
@_explain_options
@click.option("--method", default="gradcam", show_default=True, type=click.Choice(list(cam_methods.METHODS)))
@click.option("--layer", default="auto", show_default=True, help="Layer name(s), comma-separated, or auto.")
@click.option("--tta", is_flag=True, help="Average over flips and zooms (test-time augmentation).")
@click.option("--eigen-smooth", is_flag=True, help="First principal component instead of the channel sum.")
def cam(model, images, target, output_kind, output_name, logits, blank, out, batch_size, as_json, load, method,
        layer, tta, eigen_smooth):
    """Class activation maps: an overlay PNG per image, DIR/cams.npz and DIR/summary.json."""
    from engine.explain import cam as explain_cam
    from engine.explain.summary import write_explanation

    model = _load(model, **load)
    exp = explain_cam(model, list(images), method=method, layer=layer, targets=_explain_target(target, model),
                      batch=batch_size, tta=tta, eigen_smooth=eigen_smooth, output=output_name, output_kind=output_kind,
                      logits=logits, blank=blank)
    _echo_summary(write_explanation(exp, model, list(images), out, "cams"), as_json)


@main.command()
@_explain_options
@click.option("--method", default="smoothgrad", show_default=True, callback=_saliency_method,
              help=f"One of {', '.join(attribution.NAMES)}; smooth any as {'|'.join(attribution.TUNNELS)}:NAME "
                   "(e.g. smoothgrad:integrated).")
@click.option("--samples", default=25, show_default=True, type=click.IntRange(min=1),
              help="Noisy copies per image of smoothed methods.")
@click.option("--noise", default=0.15, show_default=True, type=FiniteFloat(min=0),
              help="Smoothing noise, a fraction of each image's value range.")
@click.option("--steps", default=32, show_default=True, type=click.IntRange(min=1), help="Integrated Gradients steps.")
@click.option("--baseline", default="zero", show_default=True, help="IG baseline: zero, black or a number.")
@click.option("--layer", default="auto", show_default=True, help="Grad-CAM layer of guided-gradcam.")
def saliency(model, images, target, output_kind, output_name, logits, blank, out, batch_size, as_json, load,
             method, samples, noise, steps, baseline, layer):
    """Saliency maps: an overlay PNG per image, DIR/saliency.npz and DIR/summary.json."""
    from engine.explain import saliency as explain_saliency
    from engine.explain.summary import write_explanation

    model = _load(model, **load)
    exp = explain_saliency(model, list(images), method=method, targets=_explain_target(target, model),
                           batch=batch_size, samples=samples, noise=noise, steps=steps, baseline=baseline, layer=layer,
                           output=output_name, output_kind=output_kind, logits=logits, blank=blank)
    _echo_summary(write_explanation(exp, model, list(images), out, "saliency"), as_json)


@main.command()
@click.argument("model")
@click.option("--target", help="Class index or label whose score is maximized.")
@click.option("--layer", help="Layer of the channel to maximize (with --channel).")
@click.option("--channel", type=click.IntRange(min=0), help="Channel whose mean activation is maximized.")
@click.option("--steps", default=200, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=0.1, show_default=True, type=FiniteFloat(min=0, min_open=True), help="Step size (gradient scaled to unit RMS).")
@click.option("--l2", default=1e-4, show_default=True, type=FiniteFloat(min=0), help="Weight decay λ in x ← x + α·g − 2λx.")
@click.option("--start", default="zeros", show_default=True, help="zeros, noise or an image file.")
@click.option("--jitter", default=2, show_default=True, type=click.IntRange(min=0), help="Random shift in pixels.")
@click.option("--blur-every", default=4, show_default=True, type=click.IntRange(min=0),
              help="Blur every k steps (0: never).")
@click.option("--fourier", is_flag=True, help="Decorrelated Fourier parameterization (1/f spectrum).")
@click.option("--decorrelate", is_flag=True, help="Decorrelate colours (ImageNet colour correlation).")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--out", required=True, metavar="PNG", callback=_out_image,
              help="Result image; the strip of steps goes to <name>_steps.png.")
@_model_options()
def classviz(model, target, layer, channel, steps, lr, l2, start, jitter, blur_every, fourier, decorrelate, seed,
             out, load):
    """Class (or channel) visualization by gradient ascent on the input."""
    from engine.explain import class_visualization
    from engine.viz.overlay import strip

    model = _load(model, **load)
    target = None if target is None else _explain_target(target, model)
    if target is not None and getattr(target, "kind", None) != "class":
        raise UsageError("--target: give one class (an index or a label)")
    target = None if target is None else target.index
    viz = class_visualization(model, target=target, layer=layer, channel=channel, steps=steps, lr=lr, l2=l2,
                              start=start, jitter=jitter, blur_every=blur_every, fourier=fourier,
                              decorrelate=decorrelate, rng=seed)
    out = Path(out)
    steps_file = out.with_name(out.stem + "_steps" + (out.suffix or ".png"))
    with output_set(out.parent, [glob.escape(out.name), glob.escape(steps_file.name)]) as stage:  # one set
        write_image(stage / out.name, viz.image)
        write_image(stage / steps_file.name, strip(viz.steps))
    click.echo(f"score {viz.scores[0]:.3f} -> {viz.scores[-1]:.3f} after {steps} steps: {out}")


@main.command()
@click.argument("model")
@_images_argument(required=False)
@click.option("--images", "image_options", multiple=True, hidden=True, help="Older spelling of IMAGES.")
@click.option("--synth", type=click.IntRange(min=1), help="Evaluate on N generated Shapes images.")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the generated images.")
@_masks_option
@click.option("--method", default="gradcam", show_default=True, help="A CAM or saliency method.")
@click.option("--layer", default="auto", show_default=True)
@click.option("--steps", default=16, show_default=True, type=click.IntRange(min=1), help="Deletion/insertion steps.")
@_batch_size_option(32)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_model_options()
@_scale_options
def evaluate(model, images, image_options, synth, seed, masks, method, layer, steps, batch_size, as_json, load,
             scale):
    """Pointing game and deletion/insertion AUC of a method, beside random and centre maps."""
    from engine.data.images import image_files, mask_files, read_image
    from engine.explain import evaluate as explain_evaluate

    images = images + (image_files(image_options) if image_options else [])
    if bool(synth) == bool(images):
        raise UsageError("give either --synth N or IMAGES with --masks")
    labels = None
    if synth:
        from engine.data.synth import generate

        scene = generate(synth, seed=seed)
        pictures, object_masks, labels = list(scene.images), scene.masks, scene.labels
    else:
        if not masks:
            raise UsageError("the pointing game needs object masks: give --masks DIR (one mask per image)")
        pictures = images  # read by the job, shard by shard
        object_masks = [read_image(f).max(axis=2) > 0 for f in mask_files(images, masks)]
        if len({m.shape for m in object_masks}) > 1:
            raise UsageError("masks differ in size: evaluate images of one size at a time")
    report = explain_evaluate(_load(model, **load), pictures, object_masks,
                              labels=labels, method=method, layer=layer, steps=steps, batch=batch_size, scale=scale)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{report['images']} images, {method} at {', '.join(report['layers']) or 'input'}")
    click.echo(f"{'map':<12}{'pointing':>10}{'deletion':>10}{'insertion':>11}")
    for name in (method, "random", "centre"):
        r = report[name]
        click.echo(f"{name:<12}{r['pointing']:>10.3f}{r['deletion']:>10.3f}{r['insertion']:>11.3f}")


# --- analysis commands --------------------------------------------------------------------


def _source(images, synth_n, seed, concepts):
    """The image set named by IMAGES..., --synth N or --concepts DIR (engine.analyze.sources.choose)."""
    from engine.analyze.sources import choose

    return choose(images=images, synth=synth_n, seed=seed, concepts=concepts)


# MODEL, then one image set: IMAGES..., --synth N [--seed S] or --concepts DIR (see _source).
_image_set_options = _options(
    click.argument("model"),
    _images_argument(required=False),
    click.option("--synth", "synth_n", type=click.IntRange(min=1), metavar="N", help="Use N Shapes-world images instead of files."),
    click.option("--seed", default=0, show_default=True, type=SEED, help="Shapes-world seed for --synth."),
    click.option("--concepts", metavar="DIR", help="Use the images of a Broden-layout folder."),
)


@main.command()
@_image_set_options
@click.option("--layer", default="auto", show_default=True, help="Tensor to embed (auto: the pooled penultimate).")
@click.option("--out", required=True, metavar="DIR", callback=_out_folder,
              help="Folder for features.npy, index.csv, embedding.json.")
@click.option("--k", default=8, show_default=True, type=click.IntRange(min=1), help="Neighbours for kNN purity.")
@_batch_size_option(32)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@_model_options()
@_scale_options
def embed(model, images, synth_n, seed, concepts, layer, out, k, batch_size, as_json, load, scale):
    """Extract one feature vector per image at a layer; report kNN label purity."""
    from engine.analyze.embeddings import embed as run_embed
    from engine.analyze.neighbors import purity

    result = run_embed(_load(model, **load), _source(images, synth_n, seed, concepts), layer=layer,
                       out=out, batch_size=batch_size, scale=scale)
    info = {"out": out, "layer": result.layer, "images": len(result.names), "dim": int(result.features.shape[1])}
    finite = bool(np.isfinite(result.features).all())  # NaN features are written as they are, not ranked
    if not finite:
        click.echo("warning: the features hold NaN or infinite values (check the model's weights): no kNN purity",
                   err=True)
    if finite and all(label is not None for label in result.labels) and len(set(result.labels)) > 1 \
            and len(result.names) > k:
        info["knn_purity"] = round(purity(result.features, result.labels, k=k), 4)
        info["k"] = k
    if as_json:
        click.echo(json.dumps(info, indent=2, ensure_ascii=False))
        return
    click.echo(f"{info['images']} images × {info['dim']} features at {info['layer']} → {out}")
    if "knn_purity" in info:
        click.echo(f"kNN label purity (k={k}, cosine): {info['knn_purity']:.4f}")


@main.command()
@click.argument("folder")
@click.option("--query", required=True, multiple=True, metavar="IMAGE",
              help="Query image (a file or a synth:SEED:INDEX name); repeatable.")
@click.option("--k", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--metric", default="cosine", show_default=True, type=click.Choice(["cosine", "l2"]))
@click.option("--out", required=True, metavar="PNG", callback=_out_image,
              help="Grid: one row per query, then its neighbours.")
@_model_options()
def neighbors(folder, query, k, metric, out, load):
    """Show the nearest images of an embedding folder to each query image."""
    from engine.analyze.embeddings import load_embedding
    from engine.analyze.neighbors import neighbor_sheet

    emb = load_embedding(folder)
    write_image(out, neighbor_sheet(_load(emb.model, **load), emb, list(query), k=k, metric=metric))
    click.echo(f"wrote {out}")


@main.command()
@click.argument("folder")
@click.option("--method", default="tsne", show_default=True, type=click.Choice(["tsne", "pca"]))
@click.option("--thumbnails", is_flag=True, help="Draw image thumbnails at (non-overlapping) points.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--out", required=True, metavar="PNG", callback=_out_image)
def project(folder, method, thumbnails, seed, out):
    """Scatter plot of an embedding folder in 2-D (t-SNE or PCA), coloured by label."""
    import numpy as np

    from engine.analyze.embeddings import load_embedding
    from engine.analyze.projection import project as run_project
    from engine.analyze.sources import read_named
    from engine.viz.scatter import scatter

    emb = load_embedding(folder)
    points = run_project(emb.features, method=method, seed=seed)
    pictures = None
    if thumbnails:  # at most 300 random images are read; the plot keeps those that do not overlap
        chosen = set(np.random.default_rng(seed).permutation(len(emb.names))[:300].tolist())
        pictures = [read_named(name) if i in chosen else None for i, name in enumerate(emb.names)]

    write_image(out, scatter(points, emb.labels, thumbnails=pictures, title=f"{method} of {emb.layer}"))
    click.echo(f"wrote {out}")


@main.command()
@click.argument("model")
@click.option("--layer", help="A Conv layer (default: the first Conv).")
@click.option("--out", required=True, metavar="PNG", callback=_out_image)
@_model_options()
def filters(model, layer, out, load):
    """Draw a Conv layer's filters as a grid, each normalized on its own."""
    from engine.analyze.filters import filters_picture

    write_image(out, filters_picture(_load(model, **load), layer))
    click.echo(f"wrote {out}")


@main.command()
@click.argument("model")
@click.argument("image")
@click.option("--layer", required=True, help="Layer whose channel maps to draw.")
@click.option("--out", required=True, metavar="PNG", callback=_out_image)
@_model_options()
def activations(model, image, layer, out, load):
    """Draw every channel map of a layer for one image, the image beside them."""
    from engine.analyze.filters import activations_picture
    from engine.analyze.sources import read_named

    write_image(out, activations_picture(_load(model, **load), read_named(image), layer))
    click.echo(f"wrote {out}")


@main.command()
@click.argument("model")
@click.option("--concepts", required=True, metavar="DIR", help="Broden-layout folder (see `onnxlens synth`).")
@click.option("--layer", default="auto", show_default=True, help="Layer to dissect (auto: the last spatial map).")
@click.option("--quantile", default=0.995, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Activation quantile of each unit's threshold.")
@click.option("--iou", default=0.04, show_default=True, type=FiniteFloat(0, 1), help="IoU above which a unit detects a concept.")
@click.option("--top", default=8, show_default=True, type=click.IntRange(min=1), help="Images per unit sheet.")
@_batch_size_option(32)
@click.option("--out", required=True, metavar="DIR", callback=_out_folder)
@click.option("--json", "as_json", is_flag=True, help="Print summary.json.")
@_model_options()
@_scale_options
def dissect(model, concepts, layer, quantile, iou, top, batch_size, out, as_json, load, scale):
    """Network Dissection: label each unit of a layer with the concept its top activations cover."""
    from engine.analyze.dissection import dissect as run_dissect, write_dissection
    from engine.data.broden import read_concepts

    model, dataset = _load(model, **load), read_concepts(concepts)
    result = run_dissect(model, dataset, layer=layer, quantile=quantile, iou=iou, top=top, batch_size=batch_size,
                         scale=scale)
    write_dissection(result, out, model, dataset, images_per_unit=top)
    if as_json:
        click.echo(json.dumps(result.summary, indent=2, ensure_ascii=False))
        return
    s = result.summary
    click.echo(f"{s['layer']}: {s['detectors']} of {s['units']} units detect a concept (IoU > {iou}), "
               f"{s['concepts']} distinct concepts")
    for category, found in s["categories"].items():
        click.echo(f"  {category:12s} {found['detectors']:4d} units  {', '.join(found['concepts'])}")
    click.echo(f"wrote {out}/units.csv, summary.json and {s['detectors']} unit sheets")


@main.command()
@_image_set_options
@click.option("--layer", default="auto", show_default=True)
@click.option("--channels", default="all", show_default=True, help="'all' or a list such as 0,3,7.")
@click.option("--top", default=9, show_default=True, type=click.IntRange(min=1), help="Patches per channel.")
@_batch_size_option(32)
@click.option("--out", required=True, metavar="DIR", callback=_out_folder)
@_model_options()
@_scale_options
def patches(model, images, synth_n, seed, concepts, layer, channels, top, batch_size, out, load, scale):
    """Maximally activating patches: each channel's top receptive-field crops over an image set."""
    from engine.analyze.patches import mine, write_patches
    from engine.analyze.sources import read_named

    source = _source(images, synth_n, seed, concepts)
    result = mine(_load(model, **load), source, layer, channels=channels, top=top,
                  batch_size=batch_size, scale=scale)
    write_patches(result, lambda i: read_named(source.names[i]), out)
    field = result.field
    shown = "the whole image" if field.whole_image else f"{field.size[0]}×{field.size[1]} px, stride {field.stride[0]}"
    click.echo(f"{result.layer}: receptive field {shown}; wrote {len({r['channel'] for r in result.rows})} "
               f"channel grids and patches.json to {out}")


# --- augmentation commands ----------------------------------------------------------------
@main.command()
@_images_argument(required=False)
@click.option("--ops", "spec", default="rotate:-30..30,hflip",
              help='Comma-separated ops, e.g. "rotate:30,hflip,cutmix:1.0"; a number is fixed, '
                   "lo..hi a range, key=value names a parameter.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**64 - 1))
@click.option("--out", "out_dir", default="out/augment", show_default=True, callback=_out_folder, metavar="DIR")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--bench", is_flag=True, help="Print the throughput table instead (no IMAGES).")
@click.option("--bench-images", default=64, show_default=True, type=click.IntRange(2, 4096),
              help="Number of 256×256 benchmark images.")
def augment(images, spec, seed, out_dir, threads, bench, bench_images):
    """Augment IMAGES into --out (plus a before/after grid.png), or --bench the engine."""
    from engine.augment import bench as bench_mod
    from engine.augment.pipeline import augment_files

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


@main.command()
@click.argument("model")
@_images_argument(required=False)
@click.option("--synth", type=click.IntRange(min=1), help="Check N generated Shapes images instead of IMAGES.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed of the generated images and of the augmentation parameters.")
@click.option("--ops", "spec", default="rotate:15,hflip,brightness:0.7..1.3,contrast:0.7..1.3", show_default=True,
              help="Comma-separated ops, each checked on its own (as in `onnxlens augment`).")
@click.option("--method", default="gradcam", show_default=True, help="CAM method.")
@click.option("--layer", default="auto", show_default=True, help="CAM layer.")
@_batch_size_option(32)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--out", "out_dir", metavar="DIR", callback=_out_folder,
              help="Also write DIR/robustness.json (summary) and DIR/robustness.csv (per image).")
@_model_options()
@_scale_options
def robustness(model, images, synth, seed, spec, method, layer, batch_size, as_json, out_dir, load, scale):
    """Top-1 and Grad-CAM agreement (IoU of the top-20 % regions, map warped back) under each op."""
    from engine.analyze.robustness import named_ops, robustness as check

    named_ops(spec)  # a bad spec fails before the model loads
    if bool(synth) == bool(images):
        raise UsageError("give either --synth N or IMAGES")
    if synth:
        from engine.data.synth import generate

        pictures = generate(synth, seed=seed).images
    else:
        pictures = images
    report = check(_load(model, **load), pictures, spec, seed=seed, method=method,
                   layer=layer, batch=batch_size, scale=scale)
    info = {"model": model, "seed": seed, **report.to_dict()}
    if out_dir:
        with output_set(out_dir, ["robustness.json", "robustness.csv"]) as stage:
            write_json(stage / "robustness.json", info)
            write_text(stage / "robustness.csv", report.to_csv())
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    fmt = lambda v, d="": "-" if v is None else f"{v:.3f}{d}"  # noqa: E731
    rows = [(r["op"], r["images"], fmt(r["agreement"]), fmt(r["iou_mean"]), fmt(r["iou_std"]), fmt(r["valid"]))
            for r in info["ops"]]
    click.echo(f"{info['images']} images, {method}, top {report.fraction:.0%} region")
    click.echo(_table(rows, ("op", "images", "top-1 agree", "CAM IoU", "± std", "valid px")))


# --- audit commands -----------------------------------------------------------------------


def _log_section(timing):
    reason = f": {timing.reason}" if timing.reason else ""
    click.echo(f"  {timing.title:<28} {timing.seconds:6.1f} s  {timing.status}{reason}", err=True)


def _audit_outcome(path, timings):
    """Say on stderr, in one line, which sections failed; exit 2 when none ran (engine.audit.report.outcome)."""
    from engine.audit.report import outcome

    line = outcome(timings, path)
    if line is not None:
        click.echo(line, err=True)


# The image set of audit and compare (engine.audit.choose): --images DIR [--labels FILE] or --synth N [--seed S].
_audit_data_options = _options(
    click.option("--images", metavar="DIR|GLOB", help="A folder of images (searched recursively), or a quoted glob."),
    click.option("--labels", metavar="FILE", help="CSV image,label (class name or index) for --images."),
    click.option("--synth", type=click.IntRange(min=1), metavar="N", help="Use N generated Shapes-world images instead."),
    click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the generated images."),
)


@main.command()
@click.argument("model")
@_audit_data_options
@click.option("--out", required=True, metavar="DIR", callback=_out_folder, help="Folder for index.html.")
@click.option("--masks", metavar="DIR", help="Object masks for --images (same relative paths, non-zero = object): "
                                              "enables the pointing game.")
@click.option("--gallery", default=8, show_default=True, type=click.IntRange(min=0), help="Images in the CAM and saliency galleries.")
@click.option("--embed", default=200, show_default=True, type=click.IntRange(min=1), help="Images in the t-SNE plot, neighbours and patches.")
@click.option("--dissect", default=200, show_default=True, type=click.IntRange(min=0), help="Generated images to dissect.")
@click.option("--classviz-steps", default=64, show_default=True, type=click.IntRange(min=1), help="Gradient-ascent steps per class visualization.")
@_model_options(labels=False)  # audit's --labels is the CSV of true labels
@_scale_options
def audit(model, images, labels, synth, seed, out, masks, gallery, embed, dissect, classviz_steps, load, scale):
    """Write DIR/index.html: a self-contained report of everything onnxlens shows about MODEL."""
    from engine.audit import Options, audit as run_audit, choose

    loaded = _load(model, **load)
    data = choose(images=images, labels=labels, synth=synth, seed=seed, class_names=loaded.labels, masks=masks)
    options = Options(gallery=gallery, embed=embed, dissect=dissect, classviz_steps=classviz_steps)
    path, timings = run_audit(loaded, data, out, options, log=_log_section, scale=scale)
    _audit_outcome(path, timings)
    click.echo(path)


@main.command()
@click.argument("model_a")
@click.argument("model_b")
@_audit_data_options
@click.option("--out", metavar="DIR", callback=_out_folder, help="Also write DIR/index.html and DIR/compare.json.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--worst", default=5, show_default=True, type=click.IntRange(min=0), help="Images listed as least agreeing.")
@_model_options(labels=False)  # compare's --labels is the CSV of true labels
def compare(model_a, model_b, images, labels, synth, seed, out, as_json, worst, load):
    """Agreement of two variants of one network: outputs and Grad-CAM maps."""
    from engine.audit import choose, compare as run_compare
    from engine.audit.compare import write_comparison

    a, b = _load(model_a, **load), _load(model_b, **load)
    data = choose(images=images, labels=labels, synth=synth, seed=seed, class_names=a.labels)
    result = run_compare(a, b, data.images, names=data.names)
    summary = result.summary(worst)
    page = write_comparison(result, data.images, out, a.labels, worst) if out is not None else None
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    click.echo(_table([[k, f"{summary[k]:.4g}"] for k in ("top1_agreement", "max_abs_difference", "cam_agreement")]
                      + [["top-20 % IoU (mean)", f"{summary['top20_iou']['mean']:.4g}"], ["images", summary["images"]]],
                      ("figure", "value")))
    click.echo("least agreeing: " + ", ".join(f"{w['image']} ({w['pearson']:.3f})" for w in summary["worst"]))
    if page is not None:
        click.echo(page)


@main.command()
@click.option("--out", default="demo-out", show_default=True, metavar="DIR", callback=_out_folder,
              help="Folder for the report.")
@click.option("--n", default=200, show_default=True, type=click.IntRange(min=1), help="Generated images to audit.")
@_provider_option
def demo(out, n, provider):
    """Audit the shipped Shapes ResNet on generated images and compare it with its int8 version."""
    from engine.audit.demo import demo as run_demo

    click.echo(f"auditing models/shapes-resnet.onnx on {n} generated images ...", err=True)
    path, timings = run_demo(out, n=n, provider=provider, log=_log_section)
    _audit_outcome(path, timings)
    click.echo(f"report: {path.resolve()}")


@main.group()
def cache():
    """The cache of rewritten models ($ONNXLENS_CACHE, capped by $ONNXLENS_CACHE_MAX)."""


@cache.command("info")
def cache_info():
    """Show where the cache is, what it holds and its size cap."""
    from engine.runtime.cache import Store, cache_dir

    info = Store(cache_dir()).info()
    click.echo(f"folder   {info.folder}\n"
               f"entries  {info.entries} rewritten models of {info.models} source models\n"
               f"size     {info.size / 1e6:.1f} MB of {info.cap / 1e6:.1f} MB (ONNXLENS_CACHE_MAX)")


@cache.command("clear")
def cache_clear():
    """Remove every cached rewritten model (they are rebuilt when needed)."""
    from engine.runtime.cache import Store, cache_dir

    before = Store(cache_dir()).clear()
    click.echo(f"removed {before.entries} rewritten models ({before.size / 1e6:.1f} MB) from {before.folder}")


if __name__ == "__main__":
    sys.exit(main())

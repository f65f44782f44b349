"""Embeddings, neighbours, projections, filters, activation maps and the analysis CLI commands."""
import csv
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from cli import main
from engine.analyze.embeddings import embed, load_embedding, pooled
from engine.analyze.filters import activations_picture, conv_weights, filter_tiles, filters_picture
from engine.analyze.neighbors import nearest, purity
from engine.analyze.projection import project
from engine.analyze.sources import from_synth, read_named
from engine.api import Model
from engine.data import broden, synth
from engine.errors import LayerError, UsageError
from engine.viz.scatter import PALETTE, scatter
from tests import tiny_models


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    tiny_models.save(tiny_models.classifier(shape=("N", 3, 32, 32), width=6, seed=2), path)
    return path


@pytest.fixture(scope="module")
def model(model_path):
    return Model(model_path, threads=1)


def test_embed_streams_pooled_features_to_disk(model, tmp_path):
    source = from_synth(30, seed=5, size=(32, 32))
    result = embed(model, source, out=tmp_path, batch_size=7, progress=False)
    assert result.layer == "gap"
    images, labels = source.load(0, 30)
    expected = model.run(model.preprocess(images), activations=["relu2"]).activations["relu2"].mean(axis=(2, 3))
    np.testing.assert_allclose(result.features, expected, rtol=1e-5, atol=1e-6)  # GAP = spatial mean of relu2
    loaded = load_embedding(tmp_path)
    assert isinstance(loaded.features, np.memmap)
    np.testing.assert_array_equal(loaded.features, result.features)
    assert loaded.labels == labels and loaded.names == source.names
    with open(tmp_path / "index.csv") as f:
        assert next(csv.reader(f)) == ["image", "label"]
    assert not list(tmp_path.glob(".*part"))
    spatial = embed(model, source, layer="relu2", progress=False)
    np.testing.assert_allclose(spatial.features, expected, rtol=1e-5, atol=1e-6)
    assert pooled(np.ones((2, 3, 4))).shape == (2, 12)


def test_nearest_and_purity_against_brute_force():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 5)).astype(np.float32)
    labels = list(rng.integers(0, 3, 40))
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    cosine = 1 - unit @ unit.T
    dist, idx = nearest(features, features[:3], k=4)
    for q in range(3):
        assert list(idx[q]) == list(np.argsort(cosine[q], kind="stable")[:4])
        np.testing.assert_allclose(dist[q], np.sort(cosine[q])[:4], atol=1e-5)
    _, l2 = nearest(features, features[:3], k=4, metric="l2")
    euclid = np.linalg.norm(features[:3, None] - features[None], axis=2)
    np.testing.assert_array_equal(l2, np.argsort(euclid, axis=1)[:, :4])
    np.fill_diagonal(cosine, np.inf)
    neighbours = np.argsort(cosine, axis=1)[:, :5]
    expected = np.mean([[labels[j] == labels[i] for j in row] for i, row in enumerate(neighbours)])
    assert purity(features, labels, k=5) == pytest.approx(expected)
    clustered = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0) + rng.normal(scale=0.01, size=(30, 3))
    assert purity(clustered, np.repeat([0, 1, 2], 10), k=5) == 1.0
    with pytest.raises(UsageError):
        purity(features, labels, k=40)
    with pytest.raises(UsageError):
        nearest(features, features[:1], metric="manhattan")


def test_projections_separate_clusters():
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=10, size=(3, 16))
    features = np.repeat(centres, 20, axis=0) + rng.normal(size=(60, 16))
    labels = np.repeat([0, 1, 2], 20)
    pca = project(features, method="pca", threads=1)
    centred = features - features.mean(axis=0)
    top2 = np.linalg.svd(centred, full_matrices=False)[2][:2]
    np.testing.assert_allclose(np.abs(pca), np.abs(centred @ top2.T), rtol=1e-3, atol=1e-3)  # up to sign
    points = project(features, method="tsne", threads=1)
    assert purity(points, labels, k=5) == 1.0
    with pytest.raises(UsageError):
        project(features, method="umap")


def test_scatter_colours_points_by_label():
    points = np.array([[0, 0], [1, 1], [0, 1]], float)
    image = scatter(points, ["b", "a", "b"], size=200, radius=5)
    assert image.shape[0] == 200 and image.shape[1] > 200 and image.dtype == np.uint8
    margin = 12
    # "a" sorts first → palette 0; point (1, 1) is drawn at the top right of the plot area
    assert tuple(image[margin, 200 - margin]) == tuple(PALETTE[0])
    assert tuple(image[200 - margin, margin]) == tuple(PALETTE[1])
    thumbs = scatter(points, None, size=200, thumbnails=[np.zeros((8, 8, 3), np.uint8)] * 3, thumb=20)
    assert (thumbs[:, :200] == 0).all(axis=2).sum() > 3 * 14 * 14


def test_filters_are_normalized_per_filter(model):
    weights, name = conv_weights(model)
    assert name == "conv1"
    proto = onnx.load(model.path)
    np.testing.assert_array_equal(weights, numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == "w1")))
    tiles = filter_tiles(weights, cell=3)
    for tile, w in zip(tiles, weights):
        rgb = w.transpose(1, 2, 0)
        np.testing.assert_array_equal(tile, np.rint((rgb - rgb.min()) / (rgb.max() - rgb.min()) * 255).astype(np.uint8))
    bgr = filter_tiles(weights, channel_order="BGR", cell=3)
    np.testing.assert_array_equal(bgr[0], tiles[0][..., ::-1])
    gray = filter_tiles(conv_weights(model, "conv2")[0], cell=3)[0]
    assert (gray[..., 0] == gray[..., 2]).all() and gray.min() == 0 and gray.max() == 255
    assert filters_picture(model).ndim == 3
    with pytest.raises(LayerError, match="not the output of a Conv"):
        conv_weights(model, "relu1")
    with pytest.raises(LayerError):
        conv_weights(model, "nope")


def test_activation_maps_picture(model):
    picture = activations_picture(model, read_named("synth:0:1"), "relu1", ncols=3, cell=32)
    assert picture.dtype == np.uint8 and picture.shape[1] > 3 * 32
    with pytest.raises(LayerError):
        activations_picture(model, read_named("synth:0:1"), "nope")


def test_cli_commands_write_their_outputs(model_path, tmp_path):
    run = lambda *args: CliRunner().invoke(main, [str(a) for a in args])  # noqa: E731
    emb = tmp_path / "emb"
    result = run("embed", model_path, "--synth", 24, "--seed", 3, "--out", emb, "--k", 3, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["images"] == 24 and info["dim"] == 6 and 0 <= info["knn_purity"] <= 1
    assert run("neighbors", emb, "--query", "synth:3:0", "--k", 3, "--out", tmp_path / "nb.png").exit_code == 0
    assert run("project", emb, "--method", "pca", "--thumbnails", "--out", tmp_path / "pca.png").exit_code == 0
    assert run("filters", model_path, "--out", tmp_path / "f.png").exit_code == 0
    assert run("activations", model_path, "synth:0:2", "--layer", "relu2", "--out", tmp_path / "a.png").exit_code == 0
    concepts = tmp_path / "concepts"
    broden.write_concepts(concepts, synth.batches(12, seed=1, size=(32, 32)))
    result = run("dissect", model_path, "--concepts", concepts, "--layer", "relu2", "--iou", 0, "--out", tmp_path / "d")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "units.csv").is_file() and (tmp_path / "d" / "summary.json").is_file()
    result = run("patches", model_path, "--concepts", concepts, "--layer", "relu2", "--channels", "0,2", "--top", 3,
                 "--out", tmp_path / "p")
    assert result.exit_code == 0, result.output
    patches = json.loads((tmp_path / "p" / "patches.json").read_text())
    assert {p["channel"] for p in patches["patches"]} == {0, 2} and patches["field"]["size"] == [8, 8]
    assert sorted(p.name for p in (tmp_path / "p").glob("*.png")) == ["channel_0000.png", "channel_0002.png"]
    for png in ("nb.png", "pca.png", "f.png", "a.png"):
        assert (tmp_path / png).stat().st_size > 0


def test_cli_user_errors_exit_2_without_outputs(model_path, tmp_path):
    run = lambda *args: CliRunner().invoke(main, [str(a) for a in args])  # noqa: E731
    cases = [
        ("embed", model_path, "--out", tmp_path / "e"),  # no image set
        ("embed", model_path, "--synth", 4, "--layer", "nope", "--out", tmp_path / "e"),
        ("dissect", model_path, "--concepts", tmp_path / "missing", "--out", tmp_path / "d"),
        ("patches", model_path, "--synth", 4, "--channels", "99", "--out", tmp_path / "p"),
        ("neighbors", tmp_path / "missing", "--query", "synth:0:0", "--out", tmp_path / "n.png"),
        ("filters", model_path, "--layer", "relu1", "--out", tmp_path / "f.png"),
    ]
    for args in cases:
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert not list(tmp_path.rglob("*.*"))

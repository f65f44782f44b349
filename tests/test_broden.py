import csv

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from engine.data import synth
from engine.data.broden import encode_label_map, read_concepts, write_concepts
from engine.errors import DatasetError


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("broden")
    write_concepts(out, synth.batches(12, seed=4, size=(32, 40), batch=5))
    return out, synth.generate(12, seed=4, size=(32, 40))


def test_files_follow_the_broden_layout(written):
    out, _ = written
    with open(out / "index.csv") as f:
        assert f.readline().strip() == "image,split,ih,iw,sh,sw,shape,color,texture,background"
    assert list(_rows(out / "label.csv")[0]) == ["number", "name", "category", "frequency", "coverage", "syns"]
    assert _rows(out / "label.csv")[0]["name"] == "-"
    assert list(_rows(out / "category.csv")[0]) == ["name", "first", "last", "count", "frequency"]
    assert list(_rows(out / "labels.csv")[0]) == ["image", "label"]
    row = _rows(out / "index.csv")[0]
    assert (row["ih"], row["iw"], row["sh"], row["sw"]) == ("32", "40", "32", "40")
    assert (out / "images" / row["color"]).is_file() and (out / "images" / row["image"]).is_file()
    assert not list(out.rglob("*.part"))


def test_round_trip_gives_back_images_labels_and_maps(written):
    out, scene = written
    ds = read_concepts(out)
    assert len(ds) == 12 and ds.categories == list(synth.CONCEPTS)
    assert ds.classes == [synth.CLASSES[k] for k in scene.labels]
    names = [label["name"] for label in ds.labels]
    assert len(set(names)) == len(names)
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds.image(i), scene.images[i])
        maps = ds.label_maps(i)
        for family, local_names in synth.CONCEPTS.items():
            assert maps[family].shape == (1, 32, 40)
            # Translate the file's global numbers back to family names, compare with the generator.
            lookup = np.array(["-"] + list(names[1:]))
            got = lookup[maps[family][0]]
            want = np.array(["-"] + list(local_names))[scene.concepts[family][i]]
            np.testing.assert_array_equal(got, want)
        assert all(ds.labels[n]["category"].keys() == {family}
                   for family in synth.CONCEPTS for n in np.unique(maps[family]) if n)
        assert ((maps["shape"][0] == names.index(ds.classes[i])) == scene.masks[i]).all()


def test_label_statistics_count_images_and_coverage(written):
    out, scene = written
    ds = read_concepts(out)
    for label in ds.labels[1:]:
        (family,) = label["category"]
        local = synth.CONCEPTS[family].index(label["name"]) + 1
        present = (scene.concepts[family] == local)
        assert label["frequency"] == present.any((1, 2)).sum() == label["category"][family]
        assert label["coverage"] == pytest.approx(present.mean((1, 2)).sum(), abs=1e-4)
    categories = {r["name"]: r for r in _rows(out / "category.csv")}
    shape_numbers = [label["number"] for label in ds.labels[1:] if "shape" in label["category"]]
    assert (int(categories["shape"]["first"]), int(categories["shape"]["last"])) == (min(shape_numbers), max(shape_numbers))


def test_reads_real_broden_cells_several_files_and_whole_image_numbers(tmp_path):
    images = tmp_path / "images" / "ade20k"
    images.mkdir(parents=True)
    cv2.imwrite(str(images / "a.jpg"), np.full((6, 8, 3), 128, np.uint8))
    part1, part2 = np.zeros((3, 4), np.int64), np.zeros((3, 4), np.int64)
    part1[0, 0], part2[2, 3] = 300, 1201  # numbers above 255 need the G channel
    for name, labels in (("a_part_1.png", part1), ("a_part_2.png", part2)):
        cv2.imwrite(str(images / name), encode_label_map(labels)[..., ::-1])
    (tmp_path / "index.csv").write_text(
        "image,split,ih,iw,sh,sw,part,scene,texture\n"
        "ade20k/a.jpg,train,6,8,3,4,ade20k/a_part_1.png;ade20k/a_part_2.png,47,12;15\n")
    (tmp_path / "category.csv").write_text("name,first,last,count,frequency\npart,1,1300,1300,1\n"
                                           "scene,1,50,50,1\ntexture,1,20,20,1\n")
    (tmp_path / "label.csv").write_text("number,name,category,frequency,coverage,syns\n0,-,,0,0.0,\n"
                                        "300,wheel,part(7);object(2),9,0.5,wheel;tyre\n")
    ds = read_concepts(tmp_path)
    assert ds.classes is None and ds.rows[0]["scene"] == [47]
    assert ds.labels[300]["category"] == {"part": 7, "object": 2} and ds.labels[300]["syns"] == ["wheel", "tyre"]
    maps = ds.label_maps(0)
    np.testing.assert_array_equal(maps["part"], np.stack([part1, part2]))
    np.testing.assert_array_equal(maps["scene"], np.full((1, 3, 4), 47))
    np.testing.assert_array_equal(maps["texture"][:, 0, 0], [12, 15])
    assert ds.image(0).shape == (6, 8, 3)


def test_broken_datasets_raise_dataset_error(written, tmp_path):
    with pytest.raises(DatasetError, match="not a folder"):
        read_concepts(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="index.csv is missing"):
        read_concepts(tmp_path)
    out, _ = written
    ds = read_concepts(out)
    (out / "images" / ds.rows[0]["color"][0]).rename(tmp_path / "moved.png")
    try:
        with pytest.raises(DatasetError, match="cannot read"):
            ds.label_maps(0)
    finally:
        (tmp_path / "moved.png").rename(out / "images" / ds.rows[0]["color"][0])


def test_interrupted_write_leaves_no_readable_dataset(tmp_path):
    def scenes():
        yield synth.generate(3, seed=1, size=(24, 24))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_concepts(tmp_path, scenes())
    assert not (tmp_path / "index.csv").exists() and not list(tmp_path.rglob("*.part"))
    with pytest.raises(DatasetError):
        read_concepts(tmp_path)


def test_cli_synth_writes_the_dataset(tmp_path):
    out = tmp_path / "ds"
    result = CliRunner().invoke(cli.main, ["synth", "--out", str(out), "--n", "5", "--seed", "2", "--size", "32x48"])
    assert result.exit_code == 0, result.output
    ds = read_concepts(out)
    scene = synth.generate(5, seed=2, size=(32, 48))
    np.testing.assert_array_equal(np.stack([ds.image(i) for i in range(5)]), scene.images)
    assert ds.classes == [synth.CLASSES[k] for k in scene.labels]


@pytest.mark.parametrize("size", ["96", "axb", "8x8", "0x64"])
def test_cli_synth_bad_size_is_a_one_line_error(tmp_path, size):
    out = tmp_path / "ds"
    result = CliRunner().invoke(cli.main, ["synth", "--out", str(out), "--n", "2", "--size", size])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert not out.exists()

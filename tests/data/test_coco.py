"""Reading COCO instances files: a valid file loads; every malformed one names file and field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from detseg.data.coco import load_dataset, read_json, write_results
from detseg.errors import InputError

VALID = {
    "images": [
        {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
        {"id": 2, "file_name": "sub/b.jpg", "width": 32, "height": 32},
    ],
    "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}],
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3.5, 4], "area": 14,
         "iscrowd": 0},
    ],
}


def _edit(fn):
    data = copy.deepcopy(VALID)
    fn(data)
    return data


def _write(tmp_path: Path, obj, name: str = "instances.json") -> Path:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_valid_file_loads_and_resolves_images(tmp_path: Path) -> None:
    (tmp_path / "images" / "sub").mkdir(parents=True)
    (tmp_path / "images" / "sub" / "b.jpg").write_bytes(b"x")
    ds = load_dataset(_write(tmp_path, VALID))
    assert [im.id for im in ds.images] == [1, 2]
    assert ds.images[1].path == tmp_path / "images" / "sub" / "b.jpg"
    assert ds.category_ids == [1, 3] and ds.class_names == {1: "cat", 3: "dog"}
    assert len(ds.annotations) == 1


def test_images_dir_wins(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"x")
    (tmp_path / "a.jpg").write_bytes(b"x")
    ds = load_dataset(_write(tmp_path, VALID), images_dir=other)
    assert ds.images[0].path == other / "a.jpg"


# (file content, fragments the message must contain besides the file name)
MALFORMED = {
    "bad json": ('{"images": [', ["malformed JSON at line 1"]),
    "not utf-8": (b'{"images": "\xff\xfe"}', ["UTF-8"]),
    "top level list": ([1, 2], ["expected a JSON object"]),
    "no images": ({"categories": []}, ["missing field 'images'"]),
    "images not a list": ({"images": {"id": 1}}, ["field 'images'", "expected list", "dict"]),
    "image not an object": ({"images": [3]}, ["images[0]", "expected an object", "int"]),
    "image without id": (_edit(lambda d: d["images"][1].pop("id")),
                         ["images[1]", "missing field 'id'"]),
    "image ids of two types": (_edit(lambda d: d["images"][1].update(id="2")),
                               ["images[1]", "field 'id'", "one type for all", "str '2' after int ids"]),
    "image id as bool": (_edit(lambda d: d["images"][0].update(id=True)),
                         ["images[0]", "field 'id'", "expected an integer or a string", "bool"]),
    "duplicate image id": (_edit(lambda d: d["images"][1].update(id=1)),
                           ["images[1]", "duplicate id 1"]),
    "image without file_name": (_edit(lambda d: d["images"][0].pop("file_name")),
                                ["images[0]", "missing field 'file_name'"]),
    "file_name not str": (_edit(lambda d: d["images"][0].update(file_name=5)),
                          ["images[0]", "field 'file_name'", "expected str"]),
    "width as str": (_edit(lambda d: d["images"][0].update(width="64")),
                     ["images[0]", "field 'width'", "expected int"]),
    "height as float": (_edit(lambda d: d["images"][1].update(height=32.5)),
                        ["images[1]", "field 'height'", "expected int"]),
    "negative width": (_edit(lambda d: d["images"][0].update(width=-64)),
                       ["images[0]", "field 'width'", "-64"]),
    "categories not a list": (_edit(lambda d: d.update(categories={"1": "cat"})),
                              ["field 'categories'", "expected a list"]),
    "category name not str": (_edit(lambda d: d["categories"][0].update(name=3)),
                              ["categories[0]", "field 'name'", "expected str"]),
    "duplicate category id": (_edit(lambda d: d["categories"][1].update(id=1)),
                              ["categories[1]", "duplicate id 1"]),
    "annotations not a list": (_edit(lambda d: d.update(annotations="none")),
                               ["field 'annotations'", "expected a list"]),
    "duplicate annotation id": (_edit(lambda d: d["annotations"].append(dict(d["annotations"][0]))),
                                ["annotations[1]", "duplicate id 10"]),
    "unknown image id": (_edit(lambda d: d["annotations"][0].update(image_id=99)),
                         ["annotations[0]", "field 'image_id'", "unknown image id 99"]),
    "unknown category id": (_edit(lambda d: d["annotations"][0].update(category_id=2)),
                            ["annotations[0]", "field 'category_id'", "unknown category id 2"]),
    "image_id as str": (_edit(lambda d: d["annotations"][0].update(image_id="1")),
                        ["annotations[0]", "field 'image_id'", "unknown image id '1'"]),
    "annotation id as str": (_edit(lambda d: d["annotations"][0].update(id="10")),
                             ["annotations[0]", "field 'id'", "expected an integer"]),
    "bbox missing": (_edit(lambda d: d["annotations"][0].pop("bbox")),
                     ["annotations[0]", "missing field 'bbox'"]),
    "bbox of 3 numbers": (_edit(lambda d: d["annotations"][0].update(bbox=[1, 2, 3])),
                          ["annotations[0]", "field 'bbox'", "[x, y, w, h]"]),
    "bbox with a str": (_edit(lambda d: d["annotations"][0].update(bbox=[1, 2, "3", 4])),
                        ["annotations[0]", "field 'bbox'"]),
    "bbox negative size": (_edit(lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4])),
                           ["annotations[0]", "field 'bbox'"]),
    "bbox NaN": ('{"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, '
                 '"name": "c"}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, '
                 '"bbox": [0, 0, NaN, 1]}]}', ["annotations[0]", "field 'bbox'"]),
}


@pytest.mark.parametrize("content, fragments", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_files_name_file_and_field(tmp_path: Path, content, fragments) -> None:
    path = tmp_path / "bad.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        _write(tmp_path, content, "bad.json")
    with pytest.raises(InputError) as info:
        load_dataset(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.json: COCO instances file not found"):
        load_dataset(tmp_path / "nope.json")
    with pytest.raises(InputError, match="nope.json: JSON file not found"):
        read_json(tmp_path / "nope.json")


def test_write_results_is_atomic_and_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "r.json"
    records = [{"image_id": 1, "category_id": 3, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}]
    assert write_results(out, iter(records)) == 1
    assert json.loads(out.read_text()) == records
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]  # no temporary left behind


def test_string_ids_and_unnamed_categories_load(tmp_path: Path) -> None:
    data = {"images": [{"id": "a", "file_name": "a.jpg"}], "categories": [{"id": "c1"}],
            "annotations": [{"id": 1, "image_id": "a", "category_id": "c1", "bbox": [0, 0, 2, 2]}]}
    ds = load_dataset(_write(tmp_path, data))
    assert [im.id for im in ds.images] == ["a"] and ds.class_names == {"c1": "c1"}


@pytest.mark.parametrize("edit", [
    lambda d: d["images"][0].update(id=True),
    lambda d: d["images"][1].update(id="2"),
    lambda d: d["images"][1].update(id=1),
    lambda d: d["annotations"][0].update(id="10"),
    lambda d: d["categories"][0].update(id=2**63),
], ids=["bool", "mixed types", "duplicate", "str annotation id", "beyond int64"])
def test_one_id_rule_for_predict_and_eval(tmp_path: Path, edit) -> None:
    """`load_dataset` (predict) and `load_ground_truth` (eval) refuse the same ids, with the
    same message."""
    from detseg.eval.loader import load_ground_truth

    path = _write(tmp_path, _edit(edit))
    with pytest.raises(InputError) as a:
        load_dataset(path)
    with pytest.raises(InputError) as b:
        load_ground_truth(path)
    assert str(a.value).split(": ", 1)[1] == str(b.value).split(": ", 1)[1]


def test_ids_both_accept(tmp_path: Path) -> None:
    from detseg.eval.loader import load_ground_truth

    data = _edit(lambda d: [im.update(id=str(im["id"])) for im in d["images"]]
                 + [a.update(image_id=str(a["image_id"])) for a in d["annotations"]])
    path = _write(tmp_path, data)
    assert [im.id for im in load_dataset(path).images] == ["1", "2"]
    assert load_ground_truth(path).image_ids.tolist() == ["1", "2"]

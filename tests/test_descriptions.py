"""Class descriptions (DATASET.DESCRIPTIONS): read, matched to the dataset's class names, refused clearly."""
import hashlib
import json

import pytest

import trainers
from datasets.descriptions import (SYNTHETIC_SOURCE, DescriptionsError, class_descriptions,
                                   synthetic_descriptions_text)
from datasets.synthetic import shapes
from results.provenance import settings_text

CLASSES = ["Abyssinian", "american_bulldog", "Sea lion"]


def cfg_for(path="", dataset="OxfordPets"):
    cfg = trainers.build_cfg()
    cfg.DATASET.NAME = dataset
    cfg.DATASET.DESCRIPTIONS = str(path)
    cfg.TRAINER.NAME = "HiCroPL"
    return cfg


def write(tmp_path, content):
    path = tmp_path / "descriptions.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_a_cupl_file_is_read_in_class_order_with_its_hash(tmp_path):
    path = write(tmp_path, {"sea lion": ["It swims.", " "], "Abyssinian": "A slender cat.",
                            "American Bulldog": ["A stocky dog.", "It has a short coat."]})
    found = class_descriptions(cfg_for(path), CLASSES)
    # exact names first, then case/underscore-insensitive ones; one string is one sentence; blanks dropped
    assert found.sentences == [["A slender cat."], ["A stocky dog.", "It has a short coat."], ["It swims."]]
    assert found.facts() == {"source": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_a_python_file_with_one_dict_literal_is_read_without_running_it(tmp_path):
    """LwEIB's released descriptions: trainers/gpt3_prompts/<dataset>.py, NAME = {class: [sentences]}."""
    path = tmp_path / "dtd.py"
    path.write_text('DTD_TEMPLATES = {\n    "Abyssinian": ["A slender cat."],\n    "american bulldog": ["A dog."],\n'
                    '    "sea_lion": ["It swims."],\n}\n')
    found = class_descriptions(cfg_for(path), CLASSES)
    assert found.sentences == [["A slender cat."], ["A dog."], ["It swims."]]
    assert found.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_text("import os\nA = {}\nB = {}\n")
    with pytest.raises(DescriptionsError, match="assigns 2 dicts at its top level"):
        class_descriptions(cfg_for(path), CLASSES)
    path.write_text('A = {"x": [os.getcwd()]}\n')  # code, not a literal: refused, never run
    with pytest.raises(DescriptionsError, match="not made of plain strings and lists"):
        class_descriptions(cfg_for(path), CLASSES)


def test_missing_classes_are_listed(tmp_path):
    path = write(tmp_path, {"Abyssinian": ["A slender cat."], "Sea lion": []})
    with pytest.raises(DescriptionsError, match=r'2 of 3 classes have no description in .*: "american_bulldog", '
                                                r'"Sea lion"'):
        class_descriptions(cfg_for(path), CLASSES)


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ({}, "are empty"),
    ([["Abyssinian", "A cat."]], "are not a JSON object"),
    ({"Abyssinian": [1, 2], "american_bulldog": ["x"], "Sea lion": ["y"]}, '"Abyssinian" in .* are not a sentence'),
])
def test_malformed_files_are_refused_clearly(tmp_path, content, message):
    with pytest.raises(DescriptionsError, match=message):
        class_descriptions(cfg_for(write(tmp_path, content)), CLASSES)


def test_a_missing_file_and_a_missing_setting_are_refused(tmp_path):
    with pytest.raises(DescriptionsError, match="Cannot read the descriptions file .*nope.json"):
        class_descriptions(cfg_for(tmp_path / "nope.json"), CLASSES)
    with pytest.raises(DescriptionsError, match="HiCroPL reads class descriptions, and DATASET.DESCRIPTIONS is not set "
                                                "for OxfordPets"):
        class_descriptions(cfg_for(), CLASSES)


def test_the_synthetic_benchmark_describes_its_own_classes(tmp_path):
    names = shapes.benchmark_classes()
    found = class_descriptions(cfg_for(dataset="SyntheticShapes"), names[:3])
    assert found.source == SYNTHETIC_SOURCE and len(found.sentences) == 3
    colour, shape = names[0].split()
    assert all(len(s) == 4 for s in found.sentences) and colour in found.sentences[0][0]
    square = class_descriptions(cfg_for(dataset="SyntheticShapes"), ["red square"]).sentences[0]
    assert "four right-angled corners" in " ".join(square) and "red" in square[0]
    # the file the benchmark writes is the one whose hash the run records
    shapes.write_benchmark(str(tmp_path), classes=names[:2], sizes={"train": 1, "val": 1, "test": 1})
    written = (tmp_path / "descriptions.json").read_text()
    assert written == synthetic_descriptions_text()
    assert found.sha256 == hashlib.sha256(written.encode()).hexdigest()
    assert json.loads(written)["red square"] == class_descriptions(cfg_for(path=tmp_path / "descriptions.json"),
                                                                   ["red square"]).sentences[0]


def test_the_provenance_names_the_descriptions_file():
    text = settings_text({"N_CTX": "4"}, descriptions={"source": "/data/cupl/pets.json", "sha256": "ab" * 32})
    assert text == "N_CTX 4, descriptions pets.json (sha256 abababababab)"

"""``vitrain card`` and ``vitrain push`` (``vitrain/engine/card.py``, ``vitrain/engine/push.py``): a model card
in the Hub's form written from the run folder, and an upload that is real up to the network call."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from vitrain.cli import main
from vitrain.engine.card import interval


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_holds_the_runs_facts_under_a_hub_header(trained, tmp_path, capsys):
    run, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["card", str(copy), "--license", "apache-2.0"]) == 0
    assert str(copy / "README.md") in capsys.readouterr().out
    text = (copy / "README.md").read_text()
    header = _front_matter(text)
    report = json.loads((copy / "report.json").read_text())
    assert header["library_name"] == "vitrain" and header["pipeline_tag"] == "image-classification"
    assert header["license"] == "apache-2.0" and header["metrics"] == ["accuracy"]
    result = header["model-index"][0]["results"][0]
    assert result["metrics"][0] == {
        "type": "accuracy",
        "value": round(report["test"]["accuracy"], 4),
        "name": "test accuracy",
    }
    for split, count in report["splits"].items():
        assert f"| {split} | {count:,} |" in text
    assert "| cat |" in text and "| fox |" in text  # the per-class table
    assert report["command"] in text and report["command"].startswith("vitrain train --data")
    assert "## Leak check" in text and "byte-identical" in text
    low, high = interval(report["test"]["accuracy"], report["test"]["images"])
    assert f"{low:.1%} to {high:.1%}" in text  # a limitation: the test set's size


def test_card_names_leaks_and_missing_test_split_as_limitations(trained, tmp_path):
    run, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    report = json.loads((copy / "report.json").read_text())
    report["leakage"]["test"]["identical_to_train"] = 2
    report["test"]["split"] = "val"
    (copy / "report.json").write_text(json.dumps(report))
    assert main(["card", str(copy), "--format", "hf", "--out", str(tmp_path / "card.md")]) == 0
    text = (tmp_path / "card.md").read_text()
    assert _front_matter(text)["library_name"] == "transformers"
    assert "2 of the test images were byte-identical to training images: kept, so the score is inflated" in text
    assert "There was no test split" in text
    assert 'pipeline("image-classification"' in text


def test_card_never_replaces_a_readme_it_did_not_write(trained, tmp_path, capsys):
    run, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "README.md").write_text("my own notes")
    assert main(["card", str(copy)]) == 2
    assert "was not written by vitrain card" in capsys.readouterr().err
    assert (copy / "README.md").read_text() == "my own notes"
    assert main(["card", str(tmp_path)]) == 2  # no report.json
    assert "no report.json" in capsys.readouterr().err
    assert main(["card", str(tmp_path / "typo")]) == 2
    assert f"{tmp_path / 'typo'}: no such run folder" in capsys.readouterr().err


def test_card_tables_keep_their_shape_with_odd_class_names(trained, tmp_path):
    run, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    report = json.loads((copy / "report.json").read_text())
    report["classes"] = ["cat | kitten", "dog", "fox"]
    (copy / "report.json").write_text(json.dumps(report))
    assert main(["card", str(copy)]) == 0
    assert "| cat \\| kitten | " in (copy / "README.md").read_text()


class _FakeHub:
    """Stands in for huggingface_hub.HfApi: records the calls and what the folder held at upload time."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, repo_type, private, exist_ok):
        self.calls.append(("create_repo", repo_id, repo_type, private, exist_ok, self.token))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, repo_type, commit_message, delete_patterns):
        from pathlib import Path

        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        self.calls.append(("upload_folder", repo_id, repo_type, commit_message, files, delete_patterns))


def test_push_exports_writes_the_card_and_uploads_that_folder(trained, monkeypatch, capsys):
    import huggingface_hub

    run, _ = trained
    _FakeHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHub)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    args = ["push", str(run), "--repo", "someone/pets-vit", "--license", "mit", "--private"]
    assert main(args) == 0
    assert "https://huggingface.co/someone/pets-vit" in capsys.readouterr().out
    create, upload = _FakeHub.calls
    assert create == ("create_repo", "someone/pets-vit", "model", True, True, "hf_test_token")
    assert upload[:3] == ("upload_folder", "someone/pets-vit", "model")
    files = upload[4]
    assert set(files) == {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"}
    card = files["README.md"].decode()
    assert _front_matter(card)["license"] == "mit"
    assert 'model="someone/pets-vit"' in card
    assert "accuracy" in upload[3]
    assert "*.json" in upload[5] and "*.safetensors" in upload[5]  # an earlier push of the other format goes


def test_push_of_a_model_the_format_cannot_express_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from .conftest import TINY_MODEL

    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--epochs", "1", "--no-progress", "--compile", "off", "--stem", "conv"]
    for key, value in {**TINY_MODEL, "img_size": 8, "patch_size": 2}.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    assert main(args) == 0
    _FakeHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHub)
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    capsys.readouterr()
    assert main(["push", str(out), "--repo", "someone/digits"]) == 2
    assert "convolutional stem" in capsys.readouterr().err and _FakeHub.calls == []


@pytest.mark.parametrize(
    "repo, token, message",
    [
        ("not a repo", "hf_x", "is not a Hub repository name"),
        ("justaname", "hf_x", "give USER/NAME"),
        ("someone/pets", None, "no Hugging Face token"),
    ],
)
def test_push_refuses_before_uploading(trained, monkeypatch, capsys, tmp_path, repo, token, message):
    import huggingface_hub

    run, _ = trained
    _FakeHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHub)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no stored login
    monkeypatch.delenv("HF_TOKEN", raising=False)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    assert main(["push", str(run), "--repo", repo]) == 2
    assert message in capsys.readouterr().err
    assert _FakeHub.calls == []

"""``python -m training`` (``training/__main__.py``): user errors are one line and exit 2; what is
about to be trained is printed before it starts."""

from __future__ import annotations

import pytest

import training.__main__ as entry


def test_a_bad_override_is_one_error_line(capsys, tmp_path):
    assert entry.main(["train.no_such_key=1", f"train.output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m training: error: ") and "no_such_key" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_missing_config_file_is_one_error_line(capsys, tmp_path):
    assert entry.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_an_image_folder_without_root_is_one_error_line(capsys, tmp_path):
    code = entry.main(["--config", "training/configs/image_folder_classifier.yaml",
                       f"train.output_dir={tmp_path / 'run'}", "data.root=null"])
    captured = capsys.readouterr()
    assert code == 2, captured
    assert "error: " in captured.err and "root" in captured.err and "Traceback" not in captured.err
    assert "training classifier from training/configs/image_folder_classifier.yaml" in captured.out
    assert not (tmp_path / "run").exists()


def test_debug_keeps_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="no_such_key"):
        entry.main(["--debug", "train.no_such_key=1"])

from pathlib import Path

import pytest

from nodes import folders


def test_models_layout_lists_files_recursively_and_sorted(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "checkpoints" / "sdxl").mkdir(parents=True)
    (root / "checkpoints" / "b.safetensors").write_bytes(b"x")
    (root / "checkpoints" / "sdxl" / "A.safetensors").write_bytes(b"x")
    (root / "checkpoints" / "notes.txt").write_text("not a model")
    (root / "checkpoints" / ".hidden.safetensors").write_bytes(b"x")
    settings = {"models_dir": str(root)}
    assert folders.list_models(settings, "checkpoints") == ["b.safetensors", "sdxl/A.safetensors"]
    assert folders.find_model(settings, "checkpoints", "sdxl/A.safetensors") == (root / "checkpoints/sdxl/A.safetensors").resolve()
    assert folders.find_model(settings, "checkpoints", "missing.safetensors") is None
    assert folders.list_models(settings, "loras") == []


def test_automatic1111_folder_names_are_accepted(tmp_path: Path) -> None:
    (tmp_path / "Stable-diffusion").mkdir()
    (tmp_path / "Lora").mkdir()
    (tmp_path / "Stable-diffusion" / "m.safetensors").write_bytes(b"x")
    (tmp_path / "Lora" / "l.safetensors").write_bytes(b"x")
    settings = {"models_dir": str(tmp_path)}
    assert folders.list_models(settings, "checkpoints") == ["m.safetensors"]
    assert folders.list_models(settings, "loras") == ["l.safetensors"]


@pytest.mark.parametrize("name", ["../secret.safetensors", "/etc/passwd", "a/../../x", ""])
def test_paths_never_leave_their_folder(tmp_path: Path, name: str) -> None:
    (tmp_path / "secret.safetensors").write_bytes(b"x")
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    with pytest.raises(folders.UnsafePathError):
        folders.safe_join(tmp_path / "models" / "checkpoints", name)
    settings = {"models_dir": str(tmp_path / "models")}
    assert folders.find_model(settings, "checkpoints", name or "x") is None


def test_symlink_out_of_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.png").write_bytes(b"x")
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "link.png").symlink_to(tmp_path / "outside.png")
    with pytest.raises(folders.UnsafePathError, match="outside"):
        folders.find_input({"input_dir": str(tmp_path / "input")}, "link.png")


def test_missing_model_message_says_where_and_how(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "have.safetensors").write_bytes(b"x")
    msg = folders.missing_model_message({"models_dir": str(tmp_path)}, "checkpoints", "want.safetensors")
    assert "'want.safetensors' not found in" in msg
    assert str(tmp_path / "checkpoints") in msg
    assert "have.safetensors" in msg
    assert "--models-dir" in msg


def test_save_path_counts_up_and_keeps_subfolders(tmp_path: Path) -> None:
    full, stem, counter, sub = folders.save_path(tmp_path, "portraits/run")
    assert (full, stem, counter, sub) == ((tmp_path / "portraits").resolve(), "run", 1, "portraits")
    (full / "run_00001_.png").write_bytes(b"x")
    (full / "run_00007_.png").write_bytes(b"x")
    (full / "runner_00009_.png").write_bytes(b"x")  # another prefix: ignored
    assert folders.save_path(tmp_path, "portraits/run")[2] == 8
    assert folders.save_path(tmp_path, "img_%width%x%height%", 64, 32)[1] == "img_64x32"
    with pytest.raises(folders.UnsafePathError):
        folders.save_path(tmp_path, "../escape/run")

"""segment_anything.modeling imports with and without torchvision (each case in a fresh interpreter)."""

import subprocess
import sys
import textwrap


def _run(code: str, extra_path: str | None = None) -> str:
    env_path = [extra_path] if extra_path else []
    script = f"import sys; sys.path[:0] = {env_path!r}\n" + textwrap.dedent(code)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_modeling_imports_without_torchvision():
    out = _run(
        """
        import importlib.util
        assert importlib.util.find_spec("torchvision") is None
        from fedmed.models.sam_import import import_sam_modeling
        modeling = import_sam_modeling()
        import segment_anything
        print(modeling.Sam.__name__, hasattr(segment_anything, "SamPredictor"))
        """
    )
    assert out == "Sam False"


def test_modeling_imports_through_the_package_when_torchvision_is_there(tmp_path):
    fake = tmp_path / "torchvision" / "transforms"
    fake.mkdir(parents=True)
    (tmp_path / "torchvision" / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "functional.py").write_text("def resize(*a, **k): pass\ndef to_pil_image(*a, **k): pass\n")
    (tmp_path / "torchvision" / "ops").mkdir()
    (tmp_path / "torchvision" / "ops" / "__init__.py").write_text("")
    (tmp_path / "torchvision" / "ops" / "boxes.py").write_text("def batched_nms(*a, **k): pass\nbox_area = None\n")
    out = _run(
        """
        from fedmed.models.sam_import import import_sam_modeling
        modeling = import_sam_modeling()
        import segment_anything
        print(modeling.Sam.__name__, hasattr(segment_anything, "SamPredictor"))
        """,
        extra_path=str(tmp_path),
    )
    assert out == "Sam True"

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

import cli
from engine.errors import ModelLoadError

ROOT = Path(__file__).resolve().parents[1]


def test_user_error_is_one_line_and_exit_2():
    @cli.main.command("_boom")
    def boom():
        raise ModelLoadError("model.onnx is not an ONNX file: export it again")

    try:
        result = CliRunner().invoke(cli.main, ["_boom"])
        assert result.exit_code == 2
        assert result.output.strip() == "error: model.onnx is not an ONNX file: export it again"
        debug = CliRunner().invoke(cli.main, ["--debug", "_boom"])
        assert isinstance(debug.exception, ModelLoadError)
    finally:
        cli.main.commands.pop("_boom")


def test_runs_from_checkout_without_install():
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--help"], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert "Explain and inspect CNNs" in out.stdout

import subprocess
import sys

from keras_pspnet.cli import main


def test_presets_command_lists_presets(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "pspnet_resnet50_v1c" in out and "'contract_dilation': True" in out


def test_errors_are_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "keras_pspnet.cli", "convert", "mmseg", str(tmp_path / "missing.pth"), "--out",
         str(tmp_path / "m.keras")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"pspnet: error: {tmp_path / 'missing.pth'}: checkpoint not found."
    assert "Traceback" not in result.stderr

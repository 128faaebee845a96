"""The package's top-level API stays callable, whatever submodules were imported before."""

import subprocess
import sys


def test_top_level_functions_are_not_shadowed_by_submodules():
    import emovec
    import emovec.apps.cli
    import emovec.apps.pipeline
    import emovec.monitor  # noqa: F401

    for name in ("extract", "read", "steer", "generate", "load_model", "load_corpus"):
        assert callable(getattr(emovec, name)), name


def test_importing_emovec_does_not_import_torch():
    code = "import sys, emovec; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False"


def test_python_dash_m_sees_every_command_group():
    for module in ("emovec", "emovec.apps.cli"):
        result = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        for group in ("experiment", "study", "corpus", "monitor", "serve", "report"):
            assert group in result.stdout, (module, group)

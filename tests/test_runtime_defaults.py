"""What importing the package does to TensorFlow's start-up: oneDNN's CPU
kernels default to on for x86-64 (``oneshot_tf.enable_onednn``).  Checked in
fresh interpreters, each without TensorFlow (a stand-in module plays an
already imported TensorFlow)."""

import os
import platform
import subprocess
import sys

import pytest

X86 = platform.machine().lower() in ("x86_64", "amd64")
PRINT = "import os; print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'))"


def _run(code, **env):
    base = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return out.stdout.strip()


@pytest.mark.parametrize("module", ["oneshot_tf", "experiments", "benchmarks", "hypernets.ghn"])
def test_importing_the_package_first_turns_onednn_on_for_x86(module):
    assert _run(f"import {module}; " + PRINT) == ("1" if X86 else "None")


def test_a_users_setting_is_kept():
    assert _run("import oneshot_tf; " + PRINT, TF_ENABLE_ONEDNN_OPTS="0") == "0"


def test_nothing_is_set_once_tensorflow_is_loaded():
    # too late to matter then: TensorFlow read the variable when it loaded
    code = "import sys, types; sys.modules['tensorflow'] = types.ModuleType('tensorflow'); import oneshot_tf; "
    assert _run(code + PRINT + "; print(oneshot_tf.enable_onednn())") == "None\nFalse"

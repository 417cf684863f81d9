"""Runs the calling script again in a virtual environment with the packages it
needs, when the Python running it lacks them. Shared by scripts/prepare_data.py
and bench/fsdp2_peer.py, which are run by hand and must not need a set-up step.
"""

import importlib
import os
import subprocess
import sys
import venv


def rerun_in_venv(script, venv_dir, modules, packages, marker, name):
    """Returns when `modules` import here; otherwise re-executes `script` (with
    this process's arguments) under `venv_dir`'s Python, creating the
    environment and pip-installing `packages` first where needed. `marker` is
    an environment variable set for the re-run, so that a venv still lacking
    them stops with a message instead of looping; `name` prefixes messages."""
    try:
        for module in modules:
            importlib.import_module(module)
        return
    except ImportError:
        pass
    python = os.path.join(venv_dir, "bin", "python")
    listed = ", ".join(modules)
    if os.environ.get(marker):
        sys.exit(f"{name}: {python} still lacks one of {listed}")
    if not os.path.exists(python):
        print(f"{name}: creating {venv_dir} with {listed}", file=sys.stderr)
        venv.create(venv_dir, with_pip=True)
    has_packages = subprocess.run([python, "-c", "import " + listed],
                                  capture_output=True).returncode == 0
    if not has_packages:
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
                       + list(packages), check=True)
    environment = dict(os.environ, **{marker: "1"})
    os.execve(python, [python, os.path.abspath(script)] + sys.argv[1:], environment)

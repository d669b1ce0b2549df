"""setup.py outside the pinned environment: what a user installing into their own one meets."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_setup_without_torch_says_how_to_build():
    # pip's default isolated build hides the user's torch; the extension must be built against
    # that torch, so setup.py stops with the command that does so (the one the README gives).
    code = ("import sys; sys.modules['torch'] = None; sys.argv = ['setup.py', '--version']; __file__ = 'setup.py'; "
            "exec(compile(open('setup.py').read(), 'setup.py', 'exec'))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0
    assert "pip install --no-build-isolation ." in r.stderr, r.stderr
    assert "pip install --no-build-isolation ." in (ROOT / "README.md").read_text()

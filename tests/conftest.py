"""pytest's set-up for every test file: the project's scripts (the root and tools/) import as modules
however pytest is started (`pytest`, `python -m pytest`, one file or all). The helper modules beside
this file (fixtures.py, killing.py) import because pytest puts tests/ on the path for conftest.py."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for folder in (os.path.join(ROOT, 'tools'), ROOT):
    if folder not in sys.path:
        sys.path.insert(0, folder)

"""Progress bars that suit where they show: widgets in a notebook that has ipywidgets, text everywhere else.

``tqdm.auto`` picks the notebook widget whenever it runs under Jupyter and warns ("IProgress not found") when
ipywidgets is missing; this picks the widget only when it can draw, so a notebook without ipywidgets gets the
plain text bar and no warning.
"""

from __future__ import annotations

import importlib.util

__all__ = ["tqdm"]


def tqdm(*args, **kwargs):
    """A ``tqdm`` progress bar: ``tqdm.auto``'s when ipywidgets is installed, else the text one."""
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm as bar
    else:
        from tqdm.std import tqdm as bar
    return bar(*args, **kwargs)

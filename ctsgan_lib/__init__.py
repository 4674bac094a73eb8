"""CT-SGAN companion library."""
import os as _os

__version__ = "0.1.0"

if _os.environ.get("CTSGAN_PROGRESS") == "text":
    # Set by `ctsgan reproduce` for its kernels: an executed notebook keeps a text bar's final state ("100% 24/24"),
    # whereas a tqdm widget is saved without its state and shows "0%" in static viewers (GitHub, nbviewer).
    import tqdm.auto as _tqdm_auto
    import tqdm.std as _tqdm_std

    _tqdm_auto.tqdm, _tqdm_auto.trange = _tqdm_std.tqdm, _tqdm_std.trange

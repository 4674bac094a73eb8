"""Metrics and their runs: slice FID/IS (``fidelity``) with the InceptionV3 weights (``inception``), memorisation
(``privacy``), classification metrics (``classification``) and z-structure statistics (``zstructure``). Tables and plots
of their records are in :mod:`ctsgan_lib.reporting`."""

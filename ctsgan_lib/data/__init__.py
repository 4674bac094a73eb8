"""Data stage (01) and the data floor every later stage reads: volume I/O (``io``), HU windows (``intensity``), the
embedded ``phantom`` package, LIDC statistics (``lidc``), ``preprocess``, cohorts on disk (``cohort``), building a
cohort from a source (``sources.build_cohort``), noise/HU statistics (``quality``) and the orthogonal ``views``.

Nothing is imported here: ``from ctsgan_lib.data.cohort import Cohort`` loads only what it needs."""

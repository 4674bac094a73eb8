"""The reporting wing: tables, captions and plots made from the records the stages compute, and the paper figures.

Modules: :mod:`~.fidelity` (Table 1 and its 2.5D / pooled variants, FID box plots; :func:`run_table1` is notebook 05
in one call), :mod:`~.privacy` (closest synthetic/training pairs), :mod:`~.quality` (HU histograms per tissue), :mod:`~.classifier` (Fig 3b and shortcut-control tables and plot), :mod:`~.figures` (every paper
figure and table regenerated from a run: notebook 07, ``make figures``). Figure saving and volume views are in
:mod:`ctsgan_lib.viz`.
"""
from .classifier import (annotate_table, classifier_caption, comparability_note, grid_table, plot_fig3b,
                         regime_ordering, save_table, shortcut_table)
from .fidelity import (fidelity_caption, ordering_statement, plot_fid_boxplots, provenance, records_as_jsonl,
                       run_table1, summarise, table_markdown, write_tables)
from .figures import FIGURES, figures_dir, make_all, render_manifest
from .privacy import plot_closest_pairs
from .quality import plot_tissue_hu, tissue_hu_table

__all__ = [
    "annotate_table", "classifier_caption", "comparability_note", "grid_table", "plot_fig3b", "regime_ordering",
    "save_table", "shortcut_table", "fidelity_caption", "ordering_statement", "plot_fid_boxplots", "provenance",
    "records_as_jsonl", "run_table1", "summarise", "table_markdown", "write_tables", "FIGURES", "figures_dir",
    "make_all", "render_manifest", "plot_closest_pairs", "plot_tissue_hu", "tissue_hu_table",
]

"""Embedded procedural chest-CT phantom: the default data source when no real scans are available.

Design (torchio style): :func:`sample_params` draws every random choice of one patient into an explicit
:class:`PhantomParams`; :func:`render_phantom` is a deterministic function of those parameters. The same parameters
therefore always give the same volume, and ``render_phantom(p, with_nodules=False)`` gives the *same* patient with the
*same* noise realisation but without nodules (the eraser's ground truth).

Geometry follows ``ctsgan_lib.data.io``: arrays are ``(z, y, x)`` with ``z`` toward superior, ``y`` toward posterior
(anterior at the top of an ``imshow``) and ``x`` toward the patient's left. Internally the anatomy is written in mm
in *patient* coordinates centred on the volume (after a small per-patient shift and rotation about z).

Anatomy (painted in this order): scanner table (carbon shells + foam core); body (superellipse cross-section) with
subcutaneous fat and chest-wall muscle; upper abdomen below the diaphragm (liver, stomach with a gas bubble);
mediastinal fat; heart in a pericardial fat shell; aorta, superior vena cava, pulmonary trunk/arteries and oesophagus;
two lungs (apex dome, costophrenic recesses, diaphragm domes, right dome higher) with a gravity gradient and
low-frequency texture; branching, tapering pulmonary artery and vein trees rooted at the hila, grown by space
colonisation with Murray-law radii (thick and dense near the hila, sub-voxel at the periphery, rendered with partial
volume); trachea, carina,
main and lobar/segmental bronchi (air lumen, soft-tissue wall); spine (vertebral bodies with cortex, discs, canal,
laminae, spinous and transverse processes), 12 rib pairs sloping down anteriorly, sternum, scapulae and clavicles. Nodules (solid or
part-solid, optionally touching a vessel) are added before the scanner model.

Scanner model (per domain): a Gaussian point-spread function (in-plane and slice profile) and additive correlated
noise with a CT-like ramp-shaped noise power spectrum (zero at DC, a peak, then apodised). ``nlst-like`` imitates
low-dose screening with a sharp kernel: more noise, fine grain, sharper edges. ``lidc-like`` imitates diagnostic dose
with a soft kernel and thicker slices: less noise, coarse blotchy grain, blurrier edges. The scanner parameters are
in voxels of the rendering grid, like a reconstruction kernel, so the domain difference survives at every size.

Modules, lowest first: :mod:`~.params` (labels, HU, parameter dataclasses, nodule distribution), :mod:`~.anatomy`
(implicit anatomy and branching trees), :mod:`~.sampling` (:func:`sample_params`), :mod:`~.scanner` (the scanner
model), :mod:`~.render` (:func:`render_phantom`, :func:`make_patient`, :func:`generate_many`). The names below are the
package's public API (``from ctsgan_lib.data import phantom; phantom.make_patient(...)``).
"""
from .params import (DOMAINS, HU_AIR, HU_BLOOD, HU_CANCELLOUS, HU_CORTICAL, HU_CSF, HU_DISC, HU_FAT, HU_LIVER,
                     HU_LUNG, HU_MUSCLE, HU_STOMACH, HU_TABLE_FOAM, HU_TABLE_SHELL, LABELS, NODULE_HU,
                     default_nodule_distribution, NoduleDistribution, NoduleSpec, Phantom, PhantomParams,
                     ScannerParams)
from .anatomy import airway_segments, Anatomy, mediastinal_segments, rib_segments, vessel_segments
from .sampling import sample_params
from .scanner import apply_scanner, correlated_noise
from .render import (apply_nodule, generate_many, label_hu_stats, make_patient, render_clean, render_nodule,
                     render_phantom, worker_init)

# commands/phantoms.py (another open issue's file) still names the worker initialiser by its old, private name
_worker_init = worker_init

__all__ = ["LABELS", "DOMAINS", "HU_AIR", "HU_FAT", "HU_MUSCLE", "HU_BLOOD", "HU_LIVER", "HU_STOMACH", "HU_LUNG", "HU_CANCELLOUS", "HU_CORTICAL", "HU_DISC", "HU_CSF", "HU_TABLE_SHELL", "HU_TABLE_FOAM", "NODULE_HU", "NoduleSpec", "ScannerParams", "PhantomParams", "Phantom", "NoduleDistribution", "default_nodule_distribution", "sample_params", "render_nodule", "apply_nodule", "correlated_noise", "apply_scanner", "render_clean", "render_phantom", "make_patient", "generate_many", "label_hu_stats", "Anatomy", "vessel_segments", "airway_segments", "mediastinal_segments", "rib_segments", "worker_init"]

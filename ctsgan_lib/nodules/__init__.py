"""Stage 02 of the study: the nodule injector/eraser cGANs and the device-debiased cohort (paper §3.1, Fig 3a, B.1-B.3).

Modules, lowest first: :mod:`~.geometry` (VOIs, shape and blend maps, placement in the lung, measurement),
:mod:`~.networks` (the cGAN), :mod:`~.inference` (:class:`NoduleInjector`, :class:`NoduleEraser`),
:mod:`~.training` (:func:`train_nodule_gan`), :mod:`~.debias` (debiased and nodule-free cohorts), :mod:`~.checks`
(quality checks and figure data for notebook 02).
"""
from .checks import eraser_examples, erasure_check, injection_check, injector_examples, phantom_truth
from .debias import build_debiased_cohort, build_nodule_free_cohort, domain_leakage, nodule_pool_vox
from .geometry import (SOLID_THRESHOLD_HU, PlacementError, ball, centre_feather_weight, centre_mask, extract_voi,
                       lung_edt, lung_of, measure_nodule, nodule_blend_weight, paste_voi, place_nodules,
                       place_nodules_indexed, noise_touch_up, robust_sd, scan_detail,
                       voi_blend_weight)
from .inference import NoduleEraser, NoduleInjector, build_generator, injector_kind
from .networks import INJECTORS, NoduleGenerator, PatchDiscriminator3D, learned_condition, size_hint
from .training import eraser_vois, injector_vois, train_nodule_gan

__all__ = [
    "SOLID_THRESHOLD_HU", "PlacementError", "ball", "centre_mask", "extract_voi", "lung_edt", "lung_of",
    "measure_nodule", "nodule_blend_weight", "paste_voi", "place_nodules", "place_nodules_indexed",
    "voi_blend_weight", "centre_feather_weight", "scan_detail", "noise_touch_up", "robust_sd", "INJECTORS",
    "learned_condition", "size_hint", "build_generator",
    "injector_kind", "NoduleGenerator", "PatchDiscriminator3D", "NoduleInjector", "NoduleEraser",
    "train_nodule_gan", "injector_vois", "eraser_vois", "build_debiased_cohort", "build_nodule_free_cohort",
    "domain_leakage", "nodule_pool_vox", "injection_check", "erasure_check", "phantom_truth", "injector_examples",
    "eraser_examples",
]

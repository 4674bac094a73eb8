"""Stage 04 of the study: synthetic cohorts from a trained generator (paper §3.1, last paragraph; notebook 04).

Modules, lowest first: :mod:`~.sampling` (checkpoint → generator → volumes in HU, seeded per volume) and
:mod:`~.synthetic_cohort` (plan, inject nodules, write and shard a synthetic cohort) and :mod:`~.stream` (the
nodule-free volumes of a run made on demand, nothing stored: the classifier's synthetic regime from the generator). The streaming sampler itself,
:func:`ctsgan_lib.models.ctsgan.synthesize`, lives beside the generator it runs.
"""
from .sampling import (gan3d_noise, generate_gan3d_volumes, generate_volume_at, generate_volumes, inference_layout,
                       load_generator, slice_consistency_hu, volume_noise, volume_seed)
from .stream import GeneratorSource
from .synthetic_cohort import (VolumePlan, distributed_shard, finish_volume, generate_cohort, merge_shards,
                               parse_shard, plan_volumes, shard_dir, shard_indices, summarize_cohort, volume_id,
                               volume_condition, wait_for_shards)

__all__ = [
    "volume_seed", "load_generator", "inference_layout", "volume_noise", "generate_volumes", "generate_volume_at",
    "gan3d_noise", "generate_gan3d_volumes", "slice_consistency_hu", "VolumePlan", "plan_volumes", "shard_indices",
    "parse_shard", "volume_id", "shard_dir", "generate_cohort", "finish_volume", "merge_shards", "distributed_shard",
    "wait_for_shards", "summarize_cohort", "GeneratorSource", "volume_condition",
]

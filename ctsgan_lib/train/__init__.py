"""Training (stage 03 and the classifier of stage 06): the GAN run setup and loop machinery (``gan_common``), the CT-SGAN
and 3D GAN loops, losses, DDP helpers (``distributed``), training volumes (``volumes``) and the classifier loop."""

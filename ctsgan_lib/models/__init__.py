"""Networks: CT-SGAN (``ctsgan``, with the streaming sampler ``synthesize``), the DCGAN blocks it shares with the 3D GAN
(``dcgan``), the 3D GAN baseline (``gan3d``) and the 3D SqueezeNet classifier (``squeezenet3d``). The nodule cGAN is in
:mod:`ctsgan_lib.nodules.networks`."""

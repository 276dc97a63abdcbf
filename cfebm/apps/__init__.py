"""Applications of a trained model (paper Sec. 4.1 and Appendix A.4): plain functions over a
``cfebm.trained.TrainedModel``.

- ``restore``: corruption, masks, denoising, inpainting with diverse completions, PSNR/SSIM.
- ``chains``: interpolation between initial noises, recorded Langevin chains, noise sweeps.
- ``figures``: the files they are shown in (labelled grids, chain strips, GIFs, energy plots).
"""
